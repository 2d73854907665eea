"""The simulator area's fixtures: a ``SimulatorServer`` in the test's process, gateways
(``make_gateway``, from ``tests/conftest.py``) whose instances live in it, and one session behind
a gate (``gated``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.sessions.simulator.server import SimulatorServer
from service.sessions.simulator.session import SimulatorSession
from tests.helpers.harness import GatewayFactory, Harness
from tests.helpers.simulator import (
    GATED_RECONNECT_INITIAL,
    GATED_RECONNECT_MAX,
    Gate,
    OnSimulator,
    simulator_config,
    wait_connected,
)


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


@pytest.fixture
async def gated(simulator: SimulatorServer) -> AsyncIterator[tuple[SimulatorSession, Gate]]:
    """A session of ``sales`` on ``simulator`` whose gate (``may_connect``) starts closed."""
    gate = Gate(open_=False)
    session = SimulatorSession(
        "sales", simulator.address, client="r1", may_connect=gate,
        reconnect_initial=GATED_RECONNECT_INITIAL, reconnect_max=GATED_RECONNECT_MAX,
    )  # fmt: skip
    yield session, gate
    await session.close()
