"""validate_only and force: a dry run plans an update without sending or journaling anything;
force sends every requested field, even one that already holds the value.
"""

from __future__ import annotations

from service.grpc.convert import field_from_proto, settings_from_proto, value_from_proto
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import DEFAULT_SETTINGS, SentStanza
from service.settings import Field, Settings
from tests.helpers.harness import Harness
from tests.helpers.operations import (
    _drain,
    _get_operation,
    _listed_ids,
    _plan,
    _sets,
    _snapshot,
    _stream,
    _unary,
)


async def test_validate_only_plans_without_sending_or_journaling(gateway: Harness) -> None:
    session = gateway.session()
    earlier = await _unary(gateway, Settings({Field.CALL_ADD: "known"}))
    sent, held = list(session.sent), session.server_settings
    # LAST_SEEN and GROUP_ADD would change; CALL_ADD already holds "known".
    requested = Settings(
        {Field.LAST_SEEN: "none", Field.CALL_ADD: "known", Field.GROUP_ADD: "contacts"}
    )

    response = await _unary(gateway, requested, validate_only=True)
    messages, error = await _drain(_stream(gateway, requested, validate_only=True))

    for plan in (response.plan, _plan(messages)):
        assert plan.operation_id == ""
        assert [field_from_proto(p.field) for p in plan.fields] == list(requested)
        assert [p.changes for p in plan.fields] == [True, False, True]
        assert plan.stanzas == 2
        for planned in plan.fields:
            field = field_from_proto(planned.field)
            assert value_from_proto(field, planned.current) == held[field]
            assert value_from_proto(field, planned.target) == requested[field]
    assert response.operation_id == ""
    assert settings_from_proto(response.settings) == held
    assert error is None
    assert [m.WhichOneof("event") for m in messages] == ["plan", "snapshot"]
    assert settings_from_proto(_snapshot(messages)) == held
    assert session.sent == sent
    assert session.server_settings == held
    assert await _listed_ids(gateway) == [earlier.operation_id]


async def test_force_sends_every_requested_field(gateway: Harness) -> None:
    session = gateway.session()
    await gateway.get()
    unforced = await _unary(gateway, DEFAULT_SETTINGS)
    sent = len(session.sent)

    forced = await _unary(gateway, DEFAULT_SETTINGS, force=True)

    assert unforced.plan.stanzas == 0
    assert [u.state for u in unforced.fields] == [pb.FIELD_STATE_UNCHANGED] * 7
    assert sent == 1
    assert forced.plan.stanzas == 7
    assert [u.state for u in forced.fields] == [pb.FIELD_STATE_APPLIED] * 7
    assert _sets(session) == [SentStanza(f.spec.category, v) for f, v in DEFAULT_SETTINGS.items()]
    assert session.stanzas == sent + 7
    assert session.server_settings == DEFAULT_SETTINGS
    operation = await _get_operation(gateway, forced.operation_id)
    assert operation.force
    assert list(operation.fields) == list(forced.fields)
