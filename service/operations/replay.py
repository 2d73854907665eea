"""A finished operation, replayed from its journal record for a retry with its ``request_id``."""

from __future__ import annotations

from service.engine import (
    FieldEvent,
    FieldState,
    Plan,
    PlanStep,
    Snapshot,
    UpdateOptions,
)
from service.errors import reason_named
from service.instances import Instance
from service.operations.operation import Operation, UpdateRequest
from service.operations.record import OperationRecord, OperationState
from service.settings import Field, Settings


def replayed(instance: Instance, record: OperationRecord) -> Operation:
    """A finished operation, from the journal, as the events its caller saw."""
    request = UpdateRequest(
        record.requested,
        UpdateOptions(record.policy, record.force, record.validate_only),
        record.request_id,
        record.requested_by,
    )
    operation = Operation(record.id, instance, request)
    outcomes = record.outcomes
    # A field's first outcome is its plan step (a restore, or the re-read that resolved an
    # UNCONFIRMED stanza, is a second outcome of the same field).
    firsts: dict[Field, FieldEvent] = {}
    for o in outcomes:
        if o.state not in _RESTORES:
            firsts.setdefault(o.field, o)
    steps = tuple(PlanStep(o.field, o.previous, o.value, record.force) for o in firsts.values())
    operation.publish(Plan(steps))
    for outcome in outcomes:
        operation.publish(outcome)
    settings = record.settings or Settings()
    snapshot = Snapshot(settings, outcomes)
    if record.state is not OperationState.COMPLETED:
        # A record still RUNNING has no error, and one an older gateway wrote may name a reason
        # the catalogue no longer has: both replay as INTERRUPTED.
        state = record.state.value
        error = record.error
        reason = reason_named(error.reason if error else state)
        if record.state is OperationState.INTERRUPTED:
            reason = reason_named(state)
        message = (error.message if error else "") or state
        failed = reason.recorded(message, error.metadata if error else {}, snapshot)
        snapshot = Snapshot(settings, snapshot.outcomes, failed)
    operation.publish(snapshot)
    operation.end()
    return operation


_RESTORES = {FieldState.RESTORED, FieldState.RESTORE_FAILED}
