"""The cluster area's fixtures: pools on a fresh database, one per replica they stand in for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.cluster.database import open_pool

#: How many replicas a test plays: separate pools, as separate processes would hold.
REPLICAS = 3


@pytest.fixture
async def pools(database_url: str) -> AsyncIterator[list[asyncpg.Pool]]:
    """``REPLICAS`` pools on one fresh database, each as a replica's ``open_pool`` makes it;
    closed at the end of the test."""
    opened = [await open_pool(database_url) for _ in range(REPLICAS)]
    yield opened
    await asyncio.gather(*(pool.close() for pool in opened))


@pytest.fixture
def pool(pools: list[asyncpg.Pool]) -> asyncpg.Pool:
    """The first replica's pool, for a test that needs only one."""
    return pools[0]
