"""The replicas' fixtures: real gateway processes on one real PostgreSQL database, their
instances' accounts on one simulated WhatsApp (``SimulatorServer``, in the test's process) that
records which replica connected to each account and every stanza each one sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.sessions.simulator.server import SimulatorServer
from tests.helpers.processes import started_gateways
from tests.helpers.replicas import INSTANCES, ReplicaSet, replica_set


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
