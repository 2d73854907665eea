"""The WhatsApp kind of session, through gRPC, with the stand-in playing WhatsApp.

``StandInFFI`` answers the same serialized neonize messages as the Go library and blocks a thread
per stanza as the real call does, so these tests drive ``WhatsAppSession``'s real code path: the
supervisor and its backoff, the link threads and their callbacks, the stanza executor, pairing.
The helpers at the top (a gateway with WhatsApp instances on a loopback port, started like
``serve`` starts it) are shared with the other WhatsApp test modules.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from neonize.proto import Neonize_pb2 as npb

from service.app import build_gateway
from service.auth import hash_token
from service.config import from_mapping
from service.gateway import Gateway
from service.grpc import convert
from service.grpc.server import RunningServer, start_server
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.whatsapp.ffi import EVENT_CODES, LinkCallbacks
from service.sessions.whatsapp.standin import StandInFFI
from service.sessions.simulated import DEFAULT_SETTINGS
from service.sessions.whatsapp.session import WhatsAppSession
from service.settings import Field, Settings
from tests.conftest import ACME_TOKEN, GLOBEX_TOKEN

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
        self, name: str, state: State, within: float = TIMEOUT
    ) -> instance_pb.Instance:
        """Polls GetInstance until ``name`` reports ``state``; fails after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            current = await self.instance(name)
            if current.state == state:
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
        if failures:
            raise failures[0]


def paired(*names: str, **options: Any) -> StandInFFI:
    """A stand-in on which each of ``names`` is an already linked account."""
    ffi = StandInFFI(**options)
    for name in names:
        ffi.account(name.encode()).jid = JID
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


def device_event(jid: str) -> bytes:
    """neonize's ``Device`` event (code 0), which it sends first on every connection."""
    user, _, server = jid.partition("@")
    event = npb.Device()
    event.JID.User = user
    event.JID.Server = server
    return event.SerializePartialToString()


def callbacks_of(ffi: StandInFFI, name: str) -> LinkCallbacks:
    callbacks = ffi.account(name.encode()).callbacks
    assert callbacks is not None, f"{name} has no connection"
    return callbacks


@pytest.fixture
async def start_whatsapp(tmp_path: Path) -> AsyncIterator[StartWhatsApp]:
    async with whatsapp_gateways(tmp_path) as start:
        yield start


# -- a linked account -------------------------------------------------------------------------


async def test_a_linked_account_comes_up_connected(start_whatsapp: StartWhatsApp) -> None:
    wa = await start_whatsapp(paired("wa"), "wa")

    instance = await wa.wait_state("wa", CONNECTED)

    served = wa.gateway.instances.get("wa")
    assert served is not None
    assert isinstance(served.session, WhatsAppSession)
    assert instance.name == "wa"
    assert instance.account == "acme"
    assert instance.kind == instance_pb.SESSION_KIND_WHATSAPP
    assert instance.last_error == ""
    assert abs(instance.state_since.ToNanoseconds() / 1e9 - time.time()) < 60
    # neonize sends the device (with its JID) before Connected on every connection.
    assert instance.jid == JID


async def test_the_jid_is_shown_once_a_device_event_tells_it(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa"), "wa")
    await wa.wait_state("wa", CONNECTED)

    callbacks_of(wa.ffi, "wa").on_event(EVENT_CODES["Device"], device_event(JID))

    deadline = time.monotonic() + TIMEOUT
    while (instance := await wa.instance("wa")).jid != JID:
        assert time.monotonic() < deadline, f"the jid is still {instance.jid!r}"
        await asyncio.sleep(0.01)
    assert instance.state == CONNECTED


async def test_an_update_costs_the_first_fetch_and_one_stanza_per_changed_field(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", latency=0.0), "wa")
    await wa.wait_state("wa", CONNECTED)
    assert wa.ffi.stanzas == 0

    response = await wa.update("wa", last_seen="none", read_receipts="none", profile="all")

    # One fetch of the settings (whatsmeow's first), then one set for each of the two fields
    # that change; profile is already `all`.
    assert wa.ffi.stanzas == 3
    outcomes = [(u.field, u.state) for u in response.fields]
    assert outcomes == [
        (spb.PRIVACY_FIELD_LAST_SEEN, pb.FIELD_STATE_APPLIED),
        (spb.PRIVACY_FIELD_PROFILE, pb.FIELD_STATE_UNCHANGED),
        (spb.PRIVACY_FIELD_READ_RECEIPTS, pb.FIELD_STATE_APPLIED),
    ]
    expected = Settings({**DEFAULT_SETTINGS, Field.LAST_SEEN: "none", Field.READ_RECEIPTS: "none"})
    assert convert.settings_from_proto(response.settings) == expected
    assert wa.ffi.account(b"wa").settings == expected

    repeat = await wa.update("wa", last_seen="none", read_receipts="none", profile="all")

    assert wa.ffi.stanzas == 3, "an update that changes nothing sends nothing"
    assert {u.state for u in repeat.fields} == {pb.FIELD_STATE_UNCHANGED}
    assert await wa.get("wa") == expected
    assert wa.ffi.stanzas == 3, "the settings are served from the session's cache"


async def test_a_refused_field_is_internal_naming_the_field_and_the_reason(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", latency=0.0), "wa")
    await wa.wait_state("wa", CONNECTED)
    wa.ffi.account(b"wa").failures[Field.READ_RECEIPTS] = "server returned error 403"

    error = await rpc_error(wa.update("wa", last_seen="none", read_receipts="none"))

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "failed to update readReceipts privacy: server returned error 403"
    assert error_reason(error) == "STANZA_FAILED"
    # The field before the refused one stays applied; the refused one does not.
    expected = Settings({**DEFAULT_SETTINGS, Field.LAST_SEEN: "none"})
    assert wa.ffi.account(b"wa").settings == expected
    assert await wa.get("wa") == expected
    assert wa.ffi.stanzas == 3  # the fetch, last_seen, and the refused read_receipts


async def test_a_dropped_connection_is_disconnected_and_refuses_updates_until_it_is_back(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", latency=0.0), "wa")
    await wa.wait_state("wa", CONNECTED)
    await wa.get("wa")
    sent = wa.ffi.stanzas

    wa.ffi.drop(b"wa")

    dropped = await wa.wait_state("wa", DISCONNECTED)
    assert dropped.last_error == "connection lost"
    error = await rpc_error(wa.update("wa", last_seen="none"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Instance is not connected to WhatsApp"
    assert error_reason(error) == "INSTANCE_NOT_CONNECTED"
    assert wa.ffi.stanzas == sent
    assert wa.ffi.account(b"wa").settings == DEFAULT_SETTINGS

    wa.ffi.reconnect(b"wa")

    back = await wa.wait_state("wa", CONNECTED)
    assert back.last_error == ""
    response = await wa.update("wa", last_seen="none")
    assert [u.state for u in response.fields] == [pb.FIELD_STATE_APPLIED]
    assert wa.ffi.stanzas == sent + 1


async def test_a_device_removed_on_the_phone_is_logged_out_and_can_be_paired_again(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", qr_interval=0.5), "wa")
    await wa.wait_state("wa", CONNECTED)

    wa.ffi.log_out(b"wa")

    logged_out = await wa.wait_state("wa", LOGGED_OUT)
    assert logged_out.last_error == "logged out from the phone"
    error = await rpc_error(wa.update("wa", last_seen="none"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    call = wa.pair("wa")
    first = await asyncio.wait_for(call.read(), TIMEOUT)
    assert pair_event(first) == ("qr_code", "2@standin-qr-0")
    wa.ffi.scan(b"wa", JID)
    rest, failure = await drain(call)
    assert failure is None
    assert [pair_event(m) for m in rest] == [("jid", JID)]
    relinked = await wa.wait_state("wa", CONNECTED)
    assert relinked.jid == JID


async def test_closing_the_gateway_ends_every_whatsapp_connection(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", "wb"), "wa", "wb")
    await wa.wait_state("wa", CONNECTED)
    await wa.wait_state("wb", CONNECTED)
    await wa.server.stop(None)

    try:
        await asyncio.wait_for(wa.gateway.close(), TIMEOUT)
    except asyncio.CancelledError:
        pytest.fail("Gateway.close() raised CancelledError instead of closing the sessions")

    for name in ("wa", "wb"):
        account = wa.ffi.account(name.encode())
        assert account.stopped.is_set(), f"{name}'s connection was never stopped"
        assert account.callbacks is None, f"{name}'s Neonize call has not returned"


# -- pairing ----------------------------------------------------------------------------------


async def test_an_unpaired_account_is_not_paired_after_start(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(StandInFFI(), "wa")

    instance = await wa.wait_state("wa", NOT_PAIRED)

    assert instance.jid == ""
    error = await rpc_error(wa.update("wa", last_seen="none"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Instance is not connected to WhatsApp"


async def test_pairing_streams_qr_codes_until_scanned_then_the_jid(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(StandInFFI(qr_interval=0.5), "wa")
    await wa.wait_state("wa", NOT_PAIRED)

    call = wa.pair("wa")
    first = await asyncio.wait_for(call.read(), TIMEOUT)
    assert (await wa.instance("wa")).state == PAIRING
    second = await asyncio.wait_for(call.read(), TIMEOUT)
    wa.ffi.scan(b"wa", JID)
    rest, failure = await drain(call)

    assert failure is None
    assert await call.code() == grpc.StatusCode.OK
    events = [pair_event(m) for m in (first, second, *rest)]
    assert events == [
        ("qr_code", "2@standin-qr-0"),
        ("qr_code", "2@standin-qr-1"),
        ("jid", JID),
    ]
    instance = await wa.wait_state("wa", CONNECTED)
    assert instance.jid == JID
    assert instance.last_error == ""
    # And the account works.
    await wa.update("wa", last_seen="none")
    assert wa.ffi.account(b"wa").settings[Field.LAST_SEEN] == "none"


async def test_pairing_with_a_phone_streams_one_pairing_code_then_the_jid(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(StandInFFI(qr_interval=0.2), "wa")
    await wa.wait_state("wa", NOT_PAIRED)

    call = wa.pair("wa", phone=PHONE)
    first = await asyncio.wait_for(call.read(), TIMEOUT)
    assert pair_event(first) == ("pairing_code", "GATE-WAY1")
    # Let WhatsApp rotate a QR code or two: none of them reaches a caller pairing by phone.
    await asyncio.sleep(0.5)
    wa.ffi.scan(b"wa", JID)
    rest, failure = await drain(call)

    assert failure is None
    assert [pair_event(m) for m in rest] == [("jid", JID)]
    assert (await wa.wait_state("wa", CONNECTED)).jid == JID


class CountingFFI(StandInFFI):
    """A stand-in that records when each connection attempt (``Neonize`` call) began."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.dials: list[float] = []

    def connect(
        self, session_id: bytes, store: str, proxy: str | None, callbacks: LinkCallbacks
    ) -> str:
        self.dials.append(time.monotonic())
        return super().connect(session_id, store, proxy, callbacks)


@pytest.mark.parametrize("phone", ["0123", "abc", "123456", "+5511999999999", "55 11 9999 9999"])
async def test_an_invalid_phone_is_invalid_argument_and_changes_nothing(
    start_whatsapp: StartWhatsApp, phone: str
) -> None:
    ffi = CountingFFI()
    wa = await start_whatsapp(ffi, "wa")
    before = await wa.wait_state("wa", NOT_PAIRED)
    dials = len(ffi.dials)

    messages, error = await drain(wa.pair("wa", phone=phone))

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "phone must be the number in international format, digits only (for example 5511999999999)"
    )
    assert error_reason(error) == "INVALID_PHONE"
    after = await wa.instance("wa")
    assert (after.state, after.state_since) == (before.state, before.state_since)
    assert len(ffi.dials) == dials, "no connection was attempted"


async def test_pairing_that_nobody_scans_ends_with_deadline_exceeded(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(StandInFFI(qr_codes=2, qr_interval=0.05), "wa")
    await wa.wait_state("wa", NOT_PAIRED)

    messages, error = await drain(wa.pair("wa"))

    assert [pair_event(m) for m in messages] == [
        ("qr_code", "2@standin-qr-0"),
        ("qr_code", "2@standin-qr-1"),
    ]
    assert error is not None
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == "Pairing failed: no QR code was scanned in time"
    assert error_reason(error) == "PAIRING_FAILED"
    instance = await wa.wait_state("wa", NOT_PAIRED)
    assert instance.last_error == "pairing timed out"


async def test_pairing_a_connected_instance_is_failed_precondition(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa"), "wa")
    await wa.wait_state("wa", CONNECTED)
    callbacks_of(wa.ffi, "wa").on_event(EVENT_CODES["Device"], device_event(JID))
    deadline = time.monotonic() + TIMEOUT
    while (await wa.instance("wa")).jid != JID:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)

    messages, error = await drain(wa.pair("wa"))

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"Pairing failed: already paired as {JID}"
    assert (await wa.instance("wa")).state == CONNECTED


async def test_pairing_a_linked_instance_whose_connection_dropped_does_not_hang(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa"), "wa")
    await wa.wait_state("wa", CONNECTED)
    wa.ffi.drop(b"wa")
    await wa.wait_state("wa", DISCONNECTED)

    # The device is linked: WhatsApp will show no QR code for it, whatever happens next. Here
    # the connection even comes back (whatsmeow reconnects on its own) while the pairing waits.
    call = wa.instances.PairInstance(
        instance_pb.PairInstanceRequest(instance="wa"), metadata=wa.metadata(), timeout=3.0
    )
    await asyncio.sleep(0.2)
    wa.ffi.reconnect(b"wa")
    messages, error = await drain(call)

    assert messages == []
    assert error is not None, "a linked device cannot be paired again"
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (
        f"PairInstance ended with {error.code().name}: {error.details()}"
    )
    assert error.details().startswith("Pairing failed: already paired as")
    assert (await wa.instance("wa")).state == CONNECTED


async def test_a_second_concurrent_pairing_is_failed_precondition(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(StandInFFI(qr_interval=0.5), "wa")
    await wa.wait_state("wa", NOT_PAIRED)
    first = wa.pair("wa")
    assert pair_event(await asyncio.wait_for(first.read(), TIMEOUT))[0] == "qr_code"

    messages, error = await drain(wa.pair("wa"))

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Pairing failed: a pairing is already in progress"
    # The first pairing is unharmed.
    wa.ffi.scan(b"wa", JID)
    rest, failure = await drain(first)
    assert failure is None
    assert pair_event(rest[-1]) == ("jid", JID)


async def test_pairing_while_whatsapp_is_unreachable_is_unavailable_at_once(
    start_whatsapp: StartWhatsApp,
) -> None:
    dial_error = "dial tcp: lookup web.whatsapp.com: no such host"
    # A long backoff: only pairing's own wake-up can make the answer quick.
    wa = await start_whatsapp(
        StandInFFI(dial_error=dial_error),
        "wa",
        reconnect_initial_seconds=30,
        reconnect_max_seconds=60,
    )
    before = await wa.wait_state("wa", DISCONNECTED)
    assert before.last_error == dial_error

    started = time.monotonic()
    messages, error = await drain(wa.pair("wa"))
    elapsed = time.monotonic() - started

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == f"Pairing failed: WhatsApp cannot be reached: {dial_error}"
    assert elapsed < 2.0, f"PairInstance took {elapsed:.2f} s to report the dial error"


async def test_the_supervisor_retries_a_failing_dial_with_capped_backoff(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = CountingFFI(dial_error="dial tcp 157.240.0.53:443: connect: connection refused")
    ffi.account(b"wa").jid = JID
    wa = await start_whatsapp(ffi, "wa", reconnect_initial_seconds=0.05, reconnect_max_seconds=0.2)

    await asyncio.sleep(1.0)  # the window in which attempts are counted
    dials = list(ffi.dials)

    # Delays 0.05, 0.1, 0.2, 0.2, ...: attempts near 0, 0.05, 0.15, 0.35, 0.55, 0.75, 0.95 s.
    assert 4 <= len(dials) <= 12, f"{len(dials)} attempts in 1 s"
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    assert min(gaps) >= 0.04, f"retried without backoff: {gaps}"
    assert gaps[0] < 0.1 < gaps[-1], f"the delay did not grow: {gaps}"
    assert max(gaps) < 0.35, f"the delay exceeded its cap: {gaps}"
    instance = await wa.instance("wa")
    assert instance.state == DISCONNECTED
    assert instance.last_error == ffi.dial_error

    ffi.dial_error = ""

    assert (await wa.wait_state("wa", CONNECTED, within=1.0)).last_error == ""
