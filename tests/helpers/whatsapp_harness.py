"""A gateway with WhatsApp instances on a loopback port, with the stand-in playing WhatsApp.

``StandInFFI`` models neonize's exports and whatsmeow from their source (see its package), so
tests through it drive ``WhatsAppSession``'s real code path: the supervisor and its backoff, the
link threads and their callbacks, the stanza threads, pairing. Every gateway started here is
closed at the end, and a test fails if the stand-in saw anything that would have aborted the
real process (``runtime.fatal``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from service.assembly import build_gateway
from service.auth import hash_token
from service.config import from_mapping
from service.gateway import Gateway
from service.grpc import convert
from service.grpc.server import RunningServer, start_server
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.whatsapp.standin import StandInFFI
from service.settings import Field, Settings
from tests.helpers.harness import ACME_TOKEN, GLOBEX_TOKEN

JID = "5511999999999@s.whatsapp.net"
PHONE = "5511999999999"
#: How long any wait for the gateway may take before a test gives up.
TIMEOUT = 5.0

State = instance_pb.InstanceState.ValueType
NOT_PAIRED = instance_pb.INSTANCE_STATE_NOT_PAIRED
CONNECTED = instance_pb.INSTANCE_STATE_CONNECTED
DISCONNECTED = instance_pb.INSTANCE_STATE_DISCONNECTED
LOGGED_OUT = instance_pb.INSTANCE_STATE_LOGGED_OUT
PAIRING = instance_pb.INSTANCE_STATE_PAIRING

PairCall = aio.UnaryStreamCall[instance_pb.PairInstanceRequest, instance_pb.PairInstanceResponse]


def state_name(state: int) -> str:
    return instance_pb.InstanceState.Name(state)


# -- a gateway with WhatsApp instances --------------------------------------------------------


def whatsapp_instance(name: str, account: str = "acme", **extra: Any) -> dict[str, Any]:
    return {"name": name, "account": account, "session": "whatsapp", **extra}


def gateway_raw(
    data_dir: Path, instances: list[dict[str, Any]], **overrides: Any
) -> dict[str, Any]:
    """Accounts ``acme`` and ``globex``, no rate limit, stores under ``data_dir``."""
    raw: dict[str, Any] = {
        "rate_limit_per_minute": 0,
        "data_dir": str(data_dir),
        "accounts": [
            {"name": "acme", "token_sha256": hash_token(ACME_TOKEN)},
            {"name": "globex", "token_sha256": hash_token(GLOBEX_TOKEN)},
        ],
        "instances": instances,
    }
    raw.update(overrides)
    return raw


@dataclass
class WaGateway:
    """A started gateway (server and sessions) and the stand-in WhatsApp behind it."""

    gateway: Gateway
    server: RunningServer
    channel: aio.Channel
    ffi: StandInFFI
    privacy: pb_grpc.PrivacyServiceStub
    instances: instance_grpc.InstanceServiceStub
    token: str = ACME_TOKEN

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("token", token or self.token),)

    async def instance(self, name: str, token: str | None = None) -> instance_pb.Instance:
        response = await self.instances.GetInstance(
            instance_pb.GetInstanceRequest(instance=name), metadata=self.metadata(token)
        )
        return response.instance

    async def wait_state(
        self, name: str, state: State, within: float = TIMEOUT, error: str | None = None
    ) -> instance_pb.Instance:
        """Polls GetInstance until ``name`` reports ``state`` (and, if given, a last error that
        starts with ``error``: a state can be passed through on the way with another cause);
        fails after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            current = await self.instance(name)
            if current.state == state and current.last_error.startswith(error or ""):
                return current
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{name} stayed {state_name(current.state)} ({current.last_error!r}), "
                    f"not {state_name(state)}, for {within} s"
                )
            await asyncio.sleep(0.01)

    async def get(self, name: str) -> Settings:
        response = await self.privacy.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=name), metadata=self.metadata()
        )
        return convert.settings_from_proto(response.settings)

    async def update(self, name: str, **values: str) -> pb.UpdatePrivacySettingsResponse:
        """Updates ``name`` with ``field_name=value`` pairs (``last_seen="none"``)."""
        settings = Settings({Field(f): v for f, v in values.items()})
        return await self.privacy.UpdatePrivacySettings(
            pb.UpdatePrivacySettingsRequest(
                instance=name, settings=convert.settings_to_proto(settings)
            ),
            metadata=self.metadata(),
        )

    def pair(self, name: str, phone: str = "", token: str | None = None) -> PairCall:
        return self.instances.PairInstance(
            instance_pb.PairInstanceRequest(instance=name, phone=phone),
            metadata=self.metadata(token),
        )


StartWhatsApp = Callable[..., Awaitable[WaGateway]]


@asynccontextmanager
async def whatsapp_gateways(data_dir: Path) -> AsyncIterator[StartWhatsApp]:
    """``start(ffi, *names, instances=[...], **config)`` starts gateways; all stop at the end.

    ``names`` become WhatsApp instances of account ``acme``; ``instances`` are raw instance
    tables placed after them. Each gateway is started as ``serve`` starts it: the server, then
    every session.
    """
    started: list[WaGateway] = []

    async def start(
        ffi: StandInFFI,
        *names: str,
        instances: list[dict[str, Any]] | None = None,
        **overrides: Any,
    ) -> WaGateway:
        tables = [whatsapp_instance(n) for n in names] + list(instances or [])
        config = from_mapping(gateway_raw(data_dir, tables, **overrides), env={})
        ffi.place(data_dir)
        gateway = build_gateway(config, ffi=ffi)
        server = await start_server(gateway, "127.0.0.1:0")
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        running = WaGateway(
            gateway,
            server,
            channel,
            ffi,
            pb_grpc.PrivacyServiceStub(channel),
            instance_grpc.InstanceServiceStub(channel),
        )
        started.append(running)
        await gateway.start()
        return running

    try:
        yield start
    finally:
        failures: list[BaseException] = []
        for running in started:
            await running.channel.close()
            await running.server.stop(None)
            try:
                await running.gateway.close()
            except BaseException as failure:  # raised below, once every gateway is stopped
                failures.append(failure)
        for running in started:
            running.ffi.shutdown()
        if failures:
            raise failures[0]
        fatal = [f for running in started for f in running.ffi.runtime.fatal]
        assert not fatal, f"the real process would have aborted: {fatal}"


def paired(*names: str, **options: Any) -> StandInFFI:
    """A stand-in on which each of ``names`` is an already linked account."""
    ffi = StandInFFI(**options)
    for name in names:
        ffi.link_account(name, JID)
    return ffi


async def rpc_error(call: Awaitable[Any]) -> aio.AioRpcError:
    """The error a unary call must end with."""
    try:
        await call
    except aio.AioRpcError as error:
        return error
    pytest.fail("the call succeeded")


async def drain(call: aio.UnaryStreamCall[Any, Any]) -> tuple[list[Any], aio.AioRpcError | None]:
    """Every message of a stream, and the error it ended with (None when it ended OK)."""
    messages: list[Any] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while (message := await call.read()) is not aio.EOF:
                messages.append(message)
    except aio.AioRpcError as error:
        return messages, error
    return messages, None


def error_reason(error: aio.AioRpcError) -> str:
    """The ``ErrorInfo`` reason in the error's rich status."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no rich status"
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason
    pytest.fail("the rich status has no ErrorInfo")


def pair_event(message: instance_pb.PairInstanceResponse) -> tuple[str, str]:
    kind = message.WhichOneof("event")
    assert kind is not None
    return kind, getattr(message, kind)
