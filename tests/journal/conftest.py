"""The journal area's fixtures: a journal of its own, and ``privacy-gateway serve`` processes on a
shared ``data_dir``."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.journal import Journal
from service.journal.policy import CommitPolicy
from tests.helpers.clock import FakeClock
from tests.helpers.faults import SmallFilesystem
from tests.helpers.harness import GatewayFactory, Harness
from tests.helpers.journal_restart import StartGateway
from tests.helpers.processes import GatewayProcess, started_gateways, stripped_env


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = Journal(tmp_path / "journal.db")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def loaded(tmp_path: Path) -> AsyncIterator[Journal]:
    """A journal whose every commit comes at the same instant: the third is sustained load."""
    opened = Journal(tmp_path / "journal.db", clock=lambda: 0.0)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def gateway_processes(tmp_path: Path) -> Iterator[StartGateway]:
    """Starts ``privacy-gateway serve --config F`` and returns once it printed its address.

    No ``PRIVACY_GATEWAY_*`` variable reaches the gateway: ``PRIVACY_GATEWAY_DATA_DIR`` would
    override the config's ``data_dir``, and both processes of a test must share that journal.
    """
    with started_gateways(tmp_path) as start:

        def start_with_config(config: Path) -> GatewayProcess:
            return start("--config", str(config), env=stripped_env())

        yield start_with_config


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy(clock: FakeClock) -> CommitPolicy:
    return CommitPolicy(clock=clock)


SLOW_INSTANCES = [
    {"name": "sales", "account": "acme", "latency_ms": 200},
    {"name": "support", "account": "acme"},
]


@pytest.fixture
async def slow_gateway(make_gateway: GatewayFactory) -> Harness:
    """A gateway whose ``sales`` takes 200 ms a stanza: long enough to act while one is out."""
    harness: Harness = await make_gateway(instances=SLOW_INSTANCES)
    return harness


@pytest.fixture
async def disk_gateway(
    make_gateway: GatewayFactory, tmp_path: Path
) -> AsyncIterator[tuple[Harness, SmallFilesystem]]:
    """A slow gateway whose data_dir is on a small filesystem of its own, with a reader holding
    a snapshot of the journal open, as readers do: the journal's write-ahead log cannot be
    rewound then, so every write needs new space on the disk."""
    disk = SmallFilesystem(tmp_path / "small")
    with disk.mounted():
        harness: Harness = await make_gateway(
            instances=SLOW_INSTANCES, data_dir=str(disk.root / "gateway")
        )
        reader = sqlite3.connect(harness.gateway.operations.journal.path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM operations").fetchone()
        try:
            yield harness, disk
        finally:
            disk.free()
            reader.execute("COMMIT")
            reader.close()
            await harness.gateway.close()
