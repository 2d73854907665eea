"""Shared fixtures: a real gateway on a loopback port, reached through real channels.

``gateway`` starts the gRPC server with three instances on simulated sessions:
- ``sales`` and ``support`` of account ``acme`` (``sales`` also has an instance token),
- ``other`` of account ``globex``,
and yields a ``Harness`` with stubs, tokens and the simulated sessions, so a test can act as a
caller and then check what "WhatsApp" holds and how many stanzas were sent. ``rest`` serves the
REST surface on that same gateway (see ``tests/rest_client.py``).
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest
from grpc import aio

from service.assembly import build_gateway
from service.auth import hash_token
from service.config import from_mapping
from service.gateway import Gateway
from service.grpc.server import RunningServer, start_server
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.simulated import SimulatedSession
from service.settings import Settings

if TYPE_CHECKING:
    from tests.rest_client import Rest


def _popen_waited(command: str, mode: str = "r", buffering: int = -1) -> io.StringIO:
    """``os.popen`` for reading, with the process waited for and its pipe closed."""
    done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    return io.StringIO(done.stdout)


def _import_neonize_quietly() -> None:
    """Imports neonize once, before any test module does.

    Importing anything of neonize (its protobuf modules included) runs its package __init__,
    which loads the Go library and, to name it, reads ``os.popen("uname -a")`` without closing
    it (neonize/utils/platform.py). The leaked pipe is reported as a ResourceWarning whenever it
    is collected, and with warnings as errors that fails whichever test runs then.
    """
    with mock.patch("os.popen", _popen_waited):
        import neonize  # noqa: F401


_import_neonize_quietly()

ACME_TOKEN = "acme-account-token"
SALES_TOKEN = "sales-instance-token"
GLOBEX_TOKEN = "globex-account-token"


def gateway_config(**overrides: Any) -> dict[str, Any]:
    """The raw configuration the ``gateway`` fixture serves (tests may override keys)."""
    raw: dict[str, Any] = {
        "rate_limit_per_minute": 0,
        "accounts": [
            {"name": "acme", "token_sha256": hash_token(ACME_TOKEN)},
            {"name": "globex", "token_sha256": hash_token(GLOBEX_TOKEN)},
        ],
        "instances": [
            {"name": "sales", "account": "acme", "token_sha256": hash_token(SALES_TOKEN)},
            {"name": "support", "account": "acme"},
            {"name": "other", "account": "globex"},
        ],
    }
    raw.update(overrides)
    return raw


@dataclass
class Harness:
    """A running gateway and what a test needs to call it and to look behind it."""

    gateway: Gateway
    server: RunningServer
    channel: aio.Channel
    stub: pb_grpc.PrivacyServiceStub
    token: str = ACME_TOKEN
    calls: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def session(self, name: str = "sales") -> SimulatedSession:
        instance = self.gateway.instances.get(name)
        assert instance is not None
        session = instance.session
        assert isinstance(session, SimulatedSession)
        return session

    def metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("token", token or self.token),)

    async def get(self, instance: str = "sales", token: str | None = None) -> Settings:
        from service.grpc.convert import settings_from_proto

        response = await self.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=instance), metadata=self.metadata(token)
        )
        return settings_from_proto(response.settings)

    async def update(
        self, settings: spb.PrivacySettings, instance: str = "sales", token: str | None = None
    ) -> pb.UpdatePrivacySettingsResponse:
        return await self.stub.UpdatePrivacySettings(
            pb.UpdatePrivacySettingsRequest(instance=instance, settings=settings),
            metadata=self.metadata(token),
        )

    def stream(
        self, settings: spb.PrivacySettings, instance: str = "sales", token: str | None = None
    ) -> aio.UnaryStreamCall[
        pb.StreamUpdatePrivacySettingsRequest, pb.StreamUpdatePrivacySettingsResponse
    ]:
        return self.stub.StreamUpdatePrivacySettings(
            pb.StreamUpdatePrivacySettingsRequest(instance=instance, settings=settings),
            metadata=self.metadata(token),
        )


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Starts gateways with a given configuration; stops them all at the end of the test.

    Each keeps its data (the operation journal) in a directory of its own under ``tmp_path``.
    """
    started: list[Harness] = []

    async def make(**overrides: Any) -> Harness:
        overrides.setdefault("data_dir", str(tmp_path / f"gateway-{len(started)}"))
        gateway = build_gateway(from_mapping(gateway_config(**overrides), env={}))
        await gateway.start()
        server = await start_server(gateway, "127.0.0.1:0")
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        harness = Harness(gateway, server, channel, pb_grpc.PrivacyServiceStub(channel))
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.channel.close()
        await harness.server.stop(None)
        await harness.gateway.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Harness:
    harness: Harness = await make_gateway()
    return harness


@pytest.fixture
async def rest(gateway: Harness) -> AsyncIterator[Rest]:
    # Imported here: tests.rest_client imports this module for Harness and the tokens.
    from tests.rest_client import serving

    async with serving(gateway) as surface:
        yield surface


def visibility(**values: int) -> spb.PrivacySettings:
    """A request setting visibility fields: ``visibility(last_seen=spb.VISIBILITY_VALUE_NONE)``."""
    return spb.PrivacySettings(visibility=spb.Visibility(**values))


@pytest.fixture
async def start_whatsapp(tmp_path: Path) -> AsyncIterator[Any]:
    """Starts gateways with WhatsApp instances on the stand-in (``tests.whatsapp_harness``)."""
    from tests.whatsapp_harness import whatsapp_gateways

    async with whatsapp_gateways(tmp_path) as start:
        yield start
