"""What becomes of a stanza whose answer did not come back with a success, through the stand-in.

A lost answer is not a refusal: whatsmeow's ``info query timed out`` and ``websocket
disconnected before info query returned response`` (request.go:180-202) leave WhatsApp possibly
holding the new value. The field is UNCONFIRMED until a re-read of WhatsApp itself says APPLIED
or FAILED; the stream, the unary reply, the journal, REST and ROLLBACK all say so. WhatsApp's own
error codes become the caller's: 429 RESOURCE_EXHAUSTED with a retry hint, 5xx UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.grpc import convert
from service.http.server import HttpServer
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.whatsapp.standin import Fault, StandInFFI, Timing
from service.settings import Field, Settings
from tests.helpers.rich_status import details, error_info, update_response
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    JID,
    StartWhatsApp,
    WaGateway,
    drain,
    rpc_error,
)

#: The gateway's own bound on one stanza in these tests (stanza_timeout_seconds).
STANZA_TIMEOUT = 0.4


def linked(**timing: Any) -> StandInFFI:
    ffi = StandInFFI(timing=Timing(latency=0.01, qr_lifetimes=(0.15, 0.05), **timing))
    ffi.link_account("wa", JID)
    return ffi


async def started(start_whatsapp: StartWhatsApp, ffi: StandInFFI) -> WaGateway:
    wa = await start_whatsapp(ffi, "wa", stanza_timeout_seconds=STANZA_TIMEOUT)
    await wa.wait_state("wa", CONNECTED)
    await wa.get("wa")  # the settings are cached: what follows costs only its own stanzas
    return wa


def stream(wa: WaGateway, policy: int = pb.FAILURE_POLICY_STOP, **values: str) -> Any:
    settings = Settings({Field(f): v for f, v in values.items()})
    return wa.privacy.StreamUpdatePrivacySettings(
        pb.StreamUpdatePrivacySettingsRequest(
            instance="wa", settings=convert.settings_to_proto(settings), failure_policy=policy
        ),
        metadata=wa.metadata(),
    )


def field_states(messages: list[Any]) -> list[tuple[str, str]]:
    out = []
    for message in messages:
        if message.WhichOneof("event") == "field":
            field = convert.field_from_proto(message.field.field).value
            out.append(
                (field, pb.FieldState.Name(message.field.state).removeprefix("FIELD_STATE_"))
            )
    return out


async def operation(wa: WaGateway, operation_id: str) -> pb.UpdateOperation:
    response = await wa.privacy.GetUpdateOperation(
        pb.GetUpdateOperationRequest(instance="wa", operation_id=operation_id),
        metadata=wa.metadata(),
    )
    return response.operation


def journaled(op: pb.UpdateOperation) -> list[tuple[str, str]]:
    return [
        (
            convert.field_from_proto(f.field).value,
            pb.FieldState.Name(f.state).removeprefix("FIELD_STATE_"),
        )
        for f in op.fields
    ]


# -- a lost answer, resolved by a re-read -----------------------------------------------------


async def test_a_stanza_that_times_out_is_unconfirmed_then_applied_by_a_re_read(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await started(start_whatsapp, ffi)
    ffi.arrange("wa", Fault("timeout", category="last", applied=True))
    connects = ffi.connects

    messages, error = await drain(stream(wa, last_seen="none", status="none"))

    assert error is None
    assert field_states(messages) == [
        ("last_seen", "STARTED"),
        ("last_seen", "UNCONFIRMED"),
        ("last_seen", "APPLIED"),
        ("status", "STARTED"),
        ("status", "APPLIED"),
    ]
    resolved = [m.field for m in messages if m.WhichOneof("event") == "field"][2]
    assert "a re-read shows none" in resolved.error
    # The re-read is a new whatsmeow client (neonize's only read is whatsmeow's cache).
    assert ffi.connects == connects + 1
    assert ffi.device("wa").raw_settings["last"] == "none"
    snapshot = convert.settings_from_proto(messages[-1].snapshot)
    assert snapshot[Field.LAST_SEEN] == "none"
    assert snapshot[Field.STATUS] == "none"
    op = await operation(wa, messages[0].plan.operation_id)
    assert pb.OperationState.Name(op.state) == "OPERATION_STATE_COMPLETED"
    assert journaled(op) == [
        ("last_seen", "UNCONFIRMED"),
        ("last_seen", "APPLIED"),
        ("status", "APPLIED"),
    ]


async def test_a_stanza_whatsapp_did_not_apply_is_failed_by_the_re_read(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await started(start_whatsapp, ffi)
    ffi.arrange("wa", Fault("timeout", category="last", applied=False))

    messages, error = await drain(stream(wa, last_seen="none", status="none"))

    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert field_states(messages) == [
        ("last_seen", "STARTED"),
        ("last_seen", "UNCONFIRMED"),
        ("last_seen", "FAILED"),
        ("status", "NOT_ATTEMPTED"),
    ]
    assert "a re-read shows all" in error.details()
    assert ffi.device("wa").raw_settings["last"] == "all"
    assert convert.settings_from_proto(messages[-1].snapshot)[Field.LAST_SEEN] == "all"


async def test_whatsmeows_own_timeout_is_unconfirmed_too(start_whatsapp: StartWhatsApp) -> None:
    """``info query timed out`` (errors.go:21) after whatsmeow's wait, shorter here than the
    gateway's own."""
    ffi = linked(iq_timeout=0.1)
    wa = await start_whatsapp(ffi, "wa", stanza_timeout_seconds=5.0)
    await wa.wait_state("wa", CONNECTED)
    await wa.get("wa")
    ffi.arrange("wa", Fault("timeout", category="last", applied=True))

    messages, error = await drain(stream(wa, last_seen="none"))

    assert error is None
    unconfirmed = [m.field for m in messages if m.WhichOneof("event") == "field"][1]
    assert pb.FieldState.Name(unconfirmed.state) == "FIELD_STATE_UNCONFIRMED"
    assert unconfirmed.error == "info query timed out"
    assert field_states(messages)[-1] == ("last_seen", "APPLIED")


async def test_an_unresolved_stanza_stays_unconfirmed_and_the_field_reads_as_unknown(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked(reconnect_wait=0.05)
    wa = await started(start_whatsapp, ffi)
    # The connection drops before the answer and does not come back within whatsmeow's wait:
    # "websocket disconnected before info query returned response" (request.go:199-202).
    ffi.arrange("wa", Fault("drop", category="last", applied=True, reconnect_after=None))

    started_at = time.monotonic()
    error = await rpc_error(wa.update("wa", last_seen="none", status="none"))
    elapsed = time.monotonic() - started_at

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == (
        "failed to update lastSeen privacy: websocket disconnected before info query returned "
        "response (sent, but the answer was lost: WhatsApp may hold the new value)"
    )
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_info(status)
    assert info.reason == "STANZA_UNCONFIRMED"
    assert info.metadata["unconfirmed"] == "last_seen"
    assert info.metadata["not_attempted"] == "status"
    response = update_response(status)
    states = [pb.FieldState.Name(f.state) for f in response.fields]
    assert states == ["FIELD_STATE_UNCONFIRMED", "FIELD_STATE_NOT_ATTEMPTED"]
    # The settings afterwards do not claim a value for the field nobody could confirm.
    assert response.settings.visibility.last_seen == 0
    assert elapsed < 5, "the wait for a lost answer is bounded"


async def test_rollback_puts_back_an_unconfirmed_field_too(start_whatsapp: StartWhatsApp) -> None:
    ffi = linked()
    wa = await started(start_whatsapp, ffi)
    ffi.arrange("wa", Fault("timeout", category="last", applied=True))
    # The re-read's fetch (by the new client) gets no answer either: the field stays unknown.
    ffi.arrange("wa", Fault("timeout", category=None, applied=True))

    messages, error = await drain(
        stream(wa, pb.FAILURE_POLICY_ROLLBACK, last_seen="none", status="none")
    )

    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert field_states(messages) == [
        ("last_seen", "STARTED"),
        ("last_seen", "UNCONFIRMED"),
        ("status", "NOT_ATTEMPTED"),
        ("last_seen", "RESTORE_STARTED"),
        ("last_seen", "RESTORED"),
    ]
    assert ffi.device("wa").raw_settings["last"] == "all", "WhatsApp holds the old value again"
    assert "rolled back" in error.details()


# -- a drop mid-stanza, and whatsmeow's resend -------------------------------------------------


async def test_a_drop_mid_stanza_is_resent_once_by_whatsmeow_and_applied(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked(reconnect_wait=2.0)
    wa = await started(start_whatsapp, ffi)
    sent = ffi.stanzas
    ffi.arrange("wa", Fault("drop", category="last", applied=True, reconnect_after=0.05))

    messages, error = await drain(stream(wa, last_seen="none"))

    assert error is None
    assert field_states(messages) == [("last_seen", "STARTED"), ("last_seen", "APPLIED")]
    assert ffi.stanzas == sent + 2, "the stanza and whatsmeow's one resend (request.go:185-235)"
    await wa.wait_state("wa", CONNECTED)


# -- WhatsApp's own error codes ---------------------------------------------------------------


async def test_whatsapps_rate_limit_is_resource_exhausted_with_a_retry_hint(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await started(start_whatsapp, ffi)
    ffi.arrange("wa", Fault("status", category="last", status=429, text="rate-overlimit"))

    error = await rpc_error(wa.update("wa", last_seen="none"))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == (
        "failed to update lastSeen privacy: info query returned status 429: rate-overlimit"
    )
    assert ffi.device("wa").raw_settings["last"] == "all", "nothing changed on WhatsApp"
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "WHATSAPP_RATE_LIMITED"
    (retry,) = details(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds >= 1


@pytest.mark.parametrize(
    ("code", "text"),
    # errors.go:186-198 names 500 and 503; any 5xx is WhatsApp's server side.
    [(500, "internal-server-error"), (503, "service-unavailable"), (530, "")],
)
async def test_whatsapps_server_errors_are_unavailable(
    start_whatsapp: StartWhatsApp, code: int, text: str
) -> None:
    ffi = linked()
    wa = await started(start_whatsapp, ffi)
    ffi.arrange("wa", Fault("status", category="last", status=code, text=text))

    error = await rpc_error(wa.update("wa", last_seen="none"))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == (
        f"failed to update lastSeen privacy: info query returned status {code}: {text}"
    )
    assert ffi.device("wa").raw_settings["last"] == "all", "nothing changed on WhatsApp"
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "WHATSAPP_UNAVAILABLE"


@asynccontextmanager
async def rest(wa: WaGateway) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    http = HttpServer(wa.gateway)
    await http.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as client:
            yield client, f"http://127.0.0.1:{http.port}/api/profile/privacy/wa"
    finally:
        await http.stop()


async def test_rest_answers_429_with_retry_after_for_whatsapps_rate_limit(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await started(start_whatsapp, ffi)
    ffi.arrange("wa", Fault("status", category="last", status=429, text="rate-overlimit"))

    async with rest(wa) as (client, url):
        body = {"visibility": {"lastSeen": "none"}}
        async with client.post(url, json=body, headers={"token": wa.token}) as reply:
            assert reply.status == 429
            assert int(reply.headers["Retry-After"]) >= 1
            envelope = await reply.json()
    assert envelope["success"] is False
    assert envelope["error"]["reason"] == "WHATSAPP_RATE_LIMITED"


# -- a value outside the table ---------------------------------------------------------------


async def test_one_field_whatsapp_reports_outside_the_table_leaves_the_others_known(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    # whatsmeow allows groupadd "none" (types/user.go:144) and neonize encodes it as NONE
    # (goneonize/utils/encoder.go:489-490), but group_add has no "none" in the field table.
    ffi.device("wa").raw_settings["groupadd"] = "none"
    wa = await start_whatsapp(ffi, "wa")
    await wa.wait_state("wa", CONNECTED)

    settings = await wa.get("wa")
    assert Field.GROUP_ADD not in settings
    assert settings[Field.LAST_SEEN] == "all"
    assert len(settings) == 6

    response = await wa.update("wa", last_seen="none")
    assert convert.settings_from_proto(response.settings)[Field.LAST_SEEN] == "none"

    async with rest(wa) as (client, url), client.get(url, headers={"token": wa.token}) as reply:
        assert reply.status == 200
        body = await reply.json()
    assert "groupAdd" not in body["settings"]["permissions"]
    assert body["settings"]["visibility"]["lastSeen"] == "none"

    # The unknown field itself can be set: its stanza is sent (nothing says it is unchanged).
    sent = ffi.stanzas
    response = await wa.update("wa", group_add="contacts")
    assert ffi.stanzas == sent + 1
    assert ffi.device("wa").raw_settings["groupadd"] == "contacts"
    assert convert.settings_from_proto(response.settings)[Field.GROUP_ADD] == "contacts"


async def test_an_unconfirmed_field_stays_unknown_over_whatsmeows_own_reconnect(
    start_whatsapp: StartWhatsApp,
) -> None:
    """whatsmeow reconnects within the same client, whose cache still holds the value from
    before the lost answer (privacysettings.go:63-105): only a new client's fetch settles it."""
    ffi = linked(reconnect_wait=0.05)
    wa = await started(start_whatsapp, ffi)
    ffi.arrange("wa", Fault("drop", category="last", applied=True, reconnect_after=None))
    await rpc_error(wa.update("wa", last_seen="none"))

    ffi.reconnect("wa")
    await wa.wait_state("wa", CONNECTED)
    await asyncio.sleep(0.1)  # the re-read after Connected

    settings = await wa.get("wa")
    assert Field.LAST_SEEN not in settings, "the old cache must not be taken for WhatsApp's word"
    assert Field.STATUS in settings, "the other fields are known"
    # Setting it again sends the stanza (nothing says it is unchanged) and makes it known.
    await wa.update("wa", last_seen="none")
    assert (await wa.get("wa"))[Field.LAST_SEEN] == "none"


async def test_rollback_does_not_send_an_unknown_previous_value(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    ffi.device("wa").raw_settings["last"] = "contact_allowlist"  # neonize cannot encode it
    wa = await started(start_whatsapp, ffi)
    ffi.arrange("wa", Fault("status", category="status", status=403, text="forbidden"))

    messages, error = await drain(
        stream(wa, pb.FAILURE_POLICY_ROLLBACK, last_seen="none", status="none")
    )

    assert error is not None
    assert field_states(messages) == [
        ("last_seen", "STARTED"),
        ("last_seen", "APPLIED"),
        ("status", "STARTED"),
        ("status", "FAILED"),
        ("last_seen", "RESTORE_FAILED"),
    ]
    assert ffi.device("wa").raw_settings["last"] == "none", "nothing empty was sent"
