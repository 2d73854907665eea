"""The whatsapp area's fixtures on the real neonize library: gateways whose WhatsApp instances dial
through loopback proxies, and a count of their connection attempts (the stand-in's gateways are
``start_whatsapp``, in ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from service.assembly import build_gateway
from service.config import from_mapping
from service.gateway import Gateway
from service.grpc.server import start_server
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.whatsapp import probe as probe_module
from service.sessions.whatsapp.ffi import NeonizeFFI
from tests.helpers.harness import Harness, gateway_config
from tests.helpers.neonize_offline import Attempts, _connection_threads


@pytest.fixture
async def start_offline_gateway(tmp_path: Path) -> AsyncIterator[Any]:
    """Starts a gateway with ``tests/conftest.py``'s simulated instances plus the given WhatsApp
    ones.

    Built and started as that conftest's ``make_gateway`` does, but closed here with
    ``_close_for_teardown``: a test that closed the gateway itself meets a second close at
    teardown, which must not hide the test's own result (a second close can raise, see
    ``test_a_second_close_after_a_given_up_dial_returns``). Leftover connection threads are
    waited for while the event loop still runs, since they report to it.
    """
    started: list[Harness] = []
    names: list[str] = []

    async def start(*instances: dict[str, Any], **overrides: Any) -> Harness:
        names.extend(i["name"] for i in instances)
        config: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "reconnect_initial_seconds": 0.1,
            "reconnect_max_seconds": 1.0,
            "instances": [*gateway_config()["instances"], *instances],
            **overrides,
        }
        gateway = build_gateway(from_mapping(gateway_config(**config), env={}))
        await gateway.start()
        server = await start_server(gateway, "127.0.0.1:0")
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        harness = Harness(gateway, server, channel, pb_grpc.PrivacyServiceStub(channel))
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.channel.close()
        await harness.server.stop(None)
        await _close_for_teardown(harness.gateway)
    # Not an assertion either: a connection thread still reports to this loop when it ends.
    for _ in range(150):
        if not _connection_threads(*names):
            break
        await asyncio.sleep(0.02)


async def _close_for_teardown(gateway: Gateway) -> None:
    """Closes a gateway that a test may have closed (or failed to close) already.

    Not an assertion: ``test_close_during_a_dial_returns_in_time`` and
    ``test_close_stops_a_live_connection`` check how ``close`` behaves. Here a CancelledError
    escaping ``close`` (see those tests) must not hide the test's own result.
    """
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(gateway.close(), 10)
    if gateway.blocking is not None:
        gateway.blocking.shutdown()


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Attempts:
    """Counts the attempts of gateways built after it: their probe (``build_gateway`` takes
    ``probe.probe_path`` when it builds a session) and neonize's ``connect``."""
    seen = Attempts()
    probe_path = probe_module.probe_path
    connect = NeonizeFFI.connect

    async def counted_probe(proxy: str | None, patience: float = probe_module.PROBE_TIMEOUT) -> str:
        started = time.monotonic()
        result = await probe_path(proxy, patience)
        seen.probes.append((started, result))
        return result

    def counted_connect(self: NeonizeFFI, *args: Any, **kwargs: Any) -> str:
        seen.connects.append(time.monotonic())
        return connect(self, *args, **kwargs)

    monkeypatch.setattr(probe_module, "probe_path", counted_probe)
    monkeypatch.setattr(NeonizeFFI, "connect", counted_connect)
    return seen
