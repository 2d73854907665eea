"""The WhatsApp kind of session, through gRPC, with the stand-in playing WhatsApp.

``StandInFFI`` models neonize's exports and whatsmeow from their source, so these tests drive
``WhatsAppSession``'s real code path: the supervisor and its backoff, the link threads and their
callbacks, the stanza threads, pairing. Every event a test sees comes from the stand-in's own
behaviour (the Device event with the JID on every connect, PairStatus on a scan, Disconnected on
a drop); the shared harness (a gateway with WhatsApp instances on a loopback port, started like
``serve`` starts it) is ``tests.helpers.whatsapp_harness``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import grpc
import pytest

from service.grpc import convert
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.simulated import DEFAULT_SETTINGS
from service.sessions.whatsapp.ffi import Dial, LinkCallbacks
from service.sessions.whatsapp.link import Link, Phase
from service.sessions.whatsapp.session import WhatsAppSession
from service.sessions.whatsapp.standin import Fault, StandInFFI, Timing
from service.settings import Field, Settings, by_category
from tests.helpers.neonize_offline import wait_until
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    DISCONNECTED,
    JID,
    LOGGED_OUT,
    NOT_PAIRED,
    PAIRING,
    PHONE,
    TIMEOUT,
    StartWhatsApp,
    WaGateway,
    drain,
    error_reason,
    pair_event,
    paired,
    rpc_error,
)

#: Another account's JID, to tell the JID the stand-in's Device event carries from a constant.
OTHER_JID = "5511888888888@s.whatsapp.net"


def settings_on_whatsapp(ffi: StandInFFI, name: str) -> Settings:
    """What WhatsApp holds for ``name``'s device (its strings per category), as ``Settings``."""
    raw = ffi.device(name).raw_settings
    return Settings({by_category(category).field: value for category, value in raw.items()})


def session_of(wa: WaGateway, name: str) -> WhatsAppSession:
    served = wa.gateway.instances.get(name)
    assert served is not None
    assert isinstance(served.session, WhatsAppSession)
    return served.session


class CountingFFI(StandInFFI):
    """A stand-in that records when each ``Neonize`` call began and which ones returned."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.dials: list[float] = []
        self.returned: list[bytes] = []

    def connect(self, dial: Dial, callbacks: LinkCallbacks) -> str:
        self.dials.append(time.monotonic())
        result = super().connect(dial, callbacks)
        self.returned.append(dial.session_id)
        return result


# -- a linked account -------------------------------------------------------------------------


async def test_a_linked_account_comes_up_connected(start_whatsapp: StartWhatsApp) -> None:
    wa = await start_whatsapp(paired("wa"), "wa")

    instance = await wa.wait_state("wa", CONNECTED)

    session_of(wa, "wa")
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
    # The JID shown is the one neonize's Device event carries (the stand-in sends it on every
    # connect, from the store's device), not one the gateway knew beforehand.
    ffi = StandInFFI()
    ffi.link_account("wa", OTHER_JID)
    wa = await start_whatsapp(ffi, "wa")
    await wa.wait_state("wa", CONNECTED)

    deadline = time.monotonic() + TIMEOUT
    while (instance := await wa.instance("wa")).jid != OTHER_JID:
        assert time.monotonic() < deadline, f"the jid is still {instance.jid!r}"
        await asyncio.sleep(0.01)
    assert instance.state == CONNECTED


async def test_an_update_costs_the_first_fetch_and_one_stanza_per_changed_field(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", latency=0.0), "wa")
    await wa.wait_state("wa", CONNECTED)
    # The session reads the settings after each Connected: the fetch may already be out.
    assert wa.ffi.stanzas <= 1

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
    assert settings_on_whatsapp(wa.ffi, "wa") == expected

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
    wa.ffi.arrange(
        "wa", Fault(kind="status", category="readreceipts", status=403, text="forbidden")
    )

    error = await rpc_error(wa.update("wa", last_seen="none", read_receipts="none"))

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == (
        "failed to update readReceipts privacy: info query returned status 403: forbidden"
    )
    assert error_reason(error) == "STANZA_FAILED"
    # The field before the refused one stays applied; the refused one does not.
    expected = Settings({**DEFAULT_SETTINGS, Field.LAST_SEEN: "none"})
    assert settings_on_whatsapp(wa.ffi, "wa") == expected
    assert await wa.get("wa") == expected
    assert wa.ffi.stanzas == 3  # the fetch, last_seen, and the refused read_receipts


async def test_a_dropped_connection_is_disconnected_and_refuses_updates_until_it_is_back(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", latency=0.0), "wa")
    await wa.wait_state("wa", CONNECTED)
    await wa.get("wa")
    sent = wa.ffi.stanzas

    wa.ffi.drop("wa")  # and it stays down until ``reconnect``

    dropped = await wa.wait_state("wa", DISCONNECTED)
    assert dropped.last_error == "connection lost; whatsmeow is reconnecting"
    error = await rpc_error(wa.update("wa", last_seen="none"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Instance is not connected to WhatsApp"
    assert error_reason(error) == "INSTANCE_NOT_CONNECTED"
    assert wa.ffi.stanzas == sent
    assert settings_on_whatsapp(wa.ffi, "wa") == DEFAULT_SETTINGS

    wa.ffi.reconnect("wa")

    back = await wa.wait_state("wa", CONNECTED)
    assert back.last_error == ""
    response = await wa.update("wa", last_seen="none")
    assert [u.state for u in response.fields] == [pb.FIELD_STATE_APPLIED]
    # The same whatsmeow client reconnected: its cache answers the re-read, one set is sent.
    assert wa.ffi.stanzas == sent + 1


async def test_whatsmeow_reconnecting_by_itself_brings_the_instance_back(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", latency=0.0), "wa")
    await wa.wait_state("wa", CONNECTED)
    connects = wa.ffi.connects

    wa.ffi.drop("wa", reconnect_after=0.1)  # whatsmeow's own auto-reconnect

    await wa.wait_state("wa", DISCONNECTED)
    back = await wa.wait_state("wa", CONNECTED)
    assert back.last_error == ""
    assert back.jid == JID
    assert wa.ffi.connects == connects, "the same Neonize call: no new dial"


async def test_a_device_removed_on_the_phone_is_logged_out_and_can_be_paired_again(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(
        paired("wa", timing=Timing(latency=0.05, qr_lifetimes=(0.5, 0.5))), "wa"
    )
    await wa.wait_state("wa", CONNECTED)

    wa.ffi.log_out("wa")

    logged_out = await wa.wait_state("wa", LOGGED_OUT)
    assert logged_out.last_error == "logged out from the phone: pair again"
    assert logged_out.jid == ""
    error = await rpc_error(wa.update("wa", last_seen="none"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    call = wa.pair("wa")
    first = await asyncio.wait_for(call.read(), TIMEOUT)
    assert pair_event(first) == ("qr_code", "2@standin-qr-0")
    wa.ffi.scan("wa", JID)
    rest, failure = await drain(call)
    assert failure is None
    assert [pair_event(m) for m in rest] == [("jid", JID)]
    relinked = await wa.wait_state("wa", CONNECTED)
    assert relinked.jid == JID


async def test_a_logged_out_instance_stays_logged_out_until_it_is_paired_again(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa"), "wa")
    await wa.wait_state("wa", CONNECTED)
    wa.ffi.log_out("wa")
    await wa.wait_state("wa", LOGGED_OUT)

    await asyncio.sleep(0.3)  # the logged-out link has long returned

    instance = await wa.instance("wa")
    assert (instance.state, instance.last_error) == (
        LOGGED_OUT,
        "logged out from the phone: pair again",
    ), f"{instance.state} {instance.last_error!r}"


async def test_closing_the_gateway_ends_every_whatsapp_connection(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = CountingFFI()
    for name in ("wa", "wb"):
        ffi.link_account(name, JID)
    wa = await start_whatsapp(ffi, "wa", "wb")
    await wa.wait_state("wa", CONNECTED)
    await wa.wait_state("wb", CONNECTED)
    links: dict[str, Link] = {}
    for name in ("wa", "wb"):
        link = session_of(wa, name)._link
        assert link is not None, f"{name} has no connection"
        links[name] = link
    await wa.server.stop(None)

    try:
        await asyncio.wait_for(wa.gateway.close(), TIMEOUT)
    except asyncio.CancelledError:
        pytest.fail("Gateway.close() raised CancelledError instead of closing the sessions")

    for name, link in links.items():
        assert ffi.client(name).stopped.is_set(), f"{name}'s connection was never stopped"
        assert link.phase is Phase.RETURNED, f"{name}'s Neonize call has not returned"
        assert link.result == ""
        assert link.session_id in ffi.returned, f"{name}'s Neonize call has not returned"


# -- pairing ----------------------------------------------------------------------------------


async def test_an_unpaired_account_is_not_paired_after_start(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(StandInFFI(), "wa")

    instance = await wa.wait_state("wa", NOT_PAIRED)

    assert instance.jid == ""
    # A store without the instance's device is never dialled until PairInstance asks.
    assert wa.ffi.connects == 0
    error = await rpc_error(wa.update("wa", last_seen="none"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Instance is not connected to WhatsApp"
    assert wa.ffi.connects == 0


async def test_pairing_streams_qr_codes_until_scanned_then_the_jid(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(
        StandInFFI(timing=Timing(latency=0.05, qr_lifetimes=(0.5, 0.5))), "wa"
    )
    await wa.wait_state("wa", NOT_PAIRED)

    call = wa.pair("wa")
    first = await asyncio.wait_for(call.read(), TIMEOUT)
    assert (await wa.instance("wa")).state == PAIRING
    second = await asyncio.wait_for(call.read(), TIMEOUT)
    wa.ffi.scan("wa", JID)
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
    assert wa.ffi.device("wa").raw_settings["last"] == "none"


async def test_pairing_with_a_phone_streams_one_pairing_code_then_the_jid(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(
        StandInFFI(timing=Timing(latency=0.05, qr_lifetimes=(0.2, 0.2))), "wa"
    )
    await wa.wait_state("wa", NOT_PAIRED)

    call = wa.pair("wa", phone=PHONE)
    first = await asyncio.wait_for(call.read(), TIMEOUT)
    assert pair_event(first) == ("pairing_code", "GATE-WAY1")
    # Let WhatsApp rotate a QR code or two: none of them reaches a caller pairing by phone.
    await asyncio.sleep(0.5)
    wa.ffi.scan("wa", JID)
    rest, failure = await drain(call)

    assert failure is None
    assert [pair_event(m) for m in rest] == [("jid", JID)]
    assert (await wa.wait_state("wa", CONNECTED)).jid == JID


@pytest.mark.parametrize("phone", ["0123", "abc", "123456", "+5511999999999", "55 11 9999 9999"])
async def test_an_invalid_phone_is_invalid_argument_and_changes_nothing(
    start_whatsapp: StartWhatsApp, phone: str
) -> None:
    ffi = StandInFFI()
    wa = await start_whatsapp(ffi, "wa")
    before = await wa.wait_state("wa", NOT_PAIRED)
    connects = ffi.connects

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
    assert ffi.connects == connects, "no connection was attempted"


async def test_pairing_that_nobody_scans_ends_with_deadline_exceeded(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(
        StandInFFI(timing=Timing(latency=0.05, qr_lifetimes=(0.05, 0.05))), "wa"
    )
    await wa.wait_state("wa", NOT_PAIRED)

    messages, error = await drain(wa.pair("wa"))

    # whatsmeow shows six codes (qrchan.go:90-93), then ends the QR loop with ``timeout``.
    assert [pair_event(m) for m in messages] == [
        ("qr_code", f"2@standin-qr-{index}") for index in range(6)
    ]
    assert error is not None
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == "Pairing failed: no QR code was scanned in time"
    assert error_reason(error) == "PAIRING_TIMED_OUT"
    instance = await wa.wait_state("wa", NOT_PAIRED)
    assert instance.last_error == "pairing ended: timeout"


async def test_pairing_a_connected_instance_is_failed_precondition(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa"), "wa")
    await wa.wait_state("wa", CONNECTED)
    deadline = time.monotonic() + TIMEOUT
    while (await wa.instance("wa")).jid != JID:  # the Device event of the connection
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    connects = wa.ffi.connects

    messages, error = await drain(wa.pair("wa"))

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"Pairing failed: already paired as {JID}"
    assert (await wa.instance("wa")).state == CONNECTED
    assert wa.ffi.connects == connects


async def test_pairing_a_linked_instance_whose_connection_dropped_is_refused_at_once(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa"), "wa")
    await wa.wait_state("wa", CONNECTED)
    wa.ffi.drop("wa")  # it stays down
    await wa.wait_state("wa", DISCONNECTED)
    connects = wa.ffi.connects

    # The device is linked: WhatsApp will show no QR code for it, whatever happens next, so
    # the pairing is refused at once rather than left waiting.
    started = time.monotonic()
    call = wa.instances.PairInstance(
        instance_pb.PairInstanceRequest(instance="wa"), metadata=wa.metadata(), timeout=3.0
    )
    messages, error = await drain(call)
    elapsed = time.monotonic() - started

    assert messages == []
    assert error is not None, "a linked device cannot be paired again"
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (
        f"PairInstance ended with {error.code().name}: {error.details()}"
    )
    assert error.details() == f"Pairing failed: already paired as {JID}"
    assert elapsed < 1.0, f"PairInstance took {elapsed:.2f} s to refuse"
    assert wa.ffi.connects == connects, "the refused pairing dialled nothing"
    assert (await wa.instance("wa")).state == DISCONNECTED

    # The connection comes back (whatsmeow reconnects on its own), the device as it was.
    wa.ffi.reconnect("wa")

    assert (await wa.wait_state("wa", CONNECTED)).jid == JID


async def test_a_second_concurrent_pairing_is_failed_precondition(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(
        StandInFFI(timing=Timing(latency=0.05, qr_lifetimes=(0.5, 0.5))), "wa"
    )
    await wa.wait_state("wa", NOT_PAIRED)
    first = wa.pair("wa")
    assert pair_event(await asyncio.wait_for(first.read(), TIMEOUT))[0] == "qr_code"

    messages, error = await drain(wa.pair("wa"))

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Pairing failed: a pairing is already in progress"
    # The first pairing is unharmed.
    wa.ffi.scan("wa", JID)
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
    # Unpaired: nothing is dialled (so the dial error is not met) until PairInstance asks.
    before = await wa.wait_state("wa", NOT_PAIRED)
    assert before.last_error == ""
    assert wa.ffi.connects == 0

    started = time.monotonic()
    messages, error = await drain(wa.pair("wa"))
    elapsed = time.monotonic() - started

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == f"Pairing failed: WhatsApp cannot be reached: {dial_error}"
    assert elapsed < 2.0, f"PairInstance took {elapsed:.2f} s to report the dial error"
    assert wa.ffi.connects == 1
    after = await wa.instance("wa")
    assert (after.state, after.last_error) == (DISCONNECTED, dial_error)
    # The failed call's entries in neonize's maps are deleted (only Stop does, main.go:586-605).
    maps = wa.ffi.maps
    # (A Stop waits out the guard's read window first: seconds, on a busy machine.)
    await wait_until(
        lambda: not (maps.clients or maps.stop_signals or maps.event_channels),
        10,
        "the failed call's map entries deleted",
    )
    assert (maps.clients, maps.stop_signals, maps.event_channels) == ({}, {}, {})


async def test_the_supervisor_retries_a_failing_dial_with_capped_backoff(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = CountingFFI(dial_error="dial tcp 157.240.0.53:443: connect: connection refused")
    ffi.link_account("wa", JID)
    wa = await start_whatsapp(ffi, "wa", reconnect_initial_seconds=0.05, reconnect_max_seconds=0.2)

    await asyncio.sleep(1.0)  # the window in which attempts are counted
    dials = list(ffi.dials)

    # Delays 0.05, 0.1, 0.2, 0.2, ...: attempts near 0, 0.05, 0.15, 0.35, 0.55, 0.75, 0.95 s.
    assert 4 <= len(dials) <= 12, f"{len(dials)} attempts in 1 s"
    assert ffi.connects == len(dials)
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    assert min(gaps) >= 0.04, f"retried without backoff: {gaps}"
    assert gaps[0] < 0.1 < gaps[-1], f"the delay did not grow: {gaps}"
    assert max(gaps) < 0.35, f"the delay exceeded its cap: {gaps}"
    # Between retries it is DISCONNECTED; a read may land in a retry's dial (CONNECTING).
    instance = await wa.wait_state("wa", DISCONNECTED, within=1.0)
    assert instance.last_error == ffi.dial_error

    ffi.dial_error = ""

    assert (await wa.wait_state("wa", CONNECTED, within=1.0)).last_error == ""
