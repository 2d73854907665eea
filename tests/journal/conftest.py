"""The journal area's fixtures: a journal of its own, and ``privacy-gateway serve`` processes on a
shared ``data_dir``."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from service.assembly import build_gateway
from service.config import from_mapping
from service.grpc.server import start_server
from service.journal import Journal, commit
from service.journal.policy import CommitPolicy
from service.journal.postgres import PostgresJournal, postgres_journal
from service.journal.protocol import JournalStore
from service.journal.sqlite import SqliteJournal, sqlite_journal
from service.operations import journaling
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from tests.helpers.clock import FakeClock
from tests.helpers.faults import SmallFilesystem
from tests.helpers.harness import GatewayFactory, Harness, gateway_config
from tests.helpers.journal_restart import StartGateway
from tests.helpers.leases import TestLeases
from tests.helpers.postgres import PostgresServer, running_server
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


PgGatewayFactory = Callable[..., Awaitable[tuple[Harness, TestLeases]]]

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


# -- the journal on PostgreSQL (tests/journal/test_postgres_journal.py) -------------------------


@pytest.fixture
async def leases(database_url: str) -> TestLeases:
    """This replica's leases on ``sales`` and ``support``: real rows of ``gateway_leases``."""
    held = TestLeases(database_url)
    await held.take("sales", "support")
    return held


@pytest.fixture
async def pg_journal(database_url: str, leases: TestLeases) -> AsyncIterator[PostgresJournal]:
    opened = await postgres_journal(database_url, leases)()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    opened = await sqlite_journal(tmp_path / "journal.db")()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> JournalStore:
    """Each store in turn, for the tests that hold of both."""
    name = "sqlite_store" if request.param == "sqlite" else "pg_journal"
    chosen: JournalStore = request.getfixturevalue(name)
    return chosen


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which it may stop and start (never the
    session's)."""
    with running_server("gateway-journal-pg-") as server:
        yield server


@pytest.fixture
async def make_pg_gateway(tmp_path: Path) -> AsyncIterator[PgGatewayFactory]:
    """Starts gateways whose journal is PostgreSQL's at a given URL, each with leases of its own
    (``TestLeases``) on every instance; stops them all at the end of the test."""
    started: list[Harness] = []

    async def make(url: str, **overrides: Any) -> tuple[Harness, TestLeases]:
        held = TestLeases(url, replica_id=f"replica-{len(started)}")
        await held.take("sales", "support", "other")
        overrides.setdefault("data_dir", str(tmp_path / f"pg-gateway-{len(started)}"))
        config = from_mapping(gateway_config(database_url=url, **overrides), env={})
        gateway = build_gateway(config, ownership=held)
        await gateway.start()
        server = await start_server(gateway, "127.0.0.1:0")
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        harness = Harness(gateway, server, channel, pb_grpc.PrivacyServiceStub(channel))
        started.append(harness)
        return harness, held

    yield make
    for harness in started:
        await harness.channel.close()
        await harness.server.stop(None)
        await harness.gateway.close()


@pytest.fixture
def impatient_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock is given up on after 0.2 s and a failed write retried once, 0.05 s later: the
    lock tests' positions are reached in a fraction of the real patience."""
    monkeypatch.setattr(commit, "BUSY_PATIENCE_SECONDS", 0.2)
    monkeypatch.setattr(journaling, "RETRY_PAUSES", (0.05,))
