"""The cluster area's fixtures.

- ``pools``: pools on a fresh database, one per replica they stand in for;
- ``lease_replicas``: one replica's ``Leases`` at a time, each on a pool of its own;
- ``replicas``: real gateway processes on one real PostgreSQL database, their instances' accounts
  on one simulated WhatsApp (``whatsapp``: a ``SimulatorServer`` in the test's process) that
  records which replica connected to each account and every stanza each one sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from service.cluster.database import open_pool
from service.sessions.simulator.server import SimulatorServer
from tests.helpers.lease_replicas import INSTANCES as LEASED
from tests.helpers.lease_replicas import MakeReplica, Replica
from tests.helpers.processes import started_gateways
from tests.helpers.replicas import INSTANCES, ReplicaSet, replica_set

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


@pytest.fixture
async def whatsapp() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer() as server:
        yield server


@pytest.fixture
async def replicas(
    tmp_path: Path, database_url: str, whatsapp: SimulatorServer
) -> AsyncIterator[ReplicaSet]:
    """A deployment, no replica started yet (``await replicas.start("a")``)."""
    with started_gateways(tmp_path) as start:
        async with replica_set(
            tmp_path, database_url, INSTANCES, start, simulator=whatsapp.address
        ) as deployment:
            yield deployment


@pytest.fixture
async def lease_replicas(database_url: str) -> AsyncIterator[MakeReplica]:
    """Starts one replica's ``Leases`` on a pool of its own; each is crashed (nothing released)
    and its pool closed at the end of the test."""
    made: list[tuple[Replica, asyncpg.Pool]] = []

    async def make(
        name: str, clock: Callable[[], float] = time.monotonic, instances: list[str] = LEASED
    ) -> Replica:
        pool = await open_pool(database_url)
        replica = Replica(name, pool, clock, instances)
        made.append((replica, pool))
        await replica.leases.start()
        return replica

    yield make
    for replica, pool in made:
        replica.crash()
        await replica.leases.close(release=False)
        await pool.close()
