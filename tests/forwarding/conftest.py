"""The forwarding area's fixtures: two replicas in one process, ``a`` owning acme's instances
and ``b`` globex's (``tests/helpers/in_process_replicas.py``); a test calls ``b`` for
``sales`` to be forwarded, and ``a`` directly to compare."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service.auth import hash_token
from tests.helpers.harness import SALES_TOKEN
from tests.helpers.in_process_replicas import Replica, replicas

#: The stanza latency of the ``slow`` replicas' instances: time enough to act mid-update.
SLOW_LATENCY_MS = 100


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[dict[str, Replica]]:
    async with replicas(tmp_path) as started:
        yield started


@pytest.fixture
async def slow(tmp_path: Path) -> AsyncIterator[dict[str, Replica]]:
    """The replicas with every stanza taking ``SLOW_LATENCY_MS``."""
    instances = [
        {
            "name": "sales",
            "account": "acme",
            "token_sha256": hash_token(SALES_TOKEN),
            "latency_ms": SLOW_LATENCY_MS,
        },
        {"name": "support", "account": "acme", "latency_ms": SLOW_LATENCY_MS},
        {"name": "other", "account": "globex", "latency_ms": SLOW_LATENCY_MS},
    ]
    async with replicas(tmp_path, instances=instances) as started:
        yield started


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[dict[str, Replica]]:
    """Three calls a minute per token, ``support`` moved to ``b``."""
    owners = {"sales": "a", "support": "b", "other": "b"}
    async with replicas(tmp_path, owners, rate_limit_per_minute=3) as started:
        yield started


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
