"""``python -m service.sessions.simulator``: the simulator as a process of its own, as replicas
in processes of their own need it. It prints its address, serves gateways, answers its control
channel, and exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.simulator.control import SimulatorControl
from service.sessions.simulator.server import Ending
from service.settings import Field
from tests.helpers.harness import GatewayFactory
from tests.helpers.simulator import TIMEOUT, simulator_config, simulator_process, wait_connected


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Polls an asynchronous ``check`` (a gRPC read, a control request) until it holds."""
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_the_standalone_simulator_prints_its_address_serves_and_is_steered(
    make_gateway: GatewayFactory,
) -> None:
    with simulator_process("--latency-ms", "50") as simulator:
        gateway = await make_gateway(**simulator_config(simulator.address, "r1"))
        await wait_connected(gateway)
        control = SimulatorControl(simulator.address)

        none = spb.Visibility(last_seen=spb.VISIBILITY_VALUE_NONE)
        (applied,) = (await gateway.update(spb.PrivacySettings(visibility=none))).fields
        assert applied.state == pb.FIELD_STATE_APPLIED
        assert applied.elapsed.ToTimedelta().total_seconds() >= 0.05
        assert (await control.settings("sales"))[Field.LAST_SEEN] == "none"
        assert await control.connected_client("sales") == "r1"

        await control.change_on_phone("sales", Field.STATUS, "none")

        async def phone_change_seen() -> bool:
            return (await gateway.get("sales"))[Field.STATUS] == "none"

        await eventually(phone_change_seen, "the phone's change at the gateway")

        assert await control.drop("other")

        async def redialled() -> bool:
            connections, _ = await control.history()
            ends = [c.ended for c in connections if c.account == "other"]
            return ends == [Ending.DROPPED, None]

        await eventually(redialled, "the dropped connection redialled")
        _, stanzas = await control.history()
        sales = [(s.client, s.kind, s.field, s.value) for s in stanzas if s.account == "sales"]
        assert sales == [("r1", "fetch", None, None), ("r1", "set", Field.LAST_SEEN, "none")]
    assert simulator.process.returncode == 0
