"""A field WhatsApp refuses stops the update there, and the caller learns exactly what happened.

The contract: fields are applied in canonical order; when one fails, the fields before it stay
applied and the fields after it are NOT_ATTEMPTED. The stream still ends with the settings as they
now are, then closes with INTERNAL / STANZA_FAILED (UNAVAILABLE / CONNECTION_LOST when the
connection dropped) and the message ``failed to update <restName> privacy: <reason>``. The error's
details carry an ``ErrorInfo`` and the full ``UpdatePrivacySettingsResponse``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
import pytest
from grpc import aio
from grpc_status import rpc_status

from service.engine import FieldState
from service.grpc.convert import (
    field_from_proto,
    settings_from_proto,
    settings_to_proto,
    state_from_proto,
    value_from_proto,
)
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.simulated import DEFAULT_SETTINGS, NOT_CONNECTED_REASON
from service.settings import FIELDS, Field, Settings
from tests.helpers.harness import Harness
from tests.helpers.rich_status import error_info, update_response
from tests.helpers.updates import EVERY_FIELD_CHANGED

REFUSAL = "privacy value not allowed for this account"

StreamCall = aio.UnaryStreamCall[
    pb.StreamUpdatePrivacySettingsRequest, pb.StreamUpdatePrivacySettingsResponse
]


def _field_number(field: Field) -> int:
    return spb.PrivacyField.Value(f"PRIVACY_FIELD_{field.name}")


def _defaults_plus(applied: Iterable[Field]) -> Settings:
    """A fresh account's settings with exactly ``applied`` changed to the requested values."""
    return Settings({**DEFAULT_SETTINGS, **{f: EVERY_FIELD_CHANGED[f] for f in applied}})


async def _read_until_error(
    call: StreamCall,
) -> tuple[list[pb.StreamUpdatePrivacySettingsResponse], aio.AioRpcError]:
    """Every message of a stream that must end with an error status, and that error."""
    messages: list[pb.StreamUpdatePrivacySettingsResponse] = []
    try:
        async for message in call:
            messages.append(message)
    except aio.AioRpcError as error:
        return messages, error
    pytest.fail(f"the stream ended without an error after {len(messages)} messages")


def _transitions(updates: Sequence[pb.FieldUpdate]) -> list[tuple[Field, FieldState]]:
    return [(field_from_proto(u.field), state_from_proto(u.state)) for u in updates]


def _expected_transitions(failing: Field) -> list[tuple[Field, FieldState]]:
    """STARTED, APPLIED before the failure; STARTED, FAILED at it; NOT_ATTEMPTED after it."""
    index = list(Field).index(failing)
    expected: list[tuple[Field, FieldState]] = []
    for field in list(Field)[:index]:
        expected += [(field, FieldState.STARTED), (field, FieldState.APPLIED)]
    expected += [(failing, FieldState.STARTED), (failing, FieldState.FAILED)]
    expected += [(field, FieldState.NOT_ATTEMPTED) for field in list(Field)[index + 1 :]]
    return expected


def _expected_outcomes(failing: Field) -> list[tuple[Field, FieldState]]:
    return [t for t in _expected_transitions(failing) if t[1] is not FieldState.STARTED]


def _fields_before(failing: Field) -> list[Field]:
    return list(Field)[: list(Field).index(failing)]


def _check_field_update(update: pb.FieldUpdate, failing: Field, reason: str) -> None:
    """Each update names the requested value and the previous one; elapsed and error as due."""
    field = field_from_proto(update.field)
    state = state_from_proto(update.state)
    assert value_from_proto(field, update.value) == EVERY_FIELD_CHANGED[field]
    assert value_from_proto(field, update.previous) == DEFAULT_SETTINGS[field]
    if state is FieldState.FAILED and reason == NOT_CONNECTED_REASON:
        assert not update.HasField("elapsed"), "a stanza that was never sent has no round trip"
    elif state in (FieldState.APPLIED, FieldState.FAILED):
        assert update.HasField("elapsed"), f"{field.value} {state.name} without elapsed"
    else:
        assert not update.HasField("elapsed"), f"{field.value} {state.name} with elapsed"
    if state is FieldState.FAILED:
        assert field is failing
        assert update.error == reason
    elif state is FieldState.NOT_ATTEMPTED:
        assert update.error, "NOT_ATTEMPTED must say what stopped the update"
    else:
        assert update.error == ""


def _check_plan(message: pb.StreamUpdatePrivacySettingsResponse) -> None:
    """The plan: all seven fields in canonical order, each changing, seven stanzas."""
    assert message.WhichOneof("event") == "plan"
    plan = message.plan
    assert [p.field for p in plan.fields] == [_field_number(f) for f in Field]
    for planned in plan.fields:
        field = field_from_proto(planned.field)
        assert value_from_proto(field, planned.current) == DEFAULT_SETTINGS[field]
        assert value_from_proto(field, planned.target) == EVERY_FIELD_CHANGED[field]
        assert planned.changes
    assert plan.stanzas == 7


async def _check_stream(
    harness: Harness,
    failing: Field,
    reason: str,
    code: grpc.StatusCode,
    error_reason: str,
) -> None:
    """Streams the seven-field update and checks everything the caller sees, in order."""
    session = harness.session()
    call = harness.stream(settings_to_proto(EVERY_FIELD_CHANGED))

    messages, error = await _read_until_error(call)

    _check_plan(messages[0])
    progress = messages[1:-1]
    assert all(m.WhichOneof("event") == "field" for m in progress)
    updates = [m.field for m in progress]
    assert _transitions(updates) == _expected_transitions(failing)
    for update in updates:
        _check_field_update(update, failing, reason)

    last = messages[-1]
    assert last.WhichOneof("event") == "snapshot"
    applied = _fields_before(failing)
    snapshot = settings_from_proto(last.snapshot)
    assert snapshot == session.server_settings
    assert snapshot == _defaults_plus(applied)
    assert snapshot.complete

    assert error.code() == code
    assert error.details() == f"failed to update {failing.spec.rest_name} privacy: {reason}"
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    info = error_info(status)
    assert info.reason == error_reason
    assert info.metadata["applied"] == ",".join(f.value for f in applied)
    response = update_response(status)
    assert _transitions(response.fields) == _expected_outcomes(failing)
    applied_in_details = [
        field_from_proto(u.field) for u in response.fields if u.state == pb.FIELD_STATE_APPLIED
    ]
    assert applied_in_details == applied
    assert settings_from_proto(response.settings) == snapshot


@pytest.mark.parametrize("failing", [spec.field for spec in FIELDS], ids=lambda f: f.value)
async def test_stream_reports_a_refused_field_and_stops_there(
    gateway: Harness, failing: Field
) -> None:
    gateway.session().fail_field(failing, REFUSAL)

    await _check_stream(gateway, failing, REFUSAL, grpc.StatusCode.INTERNAL, "STANZA_FAILED")


@pytest.mark.parametrize("failing", [spec.field for spec in FIELDS], ids=lambda f: f.value)
async def test_unary_error_details_say_what_was_applied(gateway: Harness, failing: Field) -> None:
    session = gateway.session()
    session.fail_field(failing, REFUSAL)

    with pytest.raises(aio.AioRpcError) as raised:
        await gateway.update(settings_to_proto(EVERY_FIELD_CHANGED))

    error = raised.value
    applied = _fields_before(failing)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == f"failed to update {failing.spec.rest_name} privacy: {REFUSAL}"
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_info(status)
    assert info.reason == "STANZA_FAILED"
    assert info.metadata["applied"] == ",".join(f.value for f in applied)
    response = update_response(status)
    assert _transitions(response.fields) == _expected_outcomes(failing)
    for update in response.fields:
        _check_field_update(update, failing, REFUSAL)
    settings = settings_from_proto(response.settings)
    assert settings == session.server_settings
    assert settings == _defaults_plus(applied)
    # One fetch, then one stanza per field up to and including the refused one.
    assert session.stanzas == 1 + len(applied) + 1


@pytest.mark.parametrize("sets_before_drop", [0, 3, 6])
async def test_stream_reports_a_dropped_connection(gateway: Harness, sets_before_drop: int) -> None:
    session = gateway.session()
    await gateway.get()  # the one-time fetch, so the drop counts set stanzas only
    session.drop_after(sets_before_drop)
    failing = FIELDS[sets_before_drop].field

    await _check_stream(
        gateway, failing, NOT_CONNECTED_REASON, grpc.StatusCode.UNAVAILABLE, "CONNECTION_LOST"
    )


async def test_unary_reports_a_dropped_connection(gateway: Harness) -> None:
    session = gateway.session()
    await gateway.get()
    session.drop_after(2)
    failing = FIELDS[2]

    with pytest.raises(aio.AioRpcError) as raised:
        await gateway.update(settings_to_proto(EVERY_FIELD_CHANGED))

    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == (
        f"failed to update {failing.rest_name} privacy: {NOT_CONNECTED_REASON}"
    )
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "CONNECTION_LOST"
    response = update_response(status)
    assert _transitions(response.fields) == _expected_outcomes(failing.field)
    assert settings_from_proto(response.settings) == session.server_settings
    assert session.server_settings == _defaults_plus([FIELDS[0].field, FIELDS[1].field])
