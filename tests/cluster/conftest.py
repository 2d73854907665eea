"""The replicas' fixtures: real gateway processes on one real PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.processes import started_gateways
from tests.helpers.replicas import INSTANCES, ReplicaSet, replica_set


@pytest.fixture
async def replicas(tmp_path: Path, database_url: str) -> AsyncIterator[ReplicaSet]:
    """A deployment, no replica started yet (``await replicas.start("a")``)."""
    with started_gateways(tmp_path) as start:
        async with replica_set(tmp_path, database_url, INSTANCES, start) as deployment:
            yield deployment
