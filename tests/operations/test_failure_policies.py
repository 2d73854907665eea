"""Failure policies of updates as journaled operations: STOP, CONTINUE and ROLLBACK.

What the stream reported, what the journal recorded and what "WhatsApp" (the simulated session)
holds must agree exactly, whatever failed and whichever policy applied, a rollback's restores
included (one that WhatsApp refuses, or that the connection drops, is RESTORE_FAILED).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from service.engine import FailurePolicy, FieldState
from service.grpc.convert import (
    field_from_proto,
    settings_from_proto,
    state_from_proto,
    value_from_proto,
)
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.base import SessionError
from service.sessions.simulated import (
    DEFAULT_SETTINGS,
    NOT_CONNECTED_REASON,
    SentStanza,
    SimulatedSession,
)
from service.settings import Field, Settings
from tests.helpers.harness import Harness
from tests.helpers.operations import (
    REFUSAL,
    _defaults_plus,
    _drain,
    _finals,
    _get_operation,
    _plan,
    _snapshot,
    _stream,
    _transitions,
    _updates,
)
from tests.helpers.rich_status import error_info, update_response
from tests.helpers.updates import EVERY_FIELD_CHANGED

RESTORE_REFUSAL = "restore refused by the server"

POLICY_NUMBERS = {
    FailurePolicy.STOP: pb.FAILURE_POLICY_STOP,
    FailurePolicy.CONTINUE: pb.FAILURE_POLICY_CONTINUE,
    FailurePolicy.ROLLBACK: pb.FAILURE_POLICY_ROLLBACK,
}
RESTORE_STATES = (
    pb.FIELD_STATE_RESTORE_STARTED,
    pb.FIELD_STATE_RESTORED,
    pb.FIELD_STATE_RESTORE_FAILED,
)


def _expected_transitions(failing: Field, policy: FailurePolicy) -> list[tuple[Field, FieldState]]:
    fields = list(Field)
    index = fields.index(failing)
    expected: list[tuple[Field, FieldState]] = []
    if policy is FailurePolicy.CONTINUE:
        for field in fields:
            outcome = FieldState.FAILED if field is failing else FieldState.APPLIED
            expected += [(field, FieldState.STARTED), (field, outcome)]
        return expected
    for field in fields[:index]:
        expected += [(field, FieldState.STARTED), (field, FieldState.APPLIED)]
    expected += [(failing, FieldState.STARTED), (failing, FieldState.FAILED)]
    expected += [(field, FieldState.NOT_ATTEMPTED) for field in fields[index + 1 :]]
    if policy is FailurePolicy.ROLLBACK:
        for field in reversed(fields[:index]):
            expected += [(field, FieldState.RESTORE_STARTED), (field, FieldState.RESTORED)]
    return expected


def _expected_settings(failing: Field, policy: FailurePolicy) -> Settings:
    if policy is FailurePolicy.CONTINUE:
        return _defaults_plus(EVERY_FIELD_CHANGED, [f for f in Field if f is not failing])
    if policy is FailurePolicy.ROLLBACK:
        return DEFAULT_SETTINGS
    return _defaults_plus(EVERY_FIELD_CHANGED, list(Field)[: list(Field).index(failing)])


def _check_first_pass_update(update: pb.FieldUpdate, failing: Field) -> None:
    """An update of the first pass (not a restore) names the requested and previous values."""
    field = field_from_proto(update.field)
    state = state_from_proto(update.state)
    assert value_from_proto(field, update.value) == EVERY_FIELD_CHANGED[field]
    assert value_from_proto(field, update.previous) == DEFAULT_SETTINGS[field]
    assert update.HasField("elapsed") == (state in (FieldState.APPLIED, FieldState.FAILED))
    if state is FieldState.FAILED:
        assert field is failing
        assert update.error == REFUSAL
    elif state is FieldState.NOT_ATTEMPTED:
        assert update.error, "NOT_ATTEMPTED must say what stopped the update"
    else:
        assert update.error == ""


@pytest.mark.parametrize("policy", list(FailurePolicy), ids=lambda p: p.name)
@pytest.mark.parametrize("failing", list(Field), ids=lambda f: f.value)
async def test_failure_policy_stream_journal_and_whatsapp_agree(
    gateway: Harness, failing: Field, policy: FailurePolicy
) -> None:
    session = gateway.session()
    session.fail_field(failing, REFUSAL)
    call = _stream(gateway, EVERY_FIELD_CHANGED, failure_policy=POLICY_NUMBERS[policy])

    messages, error = await _drain(call)

    assert error is not None, "an update with a failed field must end with an error status"
    index = list(Field).index(failing)
    plan = _plan(messages)
    assert plan.operation_id
    assert plan.stanzas == 7
    updates = _updates(messages)
    assert _transitions(updates) == _expected_transitions(failing, policy)
    first_pass = [u for u in updates if u.state not in RESTORE_STATES]
    for update in first_pass:
        _check_first_pass_update(update, failing)
    for update in updates:
        if update.state == pb.FIELD_STATE_RESTORED:
            assert update.error == ""

    # WhatsApp holds what the stream said, and the snapshot says so too.
    expected = _expected_settings(failing, policy)
    assert session.server_settings == expected
    assert settings_from_proto(_snapshot(messages)) == expected
    restores = index if policy is FailurePolicy.ROLLBACK else 0
    attempts = 7 if policy is FailurePolicy.CONTINUE else index + 1
    assert session.stanzas == 1 + attempts + restores

    # The status.
    base = f"failed to update {failing.spec.rest_name} privacy: {REFUSAL}"
    assert error.code() == grpc.StatusCode.INTERNAL
    if policy is FailurePolicy.ROLLBACK and index > 0:
        assert error.details() == base + "; rolled back"
    else:
        assert error.details() == base
    assert error.details().startswith(base)
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    info = error_info(status)
    assert info.reason == "STANZA_FAILED"
    assert info.metadata["operation_id"] == plan.operation_id
    detail = update_response(status)
    assert list(detail.fields) == _finals(updates)
    assert settings_from_proto(detail.settings) == expected

    # The journal recorded exactly the final events the stream produced.
    operation = await _get_operation(gateway, plan.operation_id)
    assert operation.state == pb.OPERATION_STATE_FAILED
    assert operation.failure_policy == POLICY_NUMBERS[policy]
    assert list(operation.fields) == _finals(updates)
    assert settings_from_proto(operation.settings) == session.server_settings
    assert operation.error_reason == "STANZA_FAILED"
    assert operation.error_message == error.details()
    assert operation.HasField("end_time")


class RestoreRefusingSession(SimulatedSession):
    """A session whose WhatsApp refuses to put ``refused`` back to a fresh account's value
    (the restore of a rollback), and accepts everything else."""

    def __init__(self, refused: Field) -> None:
        super().__init__()
        self.refused = refused

    async def set_setting(self, field: Field, value: str) -> Settings:
        if field is self.refused and value == DEFAULT_SETTINGS[field]:
            await self.read_settings()
            self.sent.append(SentStanza(field.spec.category, value))
            raise SessionError(RESTORE_REFUSAL)
        return await super().set_setting(field, value)


def _install(harness: Harness, session: SimulatedSession, name: str = "sales") -> None:
    instance = harness.gateway.instances.get(name)
    assert instance is not None
    instance.session = session


async def test_rollback_whose_restore_is_refused_is_restore_failed(gateway: Harness) -> None:
    session = RestoreRefusingSession(Field.PROFILE)
    _install(gateway, session)
    session.fail_field(Field.GROUP_ADD, REFUSAL)
    applied = list(Field)[:6]
    call = _stream(gateway, EVERY_FIELD_CHANGED, failure_policy=pb.FAILURE_POLICY_ROLLBACK)

    messages, error = await _drain(call)

    assert error is not None
    updates = _updates(messages)
    restores = [u for u in updates if u.state in RESTORE_STATES]
    expected_restores: list[tuple[Field, FieldState]] = []
    for field in reversed(applied):
        outcome = FieldState.RESTORE_FAILED if field is Field.PROFILE else FieldState.RESTORED
        expected_restores += [(field, FieldState.RESTORE_STARTED), (field, outcome)]
    assert _transitions(restores) == expected_restores
    (refused,) = [u for u in restores if u.state == pb.FIELD_STATE_RESTORE_FAILED]
    assert refused.error == RESTORE_REFUSAL
    # Every restore but the refused one put the field back; the refused one kept its new value.
    expected = _defaults_plus(EVERY_FIELD_CHANGED, [Field.PROFILE])
    assert session.server_settings == expected
    assert settings_from_proto(_snapshot(messages)) == expected
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == (
        f"failed to update groupAdd privacy: {REFUSAL}; rollback incomplete: "
        f"profile still {EVERY_FIELD_CHANGED[Field.PROFILE]}"
    )
    operation = await _get_operation(gateway, _plan(messages).operation_id)
    assert operation.state == pb.OPERATION_STATE_FAILED
    assert list(operation.fields) == _finals(updates)
    assert settings_from_proto(operation.settings) == session.server_settings
    assert operation.error_message == error.details()


async def test_rollback_that_loses_the_connection_is_restore_failed(gateway: Harness) -> None:
    session = gateway.session()
    await gateway.get()  # the one-time fetch, so the drop counts set stanzas only
    session.fail_field(Field.ONLINE, REFUSAL)
    applied = list(Field)[:3]
    # Three sets applied, the fourth refused; the connection drops before the first restore.
    session.drop_after(4)
    call = _stream(gateway, EVERY_FIELD_CHANGED, failure_policy=pb.FAILURE_POLICY_ROLLBACK)

    messages, error = await _drain(call)

    assert error is not None
    updates = _updates(messages)
    restores = [u for u in updates if u.state in RESTORE_STATES]
    assert _transitions(restores) == [
        t
        for f in reversed(applied)
        for t in ((f, FieldState.RESTORE_STARTED), (f, FieldState.RESTORE_FAILED))
    ]
    for update in restores:
        if update.state == pb.FIELD_STATE_RESTORE_FAILED:
            assert update.error == NOT_CONNECTED_REASON
            assert not update.HasField("elapsed"), "a stanza never sent has no round trip"
    expected = _defaults_plus(EVERY_FIELD_CHANGED, applied)
    assert session.server_settings == expected
    assert settings_from_proto(_snapshot(messages)) == expected
    assert error.code() == grpc.StatusCode.INTERNAL
    stuck = ", ".join(
        f"{f.spec.rest_name} still {EVERY_FIELD_CHANGED[f]}" for f in reversed(applied)
    )
    assert error.details() == (
        f"failed to update online privacy: {REFUSAL}; rollback incomplete: {stuck}"
    )
    operation = await _get_operation(gateway, _plan(messages).operation_id)
    assert operation.state == pb.OPERATION_STATE_FAILED
    assert list(operation.fields) == _finals(updates)
    assert settings_from_proto(operation.settings) == session.server_settings
    assert operation.error_message == error.details()


async def test_restore_events_name_the_requested_value_and_the_one_put_back(
    gateway: Harness,
) -> None:
    """The contract: FieldUpdate.value is the value requested, previous the value before the
    update; RESTORE_STARTED puts the field back to ``previous``; after RESTORE_FAILED the field
    "still holds ``value``"."""
    session = RestoreRefusingSession(Field.STATUS)
    _install(gateway, session)
    session.fail_field(Field.CALL_ADD, REFUSAL)

    messages, error = await _drain(
        _stream(gateway, EVERY_FIELD_CHANGED, failure_policy=pb.FAILURE_POLICY_ROLLBACK)
    )

    assert error is not None
    restores = [u for u in _updates(messages) if u.state in RESTORE_STATES]
    assert len(restores) == 2 * 5
    for update in restores:
        field = field_from_proto(update.field)
        assert value_from_proto(field, update.value) == EVERY_FIELD_CHANGED[field], (
            f"{field.value} {state_from_proto(update.state).name}: value is not the requested one"
        )
        assert value_from_proto(field, update.previous) == DEFAULT_SETTINGS[field], (
            f"{field.value} {state_from_proto(update.state).name}: previous is not the original"
        )
        if update.state == pb.FIELD_STATE_RESTORED:
            assert session.server_settings[field] == value_from_proto(field, update.previous)
        if update.state == pb.FIELD_STATE_RESTORE_FAILED:
            assert session.server_settings[field] == value_from_proto(field, update.value)
