"""WhatsApp sessions on the real neonize library, with no network at all.

Every WhatsApp instance here dials through a proxy on 127.0.0.1: a closed port, or a recording
proxy from ``tests.loopback_proxy`` that forwards nothing. So the Go library never resolves or
reaches WhatsApp, yet everything up to the dial is the real thing: the gateway, the supervisor,
the FFI calls, the error strings whatsmeow gives, and the replies neonize serializes.

A few checks run in a child process. neonize can crash the whole process (a Go fault is not an
exception), and a crash must show up as one failing test, not as the end of the test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from neonize.proto import Neonize_pb2 as npb

from service.gateway import Gateway
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as ipb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as ipb_grpc
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.whatsapp import codec
from service.sessions.whatsapp import session as whatsapp
from service.sessions.base import SessionError, SessionState
from service.sessions.whatsapp.threads import BlockingCalls
from service.sessions.whatsapp.ffi import LinkCallbacks, NeonizeFFI
from service.sessions.whatsapp.standin import StandInFFI
from service.sessions.whatsapp.session import Backoff, WhatsAppSession
from service.settings import FIELDS, Field, Settings
from tests.conftest import ACME_TOKEN, GatewayFactory, Harness, gateway_config, visibility
from tests.loopback_proxy import RecordingProxy

CLOSED_SOCKS = "socks5://127.0.0.1:1"
CLOSED_HTTP = "http://127.0.0.1:1"
DIAL_ERROR = "failed to dial whatsapp web websocket"
NOT_CONNECTED = "Instance is not connected to WhatsApp"
METADATA = (("token", ACME_TOKEN),)
ROOT = Path(__file__).resolve().parent.parent

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


def whatsapp_instance(name: str, proxy: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "account": "acme", "session": "whatsapp", "proxy": proxy, **extra}


StartGateway = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start_gateway(make_gateway: GatewayFactory, tmp_path: Path) -> AsyncIterator[Any]:
    """Starts a gateway with the conftest's simulated instances plus the given WhatsApp ones.

    Sessions are started (conftest's fixture only builds them) and closed at the end; leftover
    connection threads are waited for while the event loop still runs, since they report to it.
    """
    started: list[Gateway] = []
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
        harness: Harness = await make_gateway(**config)  # built and started
        started.append(harness.gateway)
        return harness

    yield start
    for gateway in started:
        await _close_for_teardown(gateway)
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


def _connection_threads(*instances: str) -> list[threading.Thread]:
    """The live connection threads (``whatsapp-<instance>``) of these instances."""
    names = {f"whatsapp-{name}" for name in instances}
    return [t for t in threading.enumerate() if t.name in names]


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


async def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        # Polls rather than blocks: what is awaited may need this loop (a proxy, a callback).
        await asyncio.sleep(0.01)


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


async def test_failed_dial_leaves_the_gateway_serving(start_gateway: StartGateway) -> None:
    harness = await start_gateway(whatsapp_instance("wa", CLOSED_SOCKS))

    instance = await wait_for_state(harness, "wa", ipb.INSTANCE_STATE_DISCONNECTED)
    assert instance.kind == ipb.SESSION_KIND_WHATSAPP
    assert DIAL_ERROR in instance.last_error
    assert "127.0.0.1:1" in instance.last_error
    assert "connection refused" in instance.last_error
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
    assert DIAL_ERROR in again.last_error
    assert (await harness.get()).get(Field.LAST_SEEN) == "none"


# -- 2. neonize's replies, parsed ------------------------------------------------------------


def _no_op_callbacks() -> LinkCallbacks:
    return LinkCallbacks(
        on_qr=lambda _code: None,
        on_login_status=lambda _status: None,
        on_event=lambda _code, _payload: None,
        on_log=lambda _entry: None,
    )


def _connect_in_thread(
    ffi: NeonizeFFI, session_id: bytes, store: Path, proxy: str, timeout: float = 3.0
) -> str:
    """Runs ``connect`` on a thread as the gateway does; its result, which must come in time."""
    result: list[str] = []
    thread = threading.Thread(
        target=lambda: result.append(
            ffi.connect(session_id, str(store), proxy, _no_op_callbacks())
        ),
        name="test-connect",
        daemon=True,
    )
    started = time.monotonic()
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"connect did not return within {timeout} s"
    assert time.monotonic() - started < timeout
    return result[0]


def test_replies_of_a_session_that_never_connected() -> None:
    ffi = NeonizeFFI()

    with pytest.raises(SessionError) as refused:
        codec.parse_set_reply(ffi.set_privacy_setting(b"never-connected", "last", "none"))
    assert refused.value.reason == "client is nil"
    assert refused.value.connection_lost is True

    assert codec.parse_settings(ffi.get_privacy_settings(b"never-connected")) is None
    raw = npb.PrivacySettings.FromString(ffi.get_privacy_settings(b"never-connected"))
    assert all(
        getattr(raw, name) == npb.PrivacySettings.UNDEFINED for name in NEONIZE_FIELD.values()
    )


def test_set_after_a_failed_dial_is_not_connected(tmp_path: Path) -> None:
    ffi = NeonizeFFI()
    session_id = b"ffi-failed-dial"
    try:
        error = _connect_in_thread(ffi, session_id, tmp_path / "ffi.db", CLOSED_SOCKS)
        assert error.startswith(DIAL_ERROR), error
        assert "socks connect tcp 127.0.0.1:1->web.whatsapp.com:443" in error
        assert error.endswith("connect: connection refused"), error

        with pytest.raises(SessionError) as refused:
            codec.parse_set_reply(ffi.set_privacy_setting(session_id, "last", "none"))
        assert refused.value.reason == "websocket not connected"
        assert refused.value.connection_lost is True

        # The same over HTTP: the proxy's own error, and again nothing sent.
        error = _connect_in_thread(ffi, session_id, tmp_path / "ffi.db", CLOSED_HTTP)
        assert error.startswith(DIAL_ERROR), error
        assert "proxyconnect tcp: dial tcp 127.0.0.1:1: connect: connection refused" in error
    finally:
        ffi.stop(session_id)
    # Stopped, the client is gone from neonize's map.
    with pytest.raises(SessionError, match=r"^client is nil$"):
        codec.parse_set_reply(ffi.set_privacy_setting(session_id, "last", "none"))


def _run_probe(probe: str, *args: str) -> list[dict[str, Any]]:
    """Runs ``probe`` (a function of this module) in a child process; the steps it reported.

    A child that dies (a Go SIGSEGV or fatal error) fails the test with the start of its stderr.
    """
    code = f"import sys; from tests.test_whatsapp_offline import {probe}; {probe}(*sys.argv[1:])"
    child = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    steps = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0:
        stderr = "\n".join(child.stderr.splitlines()[:12])
        pytest.fail(
            f"the child process died (exit status {child.returncode}) after the steps {steps}; "
            f"stderr begins:\n{stderr}"
        )
    return steps


def _report(step: str, **data: Any) -> None:
    print(json.dumps({"step": step, **data}), flush=True)


def probe_get_after_failed_dial(store: str) -> None:
    """Child process: GetPrivacySettings on a client whose dial failed."""
    ffi = NeonizeFFI()
    session_id = b"probe-get"
    result = ffi.connect(session_id, store, CLOSED_SOCKS, _no_op_callbacks())
    _report("connected", result=result)
    reply = ffi.get_privacy_settings(session_id)
    _report("read", unknown=codec.parse_settings(reply) is None)
    ffi.stop(session_id)
    _report("stopped")


def test_settings_after_a_failed_dial_are_unknown(tmp_path: Path) -> None:
    steps = _run_probe("probe_get_after_failed_dial", str(tmp_path / "probe.db"))
    assert [s["step"] for s in steps] == ["connected", "read", "stopped"]
    assert steps[0]["result"].startswith(DIAL_ERROR)
    assert steps[1]["unknown"] is True


def probe_read_settings_of_a_disconnected_session(store: str) -> None:
    """Child process: ``WhatsAppSession.read_settings`` while its dial keeps failing."""

    async def main() -> None:
        blocking = BlockingCalls(2)
        session = WhatsAppSession(
            "probe-read",
            NeonizeFFI(),
            store=store,
            proxy=CLOSED_SOCKS,
            blocking=blocking,
            backoff=Backoff(30, 30),
        )
        await session.start()
        await wait_until(
            lambda: session.status().state is SessionState.DISCONNECTED, 5, "a failed dial"
        )
        _report("disconnected", error=session.status().last_error)
        try:
            settings = await session.read_settings()
        except SessionError as exc:
            _report("read", raised=True, reason=exc.reason, lost=exc.connection_lost)
        else:
            _report("read", raised=False, settings=repr(settings))
        await session.close()
        blocking.shutdown()
        _report("closed")

    asyncio.run(main())


def test_read_settings_of_a_disconnected_session_raises(tmp_path: Path) -> None:
    steps = _run_probe("probe_read_settings_of_a_disconnected_session", str(tmp_path / "s.db"))
    assert [s["step"] for s in steps] == ["disconnected", "read", "closed"]
    assert DIAL_ERROR in steps[0]["error"]
    read = steps[1]
    assert read["raised"] is True, f"read_settings returned {read.get('settings')}"
    assert read["lost"] is True


# -- 3. the strings that go to whatsmeow -----------------------------------------------------


class RecordingFFI:
    """A ``WhatsAppFFI`` that records every set before handing it to the stand-in."""

    def __init__(self, inner: StandInFFI) -> None:
        self.inner = inner
        self.sent: list[tuple[str, str]] = []
        self.stopped: list[bytes] = []

    def connect(self, session_id: bytes, store: str, proxy: str | None, callbacks: Any) -> str:
        return self.inner.connect(session_id, store, proxy, callbacks)

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


async def test_the_session_sends_whatsmeows_strings(tmp_path: Path) -> None:
    standin = StandInFFI(latency=0)
    standin.account(b"name").jid = "1@s.whatsapp.net"
    ffi = RecordingFFI(standin)
    blocking = BlockingCalls(2)
    session = WhatsAppSession(
        "name", ffi, store=str(tmp_path / "name.db"), proxy=CLOSED_SOCKS, blocking=blocking
    )
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
        standin.stop(b"name")
        blocking.shutdown()

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

    # One field unknown means the settings are unknown, never a partial snapshot.
    for field in Field:
        partial = _neonize_message({f: v for f, v in base.items() if f is not field})
        setattr(partial, NEONIZE_FIELD[field], npb.PrivacySettings.UNDEFINED)
        assert codec.settings_from_neonize(partial) is None, field
    # A value neonize's enum knows but the field does not take (calladd: contacts) is unknown too.
    odd = _neonize_message({**base, Field.CALL_ADD: "contacts"})
    assert codec.settings_from_neonize(odd) is None


# -- 4. pairing with no network ----------------------------------------------------------------


async def test_pair_without_network_fails_fast(start_gateway: StartGateway) -> None:
    harness = await start_gateway(whatsapp_instance("wa-pair", CLOSED_SOCKS))
    await wait_for_state(harness, "wa-pair", ipb.INSTANCE_STATE_DISCONNECTED)

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

    instance = await wait_for_state(harness, "wa-pair", ipb.INSTANCE_STATE_DISCONNECTED)
    assert DIAL_ERROR in instance.last_error


async def test_failed_pairing_returns_to_the_backoff(start_gateway: StartGateway) -> None:
    """After PairInstance fails, nobody is pairing: no dial as PAIRING, none before the backoff."""
    async with RecordingProxy("http") as proxy:
        harness = await start_gateway(
            whatsapp_instance("wa-backoff", proxy.url), reconnect_initial_seconds=30
        )
        await wait_for_state(harness, "wa-backoff", ipb.INSTANCE_STATE_DISCONNECTED)
        assert len(proxy.dials) == 1

        _, error = await stream_outcome(
            instance_stub(harness).PairInstance(
                ipb.PairInstanceRequest(instance="wa-backoff"), metadata=METADATA, timeout=10
            )
        )
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert len(proxy.dials) == 2, "pairing dials once"

        session = harness.gateway.instances.get("wa-backoff")
        assert session is not None
        states = set()
        for _ in range(30):
            states.add(session.session.status().state)
            await asyncio.sleep(0.01)
        assert SessionState.PAIRING not in states, "PAIRING after the pairing call had ended"
        assert len(proxy.dials) == 2, (
            f"{len(proxy.dials)} dials: the session dialed again at once after the failed "
            "pairing instead of waiting out its 30 s backoff"
        )


# -- 5. the proxy is used, and resolves the name ---------------------------------------------


async def test_http_proxy_gets_connect_to_whatsapp(start_gateway: StartGateway) -> None:
    async with RecordingProxy("http") as proxy:
        await start_gateway(whatsapp_instance("wa-http", proxy.url))
        dial = (await proxy.wait_for_dials(1))[0]
    assert dial.request_line == "CONNECT web.whatsapp.com:443 HTTP/1.1"
    assert dial.headers["host"] == "web.whatsapp.com:443"


async def test_socks5_proxy_gets_the_domain_name(start_gateway: StartGateway) -> None:
    async with RecordingProxy("socks5") as proxy:
        await start_gateway(whatsapp_instance("wa-socks", proxy.url))
        dial = (await proxy.wait_for_dials(1))[0]
    version, methods, *offered = dial.head
    assert version == 5
    assert len(offered) == methods
    assert 0 in offered, "no-authentication offered"
    assert dial.command == 1, "CONNECT"
    assert dial.address_type == 3, "a domain name, for the proxy to resolve"
    assert (dial.host, dial.port) == ("web.whatsapp.com", 443)


# -- 6. shutdown ------------------------------------------------------------------------------


async def test_close_with_failing_dials_is_quick(start_gateway: StartGateway) -> None:
    # A long backoff: close must cancel the wait for the next dial, not sit it out.
    harness = await start_gateway(
        whatsapp_instance("wa-close-socks", CLOSED_SOCKS),
        whatsapp_instance("wa-close-http", CLOSED_HTTP),
        reconnect_initial_seconds=30,
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
    start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dial stuck on a proxy that never answers must not hold shutdown past STOP_TIMEOUT."""
    monkeypatch.setattr(whatsapp, "STOP_TIMEOUT", 0.5)
    async with RecordingProxy("http", hold=True) as proxy:
        harness = await start_gateway(whatsapp_instance("wa-stuck", proxy.url))
        await proxy.wait_for_dials(1)
        stuck = _connection_threads("wa-stuck")
        assert [t.name for t in stuck] == ["whatsapp-wa-stuck"]
        assert all(t.daemon for t in stuck), "a stuck dial must not keep the process alive"

        started = time.monotonic()
        try:
            await asyncio.wait_for(harness.gateway.close(), 3)
        except asyncio.CancelledError:
            pytest.fail(
                "gateway.close() raised CancelledError during a dial: it cancels the supervisor "
                "first, which cancels link.returned, so Link.stop skips ffi.stop and re-raises"
            )
        except TimeoutError:
            pytest.fail("gateway.close() did not return within 3 s of a stuck dial")
        assert time.monotonic() - started < 2

        proxy.release()  # the dial fails now, and the connection's thread ends
        await wait_until(lambda: not stuck[0].is_alive(), 3, "the released dial's thread to end")


async def test_close_stops_a_live_connection(tmp_path: Path) -> None:
    """Closing a connected session ends its connection (neonize's Stop) and returns normally."""
    standin = StandInFFI(latency=0)
    standin.account(b"live").jid = "1@s.whatsapp.net"
    ffi = RecordingFFI(standin)
    blocking = BlockingCalls(2)
    session = WhatsAppSession(
        "live", ffi, store=str(tmp_path / "live.db"), proxy=CLOSED_SOCKS, blocking=blocking
    )
    await session.start()
    try:
        await wait_until(lambda: session.connected, 3, "the stand-in session to connect")
        connection = _connection_threads("live")
        assert len(connection) == 1
        try:
            await asyncio.wait_for(session.close(), 3)
        except asyncio.CancelledError:
            pytest.fail(
                "WhatsAppSession.close() raised CancelledError and never called ffi.stop "
                f"(stop calls: {ffi.stopped}): cancelling the supervisor cancels the "
                "link.returned future it awaits, so Link.stop sees it done, skips stop, and "
                "then re-raises the cancellation"
            )
        assert ffi.stopped == [b"live"]
        await wait_until(lambda: not connection[0].is_alive(), 2, "the connection's thread to end")
    finally:
        standin.stop(b"live")  # lets the stand-in's connection end if close did not
        blocking.shutdown()
