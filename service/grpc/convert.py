"""Between the wire contract's messages and the domain's plain data.

The enum numbers are looked up by name from the generated descriptors, using the field table:
a value ``contact_blacklist`` of a field whose enum is ``VisibilityValue`` is
``VISIBILITY_VALUE_CONTACT_BLACKLIST``. Building the maps fails at import if the proto and the
table ever disagree, so a mismatch cannot reach a caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from google.protobuf.descriptor import EnumDescriptor

from service import errors
from service.engine import Event, FieldEvent, FieldState, Plan, Snapshot
from service.errors import Violation
from service.instances import Instance
from service.operations.record import OperationRecord, OperationState
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as settings_pb
from service.sessions.base import ChangeSource, SettingsChange
from service.settings import FIELDS, Field, FieldSpec, Settings


def enum_prefix(enum_name: str) -> str:
    """``VisibilityValue`` -> ``VISIBILITY_VALUE_`` (buf's ENUM_VALUE_PREFIX rule)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def _value_numbers(spec: FieldSpec) -> dict[str, int]:
    enum: EnumDescriptor = settings_pb.DESCRIPTOR.enum_types_by_name[spec.proto_enum]
    prefix = enum_prefix(enum.name)
    numbers = {v: enum.values_by_name[prefix + v.upper()].number for v in spec.values}
    proto_values = {v.name for v in enum.values if v.number != 0}
    if proto_values != {prefix + v.upper() for v in spec.values}:
        raise RuntimeError(f"{enum.name} does not match the field table for {spec.proto_path}")
    return numbers


def _oneof_member(spec: FieldSpec) -> str:
    for member in settings_pb.FieldValue.DESCRIPTOR.oneofs_by_name["value"].fields:
        if member.enum_type is not None and member.enum_type.name == spec.proto_enum:
            return str(member.name)
    raise RuntimeError(f"FieldValue has no member for {spec.proto_enum}")


_TO_NUMBER: Mapping[Field, Mapping[str, int]] = {s.field: _value_numbers(s) for s in FIELDS}
_FROM_NUMBER: Mapping[Field, Mapping[int, str]] = {
    f: {n: v for v, n in numbers.items()} for f, numbers in _TO_NUMBER.items()
}
_ONEOF: Mapping[Field, str] = {s.field: _oneof_member(s) for s in FIELDS}
_FIELD_NUMBER: Mapping[Field, settings_pb.PrivacyField.ValueType] = {
    s.field: settings_pb.PrivacyField.Value(f"PRIVACY_FIELD_{s.field.name}") for s in FIELDS
}
_FIELD_BY_NUMBER: Mapping[int, Field] = {n: f for f, n in _FIELD_NUMBER.items()}
_STATE: Mapping[FieldState, pb.FieldState.ValueType] = {
    s: pb.FieldState.Value(f"FIELD_STATE_{s.name}") for s in FieldState
}
_STATE_BY_NUMBER: Mapping[int, FieldState] = {n: s for s, n in _STATE.items()}


def valid_value_names(spec: FieldSpec) -> list[str]:
    """The enum value names a caller may send for a field, in the table's order."""
    prefix = enum_prefix(spec.proto_enum)
    return [prefix + v.upper() for v in spec.values]


def settings_to_proto(settings: Settings) -> settings_pb.PrivacySettings:
    message = settings_pb.PrivacySettings()
    for field, value in settings.items():
        spec = field.spec
        setattr(getattr(message, spec.section), spec.proto_name, _TO_NUMBER[field][value])
    return message


def settings_from_proto(message: settings_pb.PrivacySettings) -> Settings:
    """The fields a message sets to a known value (a client reading a snapshot)."""
    values: dict[Field, str] = {}
    for spec in FIELDS:
        number: int = getattr(getattr(message, spec.section), spec.proto_name)
        value = _FROM_NUMBER[spec.field].get(number)
        if value is not None:
            values[spec.field] = value
    return Settings(values)


def field_from_proto(number: int) -> Field:
    return _FIELD_BY_NUMBER[number]


def state_from_proto(number: int) -> FieldState:
    return _STATE_BY_NUMBER[number]


def value_from_proto(field: Field, message: settings_pb.FieldValue) -> str | None:
    number: int = getattr(message, _ONEOF[field])
    return _FROM_NUMBER[field].get(number)


def requested_from_proto(message: settings_pb.PrivacySettings) -> dict[Field, str]:
    """The fields a request sets; raises INVALID_ARGUMENT for numbers outside a value set.

    Every invalid field is listed in the BadRequest details; the message names the first in
    canonical order, as the REST contract's validation does.
    """
    requested: dict[Field, str] = {}
    violations: list[Violation] = []
    invalid: list[tuple[str, int, str]] = []
    for spec in FIELDS:
        number: int = getattr(getattr(message, spec.section), spec.proto_name)
        if number == 0:
            continue
        value = _FROM_NUMBER[spec.field].get(number)
        if value is None:
            valid = ", ".join(valid_value_names(spec))
            where = f"settings.{spec.proto_path}"
            invalid.append((where, number, valid))
            text = errors.INVALID_VALUE.message.format(field=where, value=number, valid=valid)
            violations.append(Violation(where, text))
        else:
            requested[spec.field] = value
    if violations:
        where, number, valid = invalid[0]
        raise errors.INVALID_VALUE.error(
            violations=tuple(violations),
            extra={"field": where},
            field=where,
            value=number,
            valid=valid,
        )
    return requested


def field_value(field: Field, value: str) -> settings_pb.FieldValue:
    return _FIELD_VALUES[field, value]


def _build_field_value(field: Field, value: str) -> settings_pb.FieldValue:
    message = settings_pb.FieldValue()
    setattr(message, _ONEOF[field], _TO_NUMBER[field][value])
    return message


#: Every (field, value) as a ``FieldValue``, built once: every event carries two.
#: An unknown value ("", a field WhatsApp did not report) is the empty ``FieldValue``.
_FIELD_VALUES: Mapping[tuple[Field, str], settings_pb.FieldValue] = {
    **{(s.field, v): _build_field_value(s.field, v) for s in FIELDS for v in s.values},
    **{(s.field, ""): settings_pb.FieldValue() for s in FIELDS},
}


def field_update(event: FieldEvent) -> pb.FieldUpdate:
    message = pb.FieldUpdate()
    _fill_field_update(message, event)
    return message


def _fill_field_update(message: pb.FieldUpdate, event: FieldEvent) -> None:
    # Filled in place: a progress stream converts one of these per event, so it is kept lean.
    message.field = _FIELD_NUMBER[event.field]
    message.state = _STATE[event.state]
    message.value.CopyFrom(_FIELD_VALUES[event.field, event.value])
    message.previous.CopyFrom(_FIELD_VALUES[event.field, event.previous])
    if event.error:
        message.error = event.error
    if event.elapsed is not None:
        seconds, nanos = divmod(round(event.elapsed * 1e9), 1_000_000_000)
        message.elapsed.seconds = seconds
        message.elapsed.nanos = nanos


def plan_to_proto(plan: Plan, operation_id: str = "") -> pb.UpdatePlan:
    message = pb.UpdatePlan(operation_id=operation_id, stanzas=plan.stanzas)
    for step in plan.steps:
        planned = message.fields.add()
        planned.field = _FIELD_NUMBER[step.field]
        planned.current.CopyFrom(_FIELD_VALUES[step.field, step.current])
        planned.target.CopyFrom(_FIELD_VALUES[step.field, step.target])
        planned.changes = step.sends
    return message


def update_response(
    snapshot: Snapshot, operation_id: str = "", plan: Plan | None = None
) -> pb.UpdatePrivacySettingsResponse:
    response = pb.UpdatePrivacySettingsResponse(
        settings=settings_to_proto(snapshot.settings),
        fields=[field_update(o) for o in snapshot.outcomes],
        operation_id=operation_id,
    )
    if plan is not None:
        response.plan.CopyFrom(plan_to_proto(plan, operation_id))
    return response


def stream_message(event: Event, operation_id: str = "") -> pb.StreamUpdatePrivacySettingsResponse:
    message = pb.StreamUpdatePrivacySettingsResponse()
    if isinstance(event, FieldEvent):
        _fill_field_update(message.field, event)
    elif isinstance(event, Plan):
        message.plan.CopyFrom(plan_to_proto(event, operation_id))
    else:
        message.snapshot.CopyFrom(settings_to_proto(event.settings))
    return message


def watch_initial(settings: Settings) -> pb.WatchPrivacySettingsResponse:
    return pb.WatchPrivacySettingsResponse(
        settings=settings_to_proto(settings), source=pb.CHANGE_SOURCE_INITIAL
    )


def watch_change(change: SettingsChange) -> pb.WatchPrivacySettingsResponse:
    return pb.WatchPrivacySettingsResponse(
        settings=settings_to_proto(change.settings),
        changed=[_FIELD_NUMBER[f] for f in Field if f in change.changed],
        source=pb.ChangeSource.Value(f"CHANGE_SOURCE_{change.source.name}"),
    )


def instance_to_proto(instance: Instance, replica: str = "") -> instance_pb.Instance:
    """``instance`` as ``replica`` serves it ("": the gateway is one process)."""
    status = instance.session.status()
    message = instance_pb.Instance(
        name=instance.name,
        replica=replica,
        account=instance.account,
        kind=instance_pb.SessionKind.Value(f"SESSION_KIND_{instance.session.kind.upper()}"),
        state=instance_pb.InstanceState.Value(f"INSTANCE_STATE_{status.state.name}"),
        last_error=status.last_error,
        jid=status.jid,
    )
    message.state_since.FromNanoseconds(round(status.since * 1e9))
    if status.retry_at is not None:
        message.retry_time.FromNanoseconds(round(status.retry_at * 1e9))
    return message


assert {s.name for s in ChangeSource} <= {
    v.name.removeprefix("CHANGE_SOURCE_") for v in pb.ChangeSource.DESCRIPTOR.values
}


_OPERATION_STATES: Mapping[OperationState, pb.OperationState.ValueType] = {
    s: pb.OperationState.Value(f"OPERATION_STATE_{s.name}") for s in OperationState
}


def operation_to_proto(record: OperationRecord) -> pb.UpdateOperation:
    """A journaled operation as the wire contract shows it."""
    error = record.error
    message = pb.UpdateOperation(
        id=record.id,
        instance=record.instance,
        requested_by=record.requested_by,
        request_id=record.request_id or "",
        requested=settings_to_proto(Settings(record.requested)),
        failure_policy=pb.FailurePolicy.Value(f"FAILURE_POLICY_{record.policy.name}"),
        force=record.force,
        state=_OPERATION_STATES[record.state],
        fields=[field_update(o) for o in record.outcomes],
        error_reason=error.reason if error is not None else "",
        error_message=error.message if error is not None else "",
    )
    if record.settings:
        message.settings.CopyFrom(settings_to_proto(record.settings))
    message.start_time.FromNanoseconds(round(record.started_at * 1e9))
    if record.ended_at is not None:
        message.end_time.FromNanoseconds(round(record.ended_at * 1e9))
    return message
