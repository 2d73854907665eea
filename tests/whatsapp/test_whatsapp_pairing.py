"""Pairing a fresh instance ends, every time, through the stand-in of neonize and whatsmeow.

What makes this hard is in the Go (see ``service.sessions.whatsapp.link``): a link stopped while
its QR loop runs never returns (qrchan.go:112-114, goneonize/main.go:1143), one whose loop ended
without a device never returns either (FetchMe, main.go:2507-2509), and a ``Stop`` in between
aborts the process (main.go:2504). So PairInstance must end with the JID, a timeout or a clear
error within its deadline without ever waiting on the link, and a second attempt must work. The
stand-in records any abort; the harness fails the test on one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_status import rpc_status
from neonize.proto import Neonize_pb2 as npb

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.sessions.whatsapp.devices import DeviceBook
from service.sessions.whatsapp.pairing import phone_error
from service.sessions.whatsapp.standin import Fault, StandInFFI, Timing
from tests.helpers.rich_status import error_info
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    JID,
    NOT_PAIRED,
    PHONE,
    StartWhatsApp,
    WaGateway,
    drain,
    pair_event,
    whatsapp_instance,
)

CLIENT_OUTDATED = instance_pb.INSTANCE_STATE_CLIENT_OUTDATED


def fresh(first: float = 0.3, later: float = 0.1) -> StandInFFI:
    return StandInFFI(timing=Timing(latency=0.0, qr_lifetimes=(first, later)))


async def first_code(call: aio.UnaryStreamCall) -> str:  # type: ignore[type-arg]
    message = await asyncio.wait_for(call.read(), 5)
    kind, value = pair_event(message)
    assert kind in ("qr_code", "pairing_code"), kind
    return str(value)


async def pair_and_scan(wa: WaGateway, phone: str = "") -> None:
    """A whole pairing that works: codes, the owner scans, the JID, then CONNECTED."""
    call = wa.pair("wa", phone=phone)
    await first_code(call)
    wa.ffi.scan("wa", JID)
    messages, error = await drain(call)
    assert error is None
    assert pair_event(messages[-1]) == ("jid", JID)
    await wa.wait_state("wa", CONNECTED)


async def test_a_fresh_instance_is_not_dialled_until_a_pairing_asks(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = fresh()
    wa = await start_whatsapp(ffi, "wa")
    await wa.wait_state("wa", NOT_PAIRED)
    await asyncio.sleep(0.2)
    assert ffi.connects == 0

    await pair_and_scan(wa)

    assert ffi.connects == 1
    assert (await wa.instance("wa")).jid == JID
    response = await wa.update("wa", last_seen="none")
    assert response.settings.visibility.last_seen


async def test_pairing_by_phone_code(start_whatsapp: StartWhatsApp) -> None:
    wa = await start_whatsapp(fresh(), "wa")
    call = wa.pair("wa", phone=PHONE)
    message = await asyncio.wait_for(call.read(), 5)
    assert pair_event(message) == ("pairing_code", "GATE-WAY1")
    wa.ffi.scan("wa", JID)
    messages, error = await drain(call)
    assert error is None
    assert pair_event(messages[-1]) == ("jid", JID)


async def test_pairing_that_nobody_scans_times_out_and_a_second_attempt_works(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(fresh(first=0.1, later=0.05), "wa")

    messages, error = await drain(wa.pair("wa"))

    assert error is not None
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == "Pairing failed: no QR code was scanned in time"
    assert [pair_event(m)[0] for m in messages] == ["qr_code"] * 6
    await wa.wait_state("wa", NOT_PAIRED)

    await pair_and_scan(wa)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (
            "err-client-outdated",
            grpc.StatusCode.FAILED_PRECONDITION,
            "WhatsApp refused this client version (client outdated): upgrade the gateway",
        ),
        (
            "err-unexpected-state",
            grpc.StatusCode.UNAVAILABLE,
            "WhatsApp ended the pairing unexpectedly (err-unexpected-state); try again",
        ),
        (
            "err-scanned-without-multidevice",
            grpc.StatusCode.FAILED_PRECONDITION,
            "the QR code was scanned by a phone without multi-device support",
        ),
        (
            "error",
            grpc.StatusCode.UNAVAILABLE,
            "the pairing handshake with WhatsApp failed; try again",
        ),
    ],
)
async def test_each_terminal_qr_status_ends_the_pairing_with_its_error(
    start_whatsapp: StartWhatsApp, status: str, code: grpc.StatusCode, message: str
) -> None:
    wa = await start_whatsapp(fresh(first=5, later=5), "wa")
    call = wa.pair("wa")
    await first_code(call)

    wa.ffi.end_qr("wa", status)
    _, error = await drain(call)

    assert error is not None
    assert error.code() == code
    assert error.details() == f"Pairing failed: {message}"
    # The link is stopped only once FetchMe has read neonize's map (no nil dereference, which
    # the stand-in would have recorded); its call never returns, and nothing waits for it.
    await asyncio.sleep(1.2)
    if status == "err-client-outdated":
        assert (await wa.instance("wa")).state == CLIENT_OUTDATED
    else:
        await wa.wait_state("wa", NOT_PAIRED)
        await pair_and_scan(wa)


async def test_a_caller_who_leaves_mid_pairing_lets_the_next_pairing_start_at_once(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(fresh(first=5, later=5), "wa")
    call = wa.pair("wa")
    await first_code(call)

    call.cancel()
    started = time.monotonic()
    await wa.wait_state("wa", NOT_PAIRED)

    await pair_and_scan(wa)
    assert time.monotonic() - started < 3
    assert wa.ffi.connects == 2, "the abandoned link was given up, a new one paired"


async def test_a_pairing_ends_within_its_callers_deadline(start_whatsapp: StartWhatsApp) -> None:
    wa = await start_whatsapp(fresh(first=5, later=5), "wa")
    started = time.monotonic()
    call = wa.instances.PairInstance(
        instance_pb.PairInstanceRequest(instance="wa"), metadata=wa.metadata(), timeout=0.5
    )
    _, error = await drain(call)

    assert error is not None
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    await wa.wait_state("wa", NOT_PAIRED)
    await pair_and_scan(wa)


async def test_a_second_concurrent_pairing_is_refused_at_once(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(fresh(first=5, later=5), "wa")
    first = wa.pair("wa")
    await first_code(first)

    _, error = await drain(wa.pair("wa"))

    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Pairing failed: a pairing is already in progress"
    wa.ffi.scan("wa", JID)
    messages, error = await drain(first)
    assert error is None
    assert pair_event(messages[-1]) == ("jid", JID)


async def test_many_concurrent_pairings_of_an_unreachable_instance_all_end(
    start_whatsapp: StartWhatsApp,
) -> None:
    """30 callers x 6 calls: each call ends, with UNAVAILABLE (it dialled and failed) or
    FAILED_PRECONDITION (another call's pairing was in progress), never by its deadline."""
    ffi = StandInFFI(dial_error="failed to dial whatsapp web websocket: no route to host")
    wa = await start_whatsapp(ffi, "wa", reconnect_initial_seconds=0.01, reconnect_max_seconds=0.02)

    async def caller() -> list[grpc.StatusCode]:
        codes = []
        for _ in range(6):
            call = wa.instances.PairInstance(
                instance_pb.PairInstanceRequest(instance="wa"), metadata=wa.metadata(), timeout=5
            )
            _, error = await drain(call)
            assert error is not None
            codes.append(error.code())
        return codes

    results = await asyncio.gather(*(caller() for _ in range(30)))
    codes = [code for result in results for code in result]
    assert len(codes) == 180
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION}
    assert grpc.StatusCode.UNAVAILABLE in codes


async def test_whatsapps_rate_limit_on_a_pairing_code_is_resource_exhausted(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = fresh(first=5, later=5)
    wa = await start_whatsapp(ffi, "wa")
    # The pairing code's IQ (pair-code.go:92-143) meets WhatsApp's 429 (errors.go:186-198).
    ffi.arrange("wa", Fault("status", category="link_code", status=429, text="rate-overlimit"))
    call = wa.pair("wa", phone=PHONE)

    _, error = await drain(call)

    assert error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == (
        "Pairing failed: WhatsApp's rate limit: info query returned status 429: rate-overlimit"
    )
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "PAIRING_RATE_LIMITED"


async def test_closing_the_gateway_mid_pairing_is_quick(start_whatsapp: StartWhatsApp) -> None:
    wa = await start_whatsapp(fresh(first=5, later=5), "wa")
    call = wa.pair("wa")
    await first_code(call)

    started = time.monotonic()
    await wa.gateway.close()

    assert time.monotonic() - started < 2
    call.cancel()


async def test_on_a_shared_postgres_store_each_instance_keeps_its_own_device(
    start_whatsapp: StartWhatsApp, tmp_path: Path, database_url: str
) -> None:
    """neonize loads a store's first device unless it is named (goneonize/main.go:634-650): on a
    PostgreSQL store shared by instances, each is named by the JID it paired as, and a pairing
    asks for a new device (``newDevice``) rather than resuming another instance's."""
    url = f"{database_url}?sslmode=disable"
    ffi = fresh(first=5, later=5)
    first = ffi.link_account("first", JID, store=url)
    DeviceBook(tmp_path / "devices.json").record("first", npb.JID(User=JID.split("@")[0],
        Server="s.whatsapp.net", RawAgent=0, Device=0, Integrator=0))  # fmt: skip
    tables = [whatsapp_instance(name, store=url) for name in ("first", "second")]
    wa = await start_whatsapp(ffi, instances=tables)
    await wa.wait_state("first", CONNECTED)
    await wa.wait_state("second", NOT_PAIRED)

    call = wa.pair("second")
    await first_code(call)
    other = "5511888888888@s.whatsapp.net"
    ffi.scan("second", other)
    messages, error = await drain(call)

    assert error is None
    assert pair_event(messages[-1]) == ("jid", other)
    await wa.wait_state("second", CONNECTED)
    assert (await wa.instance("first")).jid == JID
    assert (await wa.instance("second")).jid == other
    assert first.jid == JID, "the first instance's device was not touched"
    assert [d.jid for d in ffi.store(url).devices] == [JID, other]
    assert DeviceBook(tmp_path / "devices.json").jid("second") is not None


async def test_a_store_that_holds_the_device_is_not_paired_again_before_its_jid_is_known(
    start_whatsapp: StartWhatsApp,
) -> None:
    """The JID is known only from the first Device event; the store says it is linked before."""
    ffi = StandInFFI(dial_error="failed to dial whatsapp web websocket: no route to host")
    ffi.link_account("wa", JID)
    wa = await start_whatsapp(ffi, "wa", reconnect_initial_seconds=5, reconnect_max_seconds=5)
    await wa.wait_state("wa", instance_pb.INSTANCE_STATE_DISCONNECTED)
    connects = ffi.connects

    _, error = await drain(wa.pair("wa"))

    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Pairing failed: already paired as a linked account"
    assert ffi.connects == connects
    assert [d.jid for d in ffi.store(str(wa_store(wa))).devices] == [JID]


def wa_store(wa: WaGateway) -> Path:
    instance = wa.gateway.instances.get("wa")
    assert instance is not None
    return Path(instance.session._store)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fault", "code", "reason", "details"),
    [
        (
            Fault("timeout", category="link_code"),
            grpc.StatusCode.UNAVAILABLE,
            "PAIRING_UNAVAILABLE",
            "Pairing failed: pairing by phone failed: info query timed out",
        ),
        (
            Fault("status", category="link_code", status=429, text="rate-overlimit"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "PAIRING_RATE_LIMITED",
            "Pairing failed: WhatsApp's rate limit: info query returned status 429: rate-overlimit",
        ),
        (
            Fault("status", category="link_code", status=400, text="bad-request"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "PAIRING_REFUSED",
            "Pairing failed: pairing by phone failed: info query returned status 400: bad-request",
        ),
    ],
)
async def test_a_phone_code_whatsapp_does_not_give_ends_the_pairing_with_its_cause(
    start_whatsapp: StartWhatsApp,
    fault: Fault,
    code: grpc.StatusCode,
    reason: str,
    details: str,
) -> None:
    """PairPhone's link-code IQ (pair-code.go:92-143) lost or refused: PairInstance ends at once
    with the cause, not at its deadline."""
    ffi = StandInFFI(timing=Timing(latency=0.0, qr_lifetimes=(5.0, 5.0), iq_timeout=0.3))
    ffi.arrange("wa", fault)
    wa = await start_whatsapp(ffi, "wa")

    started = time.monotonic()
    _, error = await drain(wa.pair("wa", phone=PHONE))

    assert error is not None
    status = rpc_status.from_call(error)
    assert status is not None
    assert (error.code(), error_info(status).reason) == (code, reason)
    assert error.details() == details
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # whatsmeow's own checks (errors.go:28-29), which the gateway's phone check normally
        # makes unreachable: still the caller's number.
        ("phone number too short", "PHONE_REJECTED"),
        ("international phone number required (must not start with 0)", "PHONE_REJECTED"),
        # The connection, not the number (errors.go:22, request.go:199-202).
        ("websocket not connected", "PAIRING_UNAVAILABLE"),
        ("websocket disconnected before info query returned response", "PAIRING_UNAVAILABLE"),
        ("info query returned status 503: service-unavailable", "PAIRING_UNAVAILABLE"),
    ],
)
def test_every_pair_phone_error_is_the_callers_number_or_whatsapps_side(
    text: str, reason: str
) -> None:
    assert phone_error(text).reason == reason
