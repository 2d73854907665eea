"""The observability area's fixtures: log lines captured in both of the gateway's formats, a
gateway with a rate limit low enough to reach, and ``privacy-gateway serve`` processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.harness import GatewayFactory, Harness
from tests.helpers.observability import RATE_LIMIT, Captured, capturing
from tests.helpers.processes import StartServe, started_gateways
from tests.helpers.rest_client import Rest, serving


@pytest.fixture
def call_lines() -> Iterator[Captured]:
    """The ``service`` loggers' records at DEBUG, as JSON lines and as text lines."""
    with capturing("service") as captured:
        yield captured


@pytest.fixture
def every_line() -> Iterator[Captured]:
    """Every logger's records (the root and all below it) at DEBUG, in both formats."""
    with capturing() as captured:
        yield captured


@pytest.fixture
async def limited(make_gateway: GatewayFactory) -> AsyncIterator[Rest]:
    """The ``gateway`` fixture's instances and tokens, ``RATE_LIMIT`` calls a minute per token,
    with REST served on it too (``Rest.harness`` is the gRPC side)."""
    harness: Harness = await make_gateway(rate_limit_per_minute=RATE_LIMIT)
    async with serving(harness) as surface:
        yield surface


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[StartServe]:
    """Runs ``privacy-gateway serve ARGS``; every process is stopped at teardown."""
    with started_gateways(tmp_path) as start:
        yield start
