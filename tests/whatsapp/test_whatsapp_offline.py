"""WhatsApp sessions on the real neonize library, with no network at all.

Every WhatsApp instance here dials through a proxy on 127.0.0.1: a closed port, or a recording
proxy from ``tests.helpers.loopback_proxy`` that forwards nothing (``AnsweringProxy`` says yes to
the CONNECT first, then hangs up). So the Go library never resolves or reaches WhatsApp, yet
everything up to the dial is the real thing: the gateway, the supervisor, the FFI calls, the
error strings whatsmeow gives, and the replies neonize serializes.

Two things of the gateway decide whether neonize is called at all:
- the supervisor dials only a store that holds a device (``devices``); an unpaired store waits
  for PairInstance. ``store_with_device`` makes a file the gateway counts as paired (enough when
  the dial is stopped before neonize), ``paired_store`` a store whatsmeow itself loads as a
  paired device (when neonize must dial);
- the gateway tries the path itself first (``probe``): a closed port, or a proxy that does not
  answer its CONNECT, fails there, and neonize is not called. Tests of neonize's own dial call
  ``NeonizeFFI`` directly, or pass the probe with an ``AnsweringProxy``.

A few checks run in a child process. neonize can crash the whole process (a Go fault is not an
exception), and a crash must show up as one failing test, not as the end of the test run.

The stores, the proxies, the dial on a thread and the child processes' code are in
``tests/helpers/neonize_offline.py``, which the other tests on the real library share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from neonize.proto import Neonize_pb2 as npb

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as ipb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as ipb_grpc
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.base import SessionError, SessionState
from service.sessions.whatsapp import codec
from service.sessions.whatsapp import link as whatsapp_link
from service.sessions.whatsapp.devices import DeviceBook
from service.sessions.whatsapp.ffi import Dial as NeonizeDial
from service.sessions.whatsapp.ffi import LinkCallbacks, NeonizeFFI
from service.sessions.whatsapp.guard import GuardedFFI
from service.sessions.whatsapp.session import WhatsAppSession
from service.sessions.whatsapp.standin import StandInFFI
from service.sessions.whatsapp.threads import BlockingCalls
from service.settings import FIELDS, Field, Settings
from tests.helpers.harness import ACME_TOKEN, Harness, visibility
from tests.helpers.loopback_proxy import RecordingProxy
from tests.helpers.neonize_offline import (
    CLOSED_HTTP,
    CLOSED_SOCKS,
    DIAL_ERROR,
    AnsweringProxy,
    StartGateway,
    _connection_threads,
    _run_in_child,
    connect_in_thread,
    paired_store,
    store_with_device,
    wait_until,
    whatsapp_instance,
)

NOT_CONNECTED = "Instance is not connected to WhatsApp"
METADATA = (("token", ACME_TOKEN),)

#: whatsmeow's PrivacySettingType for each field (types/user.go), written out independently of
#: ``service.settings`` so a typo in the field table cannot agree with itself.
WHATSMEOW_CATEGORY = {
    Field.LAST_SEEN: "last",
    Field.STATUS: "status",
    Field.PROFILE: "profile",
    Field.ONLINE: "online",
    Field.READ_RECEIPTS: "readreceipts",
    Field.CALL_ADD: "calladd",
    Field.GROUP_ADD: "groupadd",
}
#: The values whatsmeow documents for each category (types/user.go).
_VISIBILITY = {"all", "contacts", "contact_blacklist", "none"}
WHATSMEOW_VALUES = {
    "last": _VISIBILITY,
    "status": _VISIBILITY,
    "profile": _VISIBILITY,
    "groupadd": _VISIBILITY,
    "readreceipts": {"all", "none"},
    "online": {"all", "match_last_seen"},
    "calladd": {"all", "known"},
}
#: Each wire string's member of neonize's ``PrivacySettings.PrivacySetting`` proto enum.
NEONIZE_ENUM_MEMBER = {
    "all": "ALL",
    "contacts": "CONTACTS",
    "contact_blacklist": "CONTACT_BLACKLIST",
    "none": "NONE",
    "match_last_seen": "MATCH_LAST_SEEN",
    "known": "KNOWN",
}
#: Each field's name in neonize's ``PrivacySettings`` message.
NEONIZE_FIELD = {
    Field.LAST_SEEN: "LastSeen",
    Field.STATUS: "Status",
    Field.PROFILE: "Profile",
    Field.ONLINE: "Online",
    Field.READ_RECEIPTS: "ReadReceipts",
    Field.CALL_ADD: "CallAdd",
    Field.GROUP_ADD: "GroupAdd",
}


def instance_stub(harness: Harness) -> ipb_grpc.InstanceServiceStub:
    return ipb_grpc.InstanceServiceStub(harness.channel)


async def get_instance(harness: Harness, name: str) -> ipb.Instance:
    response = await instance_stub(harness).GetInstance(
        ipb.GetInstanceRequest(instance=name), metadata=METADATA, timeout=5
    )
    instance: ipb.Instance = response.instance
    return instance


async def wait_for_state(
    harness: Harness, name: str, state: int, within: float = 4.0
) -> ipb.Instance:
    """The instance as GetInstance reports it, once it is in ``state``."""
    deadline = time.monotonic() + within
    while True:
        instance = await get_instance(harness, name)
        if instance.state == state:
            return instance
        if time.monotonic() > deadline:
            pytest.fail(
                f"{name} did not reach {ipb.InstanceState.Name(state)} in {within} s; it is "
                f"{ipb.InstanceState.Name(instance.state)}, last_error={instance.last_error!r}"
            )
        await asyncio.sleep(0.02)


async def stream_outcome(call: Any) -> tuple[list[Any], aio.AioRpcError | None]:
    """The messages a server stream sent, and the error it ended with (None if it ended well)."""
    messages = []
    try:
        async for message in call:
            messages.append(message)
    except aio.AioRpcError as error:
        return messages, error
    return messages, None


def assert_not_connected(error: aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    assert error.details() == NOT_CONNECTED


# -- 1. a failing dial leaves the gateway serving ---------------------------------------------


async def test_failed_dial_leaves_the_gateway_serving(
    start_offline_gateway: StartGateway, tmp_path: Path
) -> None:
    store = store_with_device(tmp_path / "stores" / "wa.db")
    harness = await start_offline_gateway(whatsapp_instance("wa", CLOSED_SOCKS, store))

    instance = await wait_for_state(harness, "wa", ipb.INSTANCE_STATE_DISCONNECTED)
    assert instance.kind == ipb.SESSION_KIND_WHATSAPP
    # The gateway's probe found the proxy closed (so neonize was never asked to dial).
    assert instance.last_error.startswith(f"{DIAL_ERROR}: proxy 127.0.0.1:1: "), instance
    assert instance.jid == ""

    # The simulated instance beside it is served as before.
    response = await harness.update(visibility(last_seen=spb.VISIBILITY_VALUE_NONE))
    assert response.settings.visibility.last_seen == spb.VISIBILITY_VALUE_NONE
    assert harness.session("sales").server_settings[Field.LAST_SEEN] == "none"

    listed = await instance_stub(harness).ListInstances(
        ipb.ListInstancesRequest(), metadata=METADATA, timeout=5
    )
    kinds = {i.name: i.kind for i in listed.instances}
    assert kinds == {
        "sales": ipb.SESSION_KIND_SIMULATED,
        "support": ipb.SESSION_KIND_SIMULATED,
        "wa": ipb.SESSION_KIND_WHATSAPP,
    }
    simulated = next(i for i in listed.instances if i.name == "sales")
    assert simulated.state == ipb.INSTANCE_STATE_CONNECTED
    assert simulated.last_error == ""

    request = visibility(last_seen=spb.VISIBILITY_VALUE_CONTACTS)
    with pytest.raises(aio.AioRpcError) as unary:
        await harness.update(request, instance="wa")
    assert_not_connected(unary.value)

    messages, error = await stream_outcome(harness.stream(request, instance="wa"))
    assert messages == []
    assert error is not None, "the stream ended without an error"
    assert_not_connected(error)

    with pytest.raises(aio.AioRpcError) as read:
        await harness.get(instance="wa")
    assert_not_connected(read.value)

    # Still retrying, still failing the same way, and the simulated instance is untouched by it.
    again = await wait_for_state(harness, "wa", ipb.INSTANCE_STATE_DISCONNECTED)
    assert again.last_error.startswith(f"{DIAL_ERROR}: proxy 127.0.0.1:1: ")
    assert (await harness.get()).get(Field.LAST_SEEN) == "none"


async def test_an_unpaired_store_is_never_dialled(
    start_offline_gateway: StartGateway, tmp_path: Path
) -> None:
    """No device in the store: the instance waits for PairInstance, and nothing is dialled."""
    async with RecordingProxy("http") as proxy:
        harness = await start_offline_gateway(whatsapp_instance("wa-unpaired", proxy.url))
        instance = await wait_for_state(harness, "wa-unpaired", ipb.INSTANCE_STATE_NOT_PAIRED)
        await asyncio.sleep(0.3)  # three backoffs of the fixture's 0.1 s
        assert proxy.dials == []
    assert instance.last_error == ""
    assert not _connection_threads("wa-unpaired")


# -- 2. neonize's replies, parsed ------------------------------------------------------------


def test_replies_of_a_session_that_never_connected() -> None:
    ffi = NeonizeFFI()

    with pytest.raises(SessionError) as refused:
        codec.parse_set_reply(ffi.set_privacy_setting(b"never-connected", "last", "none"))
    assert refused.value.reason == "client is nil"
    assert refused.value.connection_lost is True

    # whatsmeow's empty struct: every field UNDEFINED, so the gateway knows none of them.
    assert codec.parse_settings(ffi.get_privacy_settings(b"never-connected")) == Settings()
    raw = npb.PrivacySettings.FromString(ffi.get_privacy_settings(b"never-connected"))
    assert all(
        getattr(raw, name) == npb.PrivacySettings.UNDEFINED for name in NEONIZE_FIELD.values()
    )


def test_set_after_a_failed_dial_is_not_connected(tmp_path: Path) -> None:
    ffi = NeonizeFFI()
    session_id = b"ffi-failed-dial"
    try:
        error = connect_in_thread(ffi, session_id, tmp_path / "ffi.db", CLOSED_SOCKS)
        assert error.startswith(DIAL_ERROR), error
        assert "socks connect tcp 127.0.0.1:1->web.whatsapp.com:443" in error
        assert error.endswith("connect: connection refused"), error

        with pytest.raises(SessionError) as refused:
            codec.parse_set_reply(ffi.set_privacy_setting(session_id, "last", "none"))
        assert refused.value.reason == "websocket not connected"
        assert refused.value.connection_lost is True

        # The same over HTTP: the proxy's own error, and again nothing sent.
        error = connect_in_thread(ffi, session_id, tmp_path / "ffi.db", CLOSED_HTTP)
        assert error.startswith(DIAL_ERROR), error
        assert "proxyconnect tcp: dial tcp 127.0.0.1:1: connect: connection refused" in error
    finally:
        ffi.stop(session_id)
    # Stopped, the client is gone from neonize's map.
    with pytest.raises(SessionError, match=r"^client is nil$"):
        codec.parse_set_reply(ffi.set_privacy_setting(session_id, "last", "none"))


def test_settings_after_a_failed_dial_are_unknown(tmp_path: Path) -> None:
    steps = _run_in_child("child_get_after_failed_dial", str(tmp_path / "child.db"))
    assert [s["step"] for s in steps] == ["connected", "read", "stopped"]
    assert steps[0]["result"].startswith(DIAL_ERROR)
    assert steps[1]["unknown"] is True, steps[1]["settings"]


@pytest.mark.parametrize("probe", ["probe", "no-probe"])
def test_read_settings_of_a_disconnected_session_raises(tmp_path: Path, probe: str) -> None:
    store = paired_store(tmp_path / "s.db")
    steps = _run_in_child("child_read_settings_of_a_disconnected_session", str(store), probe)
    assert [s["step"] for s in steps] == ["disconnected", "read", "closed"]
    error = steps[0]["error"]
    assert error.startswith(DIAL_ERROR), error
    if probe == "probe":
        assert error.startswith(f"{DIAL_ERROR}: proxy 127.0.0.1:1: "), error
    else:  # neonize dialled the paired device itself
        assert "socks connect tcp 127.0.0.1:1->web.whatsapp.com:443" in error, error
    read = steps[1]
    assert read["raised"] is True, f"read_settings returned {read.get('settings')}"
    assert read["lost"] is True


# -- 3. the strings that go to whatsmeow -----------------------------------------------------


class RecordingFFI:
    """A ``WhatsAppFFI`` that records every set (and stop) before handing it to the stand-in."""

    def __init__(self, inner: StandInFFI) -> None:
        self.inner = inner
        self.qr_lifetimes = inner.qr_lifetimes
        self.sent: list[tuple[str, str]] = []
        self.stopped: list[bytes] = []

    def connect(self, dial: NeonizeDial, callbacks: LinkCallbacks) -> str:
        return self.inner.connect(dial, callbacks)

    def set_privacy_setting(self, session_id: bytes, category: str, value: str) -> bytes:
        self.sent.append((category, value))
        return self.inner.set_privacy_setting(session_id, category, value)

    def get_privacy_settings(self, session_id: bytes) -> bytes:
        return self.inner.get_privacy_settings(session_id)

    def pair_phone(self, session_id: bytes, phone: str) -> bytes:
        return self.inner.pair_phone(session_id, phone)

    def stop(self, session_id: bytes) -> None:
        self.stopped.append(session_id)
        self.inner.stop(session_id)


def standin_session(
    name: str, ffi: RecordingFFI, tmp_path: Path, blocking: BlockingCalls
) -> WhatsAppSession:
    """A session on the stand-in, whose store holds ``name``'s linked device, guarded as the
    gateway guards neonize (the stand-in aborts on an unguarded overlap, as Go does)."""
    store = tmp_path / f"{name}.db"
    ffi.inner.link_account(name, "1@s.whatsapp.net", store=str(store))
    return WhatsAppSession(
        name,
        GuardedFFI(ffi),
        store=str(store),
        proxy=CLOSED_SOCKS,
        blocking=blocking,
        devices=DeviceBook(tmp_path / "devices.json"),
    )


async def test_the_session_sends_whatsmeows_strings(tmp_path: Path) -> None:
    standin = StandInFFI(latency=0)
    ffi = RecordingFFI(standin)
    blocking = BlockingCalls(2)
    session = standin_session("name", ffi, tmp_path, blocking)
    await session.start()
    try:
        await wait_until(lambda: session.connected, 3, "the stand-in session to connect")
        expected = []
        for spec in FIELDS:
            for value in spec.values:
                settings = await session.set_setting(spec.field, value)
                assert settings[spec.field] == value
                expected.append((WHATSMEOW_CATEGORY[spec.field], value))
    finally:
        # close() of a connected session is checked by test_close_stops_a_live_connection; here
        # it only has to let go of the stand-in's connection thread, whatever close does.
        with contextlib.suppress(asyncio.CancelledError):
            await session.close()
        standin.shutdown()
        blocking.shutdown()
    assert not standin.runtime.fatal, standin.runtime.fatal

    assert ffi.sent == expected
    for category, value in ffi.sent:
        assert value in WHATSMEOW_VALUES[category], (category, value)
    assert ("last", "contact_blacklist") in ffi.sent
    assert ("groupadd", "contact_blacklist") in ffi.sent
    assert all(value != "contacts_blacklist" for _, value in ffi.sent)
    assert {v for _, v in ffi.sent} == set(NEONIZE_ENUM_MEMBER)


def test_neonize_ffi_hands_go_the_same_bytes() -> None:
    """What ``NeonizeFFI`` passes to Go's ``SetPrivacySetting``, seen just before the call."""
    ffi = NeonizeFFI()
    real = ffi._go
    calls: list[tuple[bytes, bytes, bytes]] = []

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def SetPrivacySetting(self, session_id: bytes, category: bytes, value: bytes) -> bytes:
            calls.append((session_id, category, value))
            reply: bytes = real.SetPrivacySetting(session_id, category, value)
            return reply

    ffi._go = Recorder()
    for spec in FIELDS:
        for value in spec.values:
            reply = ffi.set_privacy_setting(b"never-connected", spec.category, value)
            assert npb.SetPrivacySettingReturnFunction.FromString(reply).Error == "client is nil"
    assert calls == [
        (b"never-connected", WHATSMEOW_CATEGORY[s.field].encode(), v.encode())
        for s in FIELDS
        for v in s.values
    ]


def _neonize_message(values: dict[Field, str]) -> npb.PrivacySettings:
    """A neonize ``PrivacySettings`` built with neonize's own enum, from wire strings."""
    enum = npb.PrivacySettings.PrivacySetting
    message = npb.PrivacySettings()
    for field, value in values.items():
        setattr(message, NEONIZE_FIELD[field], enum.Value(NEONIZE_ENUM_MEMBER[value]))
    return message


def test_settings_round_trip_through_neonizes_enum() -> None:
    base = {spec.field: spec.values[0] for spec in FIELDS}
    for spec in FIELDS:
        for value in spec.values:
            values = {**base, spec.field: value}
            # neonize -> gateway: a message neonize's enum built (every required field set).
            wire = _neonize_message(values).SerializeToString()
            parsed = codec.settings_from_neonize(npb.PrivacySettings.FromString(wire))
            assert parsed == Settings(values), (spec.field, value)
            # gateway -> neonize -> gateway.
            encoded = npb.PrivacySettings.FromString(codec.settings_to_neonize(Settings(values)))
            member = npb.PrivacySettings.PrivacySetting.Name(
                getattr(encoded, NEONIZE_FIELD[spec.field])
            )
            assert member == NEONIZE_ENUM_MEMBER[value]
            assert codec.settings_from_neonize(encoded) == Settings(values)

    # One field unknown (UNDEFINED) is just missing: the others are still known.
    for field in Field:
        others = {f: v for f, v in base.items() if f is not field}
        partial = _neonize_message(others)
        setattr(partial, NEONIZE_FIELD[field], npb.PrivacySettings.UNDEFINED)
        parsed = codec.settings_from_neonize(partial)
        assert parsed == Settings(others), field
        assert field not in parsed
    # A value neonize's enum knows but the field does not take (calladd: contacts) is unknown too.
    odd = codec.settings_from_neonize(_neonize_message({**base, Field.CALL_ADD: "contacts"}))
    assert Field.CALL_ADD not in odd
    assert odd == Settings({f: v for f, v in base.items() if f is not Field.CALL_ADD})
    # And a settings object with none known encodes as all UNDEFINED, and reads back empty.
    empty = npb.PrivacySettings.FromString(codec.settings_to_neonize(Settings()))
    assert all(getattr(empty, n) == npb.PrivacySettings.UNDEFINED for n in NEONIZE_FIELD.values())
    assert codec.settings_from_neonize(empty) == Settings()


# -- 4. pairing with no network ----------------------------------------------------------------


async def test_pair_without_network_fails_fast(start_offline_gateway: StartGateway) -> None:
    harness = await start_offline_gateway(whatsapp_instance("wa-pair", CLOSED_SOCKS))
    # An unpaired store is not dialled until PairInstance asks.
    await wait_for_state(harness, "wa-pair", ipb.INSTANCE_STATE_NOT_PAIRED)

    started = time.monotonic()
    call = instance_stub(harness).PairInstance(
        ipb.PairInstanceRequest(instance="wa-pair"), metadata=METADATA, timeout=10
    )
    messages, error = await stream_outcome(call)
    elapsed = time.monotonic() - started

    assert messages == []
    assert error is not None, "PairInstance ended without an error"
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    details = error.details() or ""
    assert DIAL_ERROR in details
    assert "127.0.0.1:1" in details
    assert elapsed < 5, f"PairInstance took {elapsed:.1f} s to fail"

    # Back to waiting for a pairing (there is still no device to dial), the failure shown.
    instance = await wait_for_state(harness, "wa-pair", ipb.INSTANCE_STATE_NOT_PAIRED)
    assert DIAL_ERROR in instance.last_error
    assert not _connection_threads("wa-pair"), "neonize was asked to dial a closed port"


async def test_failed_pairing_returns_to_the_backoff(
    start_offline_gateway: StartGateway, tmp_path: Path
) -> None:
    """After PairInstance fails, nobody is pairing: no dial as PAIRING, none before the backoff.

    A dial here is the gateway's probe (the recording proxy never answers its CONNECT, so
    neonize is not called). The store holds no device, so nothing dials before the pairing
    (a store that holds one is refused pairing); the pairing dials once, then none for 30 s.
    """
    store = tmp_path / "stores" / "wa-backoff.db"
    async with RecordingProxy("http") as proxy:
        harness = await start_offline_gateway(
            whatsapp_instance("wa-backoff", proxy.url, store),
            reconnect_initial_seconds=30,
            reconnect_max_seconds=30,
        )
        await wait_for_state(harness, "wa-backoff", ipb.INSTANCE_STATE_NOT_PAIRED)
        assert len(proxy.dials) == 0

        _, error = await stream_outcome(
            instance_stub(harness).PairInstance(
                ipb.PairInstanceRequest(instance="wa-backoff"), metadata=METADATA, timeout=10
            )
        )
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert len(proxy.dials) == 1, "pairing dials once"

        session = harness.gateway.instances.get("wa-backoff")
        assert session is not None
        states = set()
        for _ in range(30):
            states.add(session.session.status().state)
            await asyncio.sleep(0.01)
        assert SessionState.PAIRING not in states, "PAIRING after the pairing call had ended"
        assert len(proxy.dials) == 1, (
            f"{len(proxy.dials)} dials: the session dialed again at once after the failed "
            "pairing instead of waiting out its 30 s backoff"
        )
    assert not _connection_threads("wa-backoff")


# -- 5. the proxy is used, and resolves the name ---------------------------------------------


async def test_http_proxy_gets_connect_to_whatsapp(
    start_offline_gateway: StartGateway, tmp_path: Path
) -> None:
    store = paired_store(tmp_path / "stores" / "wa-http.db")
    async with AnsweringProxy("http") as proxy:
        harness = await start_offline_gateway(whatsapp_instance("wa-http", proxy.url, store))
        probe, dial = (await proxy.wait_for_dials(2))[:2]
        instance = await wait_for_state(harness, "wa-http", ipb.INSTANCE_STATE_DISCONNECTED)
    # The gateway's probe first, then neonize's own (Go's net/http names itself).
    for seen in (probe, dial):
        assert seen.request_line == "CONNECT web.whatsapp.com:443 HTTP/1.1"
        assert seen.headers["host"] == "web.whatsapp.com:443"
    assert "user-agent" not in probe.headers
    assert dial.headers["user-agent"].startswith("Go-http-client/")
    # The error is neonize's: its TLS handshake met the proxy hanging up.
    assert instance.last_error.startswith(DIAL_ERROR), instance.last_error
    assert 'Get "https://web.whatsapp.com/ws/chat"' in instance.last_error


async def test_socks5_proxy_gets_the_domain_name(
    start_offline_gateway: StartGateway, tmp_path: Path
) -> None:
    store = paired_store(tmp_path / "stores" / "wa-socks.db")
    async with AnsweringProxy("socks5") as proxy:
        harness = await start_offline_gateway(whatsapp_instance("wa-socks", proxy.url, store))
        dials = (await proxy.wait_for_dials(2))[:2]
        instance = await wait_for_state(harness, "wa-socks", ipb.INSTANCE_STATE_DISCONNECTED)
    # The gateway's probe, then neonize's dial: both let the proxy resolve the name.
    for dial in dials:
        version, methods, *offered = dial.head
        assert version == 5
        assert len(offered) == methods
        assert 0 in offered, "no-authentication offered"
        assert dial.command == 1, "CONNECT"
        assert dial.address_type == 3, "a domain name, for the proxy to resolve"
        assert (dial.host, dial.port) == ("web.whatsapp.com", 443)
    assert instance.last_error.startswith(DIAL_ERROR), instance.last_error
    assert 'Get "https://web.whatsapp.com/ws/chat"' in instance.last_error, "not neonize's"


# -- 6. shutdown ------------------------------------------------------------------------------


async def test_close_with_failing_dials_is_quick(
    start_offline_gateway: StartGateway, tmp_path: Path
) -> None:
    # A long backoff: close must cancel the wait for the next dial, not sit it out.
    harness = await start_offline_gateway(
        whatsapp_instance(
            "wa-close-socks", CLOSED_SOCKS, store_with_device(tmp_path / "s" / "socks.db")
        ),
        whatsapp_instance(
            "wa-close-http", CLOSED_HTTP, store_with_device(tmp_path / "s" / "http.db")
        ),
        reconnect_initial_seconds=30,
        reconnect_max_seconds=30,
    )
    for name in ("wa-close-socks", "wa-close-http"):
        await wait_for_state(harness, name, ipb.INSTANCE_STATE_DISCONNECTED)

    started = time.monotonic()
    await asyncio.wait_for(harness.gateway.close(), 5)
    assert time.monotonic() - started < 2

    await wait_until(
        lambda: not _connection_threads("wa-close-socks", "wa-close-http"),
        1,
        "the connection threads to end",
    )
    for name in ("wa-close-socks", "wa-close-http"):
        instance = harness.gateway.instances.get(name)
        assert instance is not None
        assert instance.session.status().state is not SessionState.CONNECTED


async def test_close_during_a_dial_returns_in_time(
    start_offline_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A dial stuck on a proxy that never finishes must not hold shutdown (a dialing link is
    not stopped at all, ``link``; its thread is a daemon)."""
    monkeypatch.setattr(whatsapp_link, "STOP_TIMEOUT", 0.5)
    store = paired_store(tmp_path / "stores" / "wa-stuck.db")
    async with AnsweringProxy("http", hold=True) as proxy:
        harness = await start_offline_gateway(whatsapp_instance("wa-stuck", proxy.url, store))
        # The probe's CONNECT is answered; neonize's is answered and then held, mid-TLS.
        await proxy.wait_for_dials(2)
        stuck = _connection_threads("wa-stuck")
        assert [t.name for t in stuck] == ["whatsapp-wa-stuck#1"]
        assert all(t.daemon for t in stuck), "a stuck dial must not keep the process alive"

        started = time.monotonic()
        try:
            await asyncio.wait_for(harness.gateway.close(), 3)
        except asyncio.CancelledError:
            pytest.fail("gateway.close() raised CancelledError during a dial")
        except TimeoutError:
            pytest.fail("gateway.close() did not return within 3 s of a stuck dial")
        assert time.monotonic() - started < 2

        proxy.release()  # the dial fails now, and the connection's thread ends
        await wait_until(lambda: not stuck[0].is_alive(), 3, "the released dial's thread to end")


async def test_a_second_close_after_a_given_up_dial_returns(
    start_offline_gateway: StartGateway, tmp_path: Path
) -> None:
    """close() gives a dialing link up; once its dial has failed, closing again is a no-op."""
    store = paired_store(tmp_path / "stores" / "wa-twice.db")
    async with AnsweringProxy("http", hold=True) as proxy:
        harness = await start_offline_gateway(whatsapp_instance("wa-twice", proxy.url, store))
        await proxy.wait_for_dials(2)
        stuck = _connection_threads("wa-twice")
        assert len(stuck) == 1
        await asyncio.wait_for(harness.gateway.close(), 3)
        proxy.release()
        await wait_until(lambda: not stuck[0].is_alive(), 3, "the released dial's thread to end")
    await asyncio.wait_for(harness.gateway.close(), 3)


async def test_close_stops_a_live_connection(tmp_path: Path) -> None:
    """Closing a connected session ends its connection (neonize's Stop) and returns normally."""
    standin = StandInFFI(latency=0)
    ffi = RecordingFFI(standin)
    blocking = BlockingCalls(2)
    session = standin_session("live", ffi, tmp_path, blocking)
    await session.start()
    try:
        await wait_until(lambda: session.connected, 3, "the stand-in session to connect")
        connection = _connection_threads("live")
        assert [t.name for t in connection] == ["whatsapp-live#1"]
        try:
            await asyncio.wait_for(session.close(), 3)
        except asyncio.CancelledError:
            pytest.fail(
                "WhatsAppSession.close() raised CancelledError and never called ffi.stop "
                f"(stop calls: {ffi.stopped})"
            )
        assert ffi.stopped == [b"live#1"]
        await wait_until(lambda: not connection[0].is_alive(), 2, "the connection's thread to end")
    finally:
        standin.shutdown()  # lets the stand-in's connection end if close did not
        blocking.shutdown()
    assert not standin.runtime.fatal, standin.runtime.fatal
