"""A caller who leaves mid-update: a cancelled stream, a unary deadline that passes.

The update stops before its next stanza, and the journal records how far it got and how it
ended, so the caller can read the full outcome afterwards; "WhatsApp" (the simulated session)
holds exactly what the record says was applied.
"""

from __future__ import annotations

import grpc

from service.grpc.convert import field_from_proto, settings_from_proto
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import SentStanza
from tests.helpers.harness import GatewayFactory, Harness
from tests.helpers.operations import (
    _defaults_plus,
    _latency_instances,
    _listed_ids,
    _rpc_error,
    _sets,
    _stream,
    _unary,
    _wait_until_ended,
)
from tests.helpers.updates import FIVE_CHANGES


async def test_caller_who_disconnects_can_read_the_full_outcome(
    make_gateway: GatewayFactory,
) -> None:
    gateway: Harness = await make_gateway(instances=_latency_instances(100))
    session = gateway.session()
    call = _stream(gateway, FIVE_CHANGES)
    operation_id = ""
    applied = 0

    async for message in call:
        if message.WhichOneof("event") == "plan":
            operation_id = message.plan.operation_id
        elif message.field.state == pb.FIELD_STATE_APPLIED:
            applied += 1
            if applied == 2:
                call.cancel()
                break
    operation = await _wait_until_ended(gateway, operation_id)

    assert await call.code() == grpc.StatusCode.CANCELLED
    assert operation.state == pb.OPERATION_STATE_CANCELLED
    states = [u.state for u in operation.fields]
    done = states.count(pb.FIELD_STATE_APPLIED)
    assert done in (2, 3), f"{done} fields applied after a cancel at the second"
    assert [field_from_proto(u.field) for u in operation.fields] == list(FIVE_CHANGES)
    assert states == [pb.FIELD_STATE_APPLIED] * done + [pb.FIELD_STATE_NOT_ATTEMPTED] * (5 - done)
    for update in operation.fields[done:]:
        assert "cancel" in update.error
    applied_fields = list(FIVE_CHANGES)[:done]
    assert session.server_settings == _defaults_plus(FIVE_CHANGES, applied_fields)
    assert settings_from_proto(operation.settings) == session.server_settings
    assert _sets(session) == [SentStanza(f.spec.category, FIVE_CHANGES[f]) for f in applied_fields]
    assert operation.error_reason == "CANCELLED"
    assert operation.HasField("end_time")


async def test_unary_caller_whose_deadline_passes_is_recorded(
    make_gateway: GatewayFactory,
) -> None:
    gateway: Harness = await make_gateway(instances=_latency_instances(100))
    session = gateway.session()

    error = await _rpc_error(_unary(gateway, FIVE_CHANGES, rpc_timeout=0.25))
    (operation_id,) = await _listed_ids(gateway)
    operation = await _wait_until_ended(gateway, operation_id)

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert operation.state == pb.OPERATION_STATE_DEADLINE_EXCEEDED
    done = [u.state for u in operation.fields].count(pb.FIELD_STATE_APPLIED)
    assert 1 <= done < 5
    assert [u.state for u in operation.fields[done:]] == [pb.FIELD_STATE_NOT_ATTEMPTED] * (5 - done)
    assert settings_from_proto(operation.settings) == session.server_settings
    assert session.server_settings == _defaults_plus(FIVE_CHANGES, list(FIVE_CHANGES)[:done])
