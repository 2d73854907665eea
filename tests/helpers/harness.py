"""The in-process gateway the ``gateway`` and ``make_gateway`` fixtures start, and what a test
needs to call it: the tokens of the accounts and instance it serves, its configuration, and the
``Harness`` with stubs and the simulated sessions (see ``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grpc import aio

from service.auth import hash_token
from service.gateway import Gateway
from service.grpc.server import RunningServer
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.simulated import SimulatedSession
from service.settings import Settings

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


def visibility(**values: int) -> spb.PrivacySettings:
    """A request setting visibility fields: ``visibility(last_seen=spb.VISIBILITY_VALUE_NONE)``."""
    return spb.PrivacySettings(visibility=spb.Visibility(**values))
