"""The simulator area's fixtures: a ``SimulatorServer`` in the test's process, and gateways
(``make_gateway``, from ``tests/conftest.py``) whose instances live in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.sessions.simulator.server import SimulatorServer
from tests.helpers.harness import GatewayFactory, Harness
from tests.helpers.simulator import OnSimulator, simulator_config, wait_connected


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer() as server:
        yield server


@pytest.fixture
def on_simulator(make_gateway: GatewayFactory, simulator: SimulatorServer) -> OnSimulator:
    """Starts a gateway labelled ``replica`` on ``simulator``; returns once every instance is
    connected (``connected=False``: at once)."""

    async def start(
        replica: str | None = "r1", *, connected: bool = True, **overrides: Any
    ) -> Harness:
        harness: Harness = await make_gateway(
            **simulator_config(simulator.address, replica, **overrides)
        )
        if connected:
            await wait_connected(harness)
        return harness

    return start
