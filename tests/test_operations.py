"""Updates as journaled operations: ids, GetUpdateOperation, ListUpdateOperations, failure
policies, callers who leave, request_id retries, validate_only and force.

Each update is an operation with an id (in the plan and the unary response), recorded in the
journal as it happens. What the stream reported, what the journal recorded and what "WhatsApp"
(the simulated session) holds must agree exactly, whatever failed and whichever policy applied.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import sqlite3
import tempfile
import time
import types
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from grpc import aio
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from service import engine
from service.auth import hash_token
from service.engine import (
    FINAL_STATES,
    FailurePolicy,
    FieldEvent,
    FieldState,
    Plan,
    Snapshot,
    UpdateOptions,
)
from service.errors import GatewayError
from service.grpc.convert import (
    field_from_proto,
    settings_from_proto,
    settings_to_proto,
    state_from_proto,
    value_from_proto,
)
from service.instances import Instance
from service.operations import Operation, Operations, UpdateRequest
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.base import SessionError
from service.sessions.simulated import (
    DEFAULT_SETTINGS,
    NOT_CONNECTED_REASON,
    SentStanza,
    SimulatedSession,
)
from service.settings import Field, Settings
from tests.conftest import (
    ACME_TOKEN,
    GLOBEX_TOKEN,
    SALES_TOKEN,
    GatewayFactory,
    Harness,
)
from tests.rich_status import error_info, update_response
from tests.updates import EVERY_FIELD_CHANGED, FIVE_CHANGES

REFUSAL = "privacy value not allowed for this account"
RESTORE_REFUSAL = "restore refused by the server"
#: Seconds any wait in these tests may take before the test gives up.
TIMEOUT = 10.0

Messages = list[pb.StreamUpdatePrivacySettingsResponse]
StreamCall = aio.UnaryStreamCall[
    pb.StreamUpdatePrivacySettingsRequest, pb.StreamUpdatePrivacySettingsResponse
]


#: Three fields, each changed.
THREE_CHANGES = Settings({f: EVERY_FIELD_CHANGED[f] for f in list(Field)[:3]})

POLICY_NUMBERS = {
    FailurePolicy.STOP: pb.FAILURE_POLICY_STOP,
    FailurePolicy.CONTINUE: pb.FAILURE_POLICY_CONTINUE,
    FailurePolicy.ROLLBACK: pb.FAILURE_POLICY_ROLLBACK,
}
PROGRESS_STATES = (pb.FIELD_STATE_STARTED, pb.FIELD_STATE_RESTORE_STARTED)
RESTORE_STATES = (
    pb.FIELD_STATE_RESTORE_STARTED,
    pb.FIELD_STATE_RESTORED,
    pb.FIELD_STATE_RESTORE_FAILED,
)


def _defaults_plus(settings: Settings, fields: Iterable[Field]) -> Settings:
    """A fresh account's settings with ``fields`` changed to their value in ``settings``."""
    return Settings({**DEFAULT_SETTINGS, **{f: settings[f] for f in fields}})


def _latency_instances(latency_ms: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "sales",
            "account": "acme",
            "token_sha256": hash_token(SALES_TOKEN),
            "latency_ms": latency_ms,
        },
        {"name": "support", "account": "acme", "latency_ms": latency_ms},
    ]


# -- calling the gateway -----------------------------------------------------------------------


async def _unary(
    harness: Harness,
    settings: Settings,
    *,
    instance: str = "sales",
    token: str | None = None,
    rpc_timeout: float = TIMEOUT,
    **options: Any,
) -> pb.UpdatePrivacySettingsResponse:
    return await harness.stub.UpdatePrivacySettings(
        pb.UpdatePrivacySettingsRequest(
            instance=instance, settings=settings_to_proto(settings), **options
        ),
        metadata=harness.metadata(token),
        timeout=rpc_timeout,
    )


def _stream(
    harness: Harness,
    settings: Settings,
    *,
    instance: str = "sales",
    token: str | None = None,
    rpc_timeout: float = TIMEOUT,
    **options: Any,
) -> StreamCall:
    return harness.stub.StreamUpdatePrivacySettings(
        pb.StreamUpdatePrivacySettingsRequest(
            instance=instance, settings=settings_to_proto(settings), **options
        ),
        metadata=harness.metadata(token),
        timeout=rpc_timeout,
    )


async def _drain(call: StreamCall) -> tuple[Messages, aio.AioRpcError | None]:
    """The rest of a stream (read with ``read()``) and the error it closed with, if any."""
    messages: Messages = []
    try:
        while (message := await call.read()) is not aio.EOF:
            assert isinstance(message, pb.StreamUpdatePrivacySettingsResponse)
            messages.append(message)
    except aio.AioRpcError as error:
        return messages, error
    return messages, None


async def _rpc_error(awaitable: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await awaitable
    return raised.value


async def _get_operation(
    harness: Harness, operation_id: str, instance: str = "sales", token: str | None = None
) -> pb.UpdateOperation:
    response = await harness.stub.GetUpdateOperation(
        pb.GetUpdateOperationRequest(instance=instance, operation_id=operation_id),
        metadata=harness.metadata(token),
        timeout=TIMEOUT,
    )
    return response.operation


async def _list_page(
    harness: Harness,
    page_size: int = 0,
    page_token: str = "",
    instance: str = "sales",
    token: str | None = None,
) -> pb.ListUpdateOperationsResponse:
    return await harness.stub.ListUpdateOperations(
        pb.ListUpdateOperationsRequest(
            instance=instance, page_size=page_size, page_token=page_token
        ),
        metadata=harness.metadata(token),
        timeout=TIMEOUT,
    )


async def _listed_ids(harness: Harness, instance: str = "sales") -> list[str]:
    """Every recorded operation of ``instance``, newest first (one page of up to 100)."""
    page = await _list_page(harness, 100, instance=instance)
    assert page.next_page_token == ""
    return [o.id for o in page.operations]


async def _wait_until_ended(harness: Harness, operation_id: str) -> pb.UpdateOperation:
    """Polls GetUpdateOperation until the operation is no longer RUNNING."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        operation = await _get_operation(harness, operation_id)
        if operation.state != pb.OPERATION_STATE_RUNNING:
            return operation
        assert time.monotonic() < deadline, f"operation {operation_id} still RUNNING"
        await asyncio.sleep(0.05)


# -- reading what came back --------------------------------------------------------------------


def _plan(messages: Messages) -> pb.UpdatePlan:
    assert messages, "the stream sent nothing"
    assert messages[0].WhichOneof("event") == "plan"
    return messages[0].plan


def _snapshot(messages: Messages) -> pb.PrivacySettings:
    assert messages[-1].WhichOneof("event") == "snapshot"
    return messages[-1].snapshot


def _updates(messages: Messages) -> list[pb.FieldUpdate]:
    middle = messages[1:-1]
    assert all(m.WhichOneof("event") == "field" for m in middle)
    return [m.field for m in middle]


def _finals(updates: Sequence[pb.FieldUpdate]) -> list[pb.FieldUpdate]:
    """The final outcome events (no STARTED, no RESTORE_STARTED)."""
    return [u for u in updates if u.state not in PROGRESS_STATES]


def _transitions(updates: Sequence[pb.FieldUpdate]) -> list[tuple[Field, FieldState]]:
    return [(field_from_proto(u.field), state_from_proto(u.state)) for u in updates]


def _sets(session: SimulatedSession) -> list[SentStanza]:
    return [s for s in session.sent if s.category is not None]


# -- the operation's id and record -------------------------------------------------------------


async def test_plan_event_and_unary_response_carry_the_operation_id(gateway: Harness) -> None:
    messages, error = await _drain(_stream(gateway, Settings({Field.LAST_SEEN: "none"})))
    response = await _unary(gateway, Settings({Field.LAST_SEEN: "contacts"}))

    assert error is None
    streamed_id = _plan(messages).operation_id
    assert streamed_id
    assert response.operation_id
    assert response.plan.operation_id == response.operation_id
    assert streamed_id != response.operation_id
    assert await _listed_ids(gateway) == [response.operation_id, streamed_id]


async def test_get_update_operation_returns_the_completed_record(
    make_gateway: GatewayFactory,
) -> None:
    latency = 0.02
    gateway: Harness = await make_gateway(instances=_latency_instances(20))
    session = gateway.session()
    # STATUS already holds "contacts": UNCHANGED, no stanza.
    requested = Settings(
        {Field.LAST_SEEN: "none", Field.STATUS: "contacts", Field.READ_RECEIPTS: "none"}
    )
    before = time.time()

    response = await _unary(gateway, requested)
    after = time.time()
    operation = await _get_operation(gateway, response.operation_id)

    assert operation.id == response.operation_id
    assert operation.instance == "sales"
    assert operation.request_id == ""
    assert operation.requested == settings_to_proto(requested)
    assert operation.failure_policy == pb.FAILURE_POLICY_STOP
    assert not operation.force
    assert operation.state == pb.OPERATION_STATE_COMPLETED
    assert list(operation.fields) == list(response.fields)
    assert _transitions(operation.fields) == [
        (Field.LAST_SEEN, FieldState.APPLIED),
        (Field.STATUS, FieldState.UNCHANGED),
        (Field.READ_RECEIPTS, FieldState.APPLIED),
    ]
    for update in operation.fields:
        field = field_from_proto(update.field)
        assert value_from_proto(field, update.value) == requested[field]
        assert value_from_proto(field, update.previous) == DEFAULT_SETTINGS[field]
        assert update.error == ""
        if update.state == pb.FIELD_STATE_APPLIED:
            assert update.HasField("elapsed")
            assert update.elapsed.ToNanoseconds() >= latency * 1e9 * 0.9
            assert update.elapsed.ToNanoseconds() < TIMEOUT * 1e9
        else:
            assert not update.HasField("elapsed")
    assert operation.HasField("settings")
    assert settings_from_proto(operation.settings) == session.server_settings
    assert session.server_settings == Settings({**DEFAULT_SETTINGS, **requested})
    assert operation.settings == response.settings
    assert operation.error_reason == ""
    assert operation.error_message == ""
    assert "acme" in operation.requested_by
    assert ACME_TOKEN not in operation.requested_by
    assert hash_token(ACME_TOKEN) not in operation.requested_by
    assert operation.HasField("start_time")
    assert operation.HasField("end_time")
    start = operation.start_time.ToNanoseconds() / 1e9
    end = operation.end_time.ToNanoseconds() / 1e9
    assert before - 1 <= start <= end <= after + 1
    assert end - start >= 2 * latency * 0.9


async def test_requested_by_names_the_instance_for_an_instance_token(gateway: Harness) -> None:
    response = await _unary(gateway, Settings({Field.PROFILE: "none"}), token=SALES_TOKEN)

    operation = await _get_operation(gateway, response.operation_id, token=SALES_TOKEN)

    assert "sales" in operation.requested_by
    assert "acme" not in operation.requested_by
    assert SALES_TOKEN not in operation.requested_by
    assert hash_token(SALES_TOKEN) not in operation.requested_by


async def test_list_update_operations_newest_first_in_pages(gateway: Harness) -> None:
    created: list[str] = []
    for value in ("none", "contacts", "all", "none", "contacts"):
        response = await _unary(gateway, Settings({Field.LAST_SEEN: value}))
        created.append(response.operation_id)
    other = await _unary(gateway, Settings({Field.LAST_SEEN: "none"}), instance="support")

    pages: list[pb.ListUpdateOperationsResponse] = []
    token = ""
    while True:
        page = await _list_page(gateway, page_size=2, page_token=token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10, "pagination does not end"

    assert [len(p.operations) for p in pages] == [2, 2, 1]
    assert [bool(p.next_page_token) for p in pages] == [True, True, False]
    listed = [o.id for p in pages for o in p.operations]
    assert len(set(listed)) == len(listed)
    assert listed == list(reversed(created))
    assert other.operation_id not in listed
    starts = [o.start_time.ToNanoseconds() for p in pages for o in p.operations]
    assert starts == sorted(starts, reverse=True)
    assert all(o.state == pb.OPERATION_STATE_COMPLETED for p in pages for o in p.operations)
    # The default page holds them all; the other instance has its own list.
    assert await _listed_ids(gateway) == listed
    assert await _listed_ids(gateway, "support") == [other.operation_id]


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "page_token",
    [
        "not-a-page-token",
        "abc",
        _b64(json.dumps({"started_at": 1.0, "id": "x"})),
        _b64(json.dumps(["x", 1.0])),
        _b64(json.dumps([1.0, "x", "y"])),
        _b64("not json"),
    ],
)
async def test_list_rejects_an_invalid_page_token(gateway: Harness, page_token: str) -> None:
    await _unary(gateway, Settings({Field.LAST_SEEN: "none"}))

    error = await _rpc_error(_list_page(gateway, page_token=page_token))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Invalid page_token"


async def test_unknown_operation_is_not_found(gateway: Harness) -> None:
    await _unary(gateway, Settings({Field.LAST_SEEN: "none"}))
    unknown = uuid.uuid4().hex

    error = await _rpc_error(_get_operation(gateway, unknown))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"Operation not found: {unknown}"


async def test_another_accounts_token_is_denied(gateway: Harness) -> None:
    response = await _unary(gateway, Settings({Field.LAST_SEEN: "none"}))

    get = await _rpc_error(_get_operation(gateway, response.operation_id, token=GLOBEX_TOKEN))
    listed = await _rpc_error(_list_page(gateway, token=GLOBEX_TOKEN))
    # An instance token may not read another instance's operations either.
    by_instance = await _rpc_error(
        _get_operation(gateway, response.operation_id, instance="support", token=SALES_TOKEN)
    )

    assert get.code() == grpc.StatusCode.PERMISSION_DENIED
    assert listed.code() == grpc.StatusCode.PERMISSION_DENIED
    assert by_instance.code() == grpc.StatusCode.PERMISSION_DENIED
    for error in (get, listed, by_instance):
        assert response.operation_id not in error.details()


async def test_operation_of_one_instance_is_not_found_via_another(gateway: Harness) -> None:
    response = await _unary(gateway, Settings({Field.LAST_SEEN: "none"}), instance="sales")

    error = await _rpc_error(_get_operation(gateway, response.operation_id, instance="support"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"Operation not found: {response.operation_id}"
    assert (await _get_operation(gateway, response.operation_id)).id == response.operation_id


async def test_list_rejects_a_negative_page_size_and_caps_a_large_one(gateway: Harness) -> None:
    for value in ("none", "contacts", "all"):
        await _unary(gateway, Settings({Field.LAST_SEEN: value}))

    error = await _rpc_error(_list_page(gateway, page_size=-1))
    large = await _list_page(gateway, page_size=10_000)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(large.operations) == 3
    assert large.next_page_token == ""


# -- failure policies: stream, journal and WhatsApp agree --------------------------------------


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


# -- a caller who leaves -----------------------------------------------------------------------


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


# -- request_id --------------------------------------------------------------------------------


async def test_unary_retry_with_the_same_request_id_sends_nothing(gateway: Harness) -> None:
    session = gateway.session()
    request_id = str(uuid.uuid4())
    first = await _unary(gateway, THREE_CHANGES, request_id=request_id)
    sent = list(session.sent)

    retry = await _unary(gateway, THREE_CHANGES, request_id=request_id)

    assert session.sent == sent
    assert retry.operation_id == first.operation_id
    assert list(retry.fields) == list(first.fields)
    assert retry.settings == first.settings
    assert retry.plan == first.plan
    assert retry == first
    assert await _listed_ids(gateway) == [first.operation_id]
    operation = await _get_operation(gateway, first.operation_id)
    assert operation.request_id == request_id


async def test_stream_retry_with_the_same_request_id_sends_nothing(gateway: Harness) -> None:
    session = gateway.session()
    request_id = str(uuid.uuid4())
    first, first_error = await _drain(_stream(gateway, THREE_CHANGES, request_id=request_id))
    sent = list(session.sent)

    retry, retry_error = await _drain(_stream(gateway, THREE_CHANGES, request_id=request_id))
    unary = await _unary(gateway, THREE_CHANGES, request_id=request_id)

    assert first_error is None
    assert retry_error is None
    assert session.sent == sent
    assert _plan(retry) == _plan(first)
    assert _plan(retry).operation_id
    assert _finals(_updates(retry)) == _finals(_updates(first))
    assert _snapshot(retry) == _snapshot(first)
    assert unary.operation_id == _plan(first).operation_id
    assert list(unary.fields) == _finals(_updates(first))
    assert await _listed_ids(gateway) == [_plan(first).operation_id]


async def test_retry_while_running_reattaches(make_gateway: GatewayFactory) -> None:
    gateway: Harness = await make_gateway(instances=_latency_instances(200))
    session = gateway.session()
    request_id = str(uuid.uuid4())
    first = _stream(gateway, THREE_CHANGES, request_id=request_id)
    first_plan = await first.read()
    assert isinstance(first_plan, pb.StreamUpdatePrivacySettingsResponse)
    retry = _stream(gateway, THREE_CHANGES, request_id=request_id)
    unary = _unary(gateway, THREE_CHANGES, request_id=request_id)

    (first_rest, first_error), (retried, retry_error), response = await asyncio.gather(
        _drain(first), _drain(retry), unary
    )

    assert first_error is None
    assert retry_error is None
    assert retried == [first_plan, *first_rest]
    assert response.operation_id == first_plan.plan.operation_id
    assert list(response.fields) == _finals(_updates(retried))
    assert _sets(session) == [SentStanza(f.spec.category, v) for f, v in THREE_CHANGES.items()]
    assert session.server_settings == _defaults_plus(THREE_CHANGES, THREE_CHANGES)
    assert await _listed_ids(gateway) == [first_plan.plan.operation_id]


async def test_a_reattached_retry_that_leaves_does_not_halt_the_update(
    make_gateway: GatewayFactory,
) -> None:
    gateway: Harness = await make_gateway(instances=_latency_instances(100))
    session = gateway.session()
    request_id = str(uuid.uuid4())
    first = _stream(gateway, FIVE_CHANGES, request_id=request_id)
    plan = await first.read()
    assert isinstance(plan, pb.StreamUpdatePrivacySettingsResponse)

    retry = _stream(gateway, FIVE_CHANGES, request_id=request_id)
    assert await retry.read() == plan
    retry.cancel()
    rest, error = await _drain(first)

    assert error is None
    assert await retry.code() == grpc.StatusCode.CANCELLED
    assert [u.state for u in _finals(_updates([plan, *rest]))] == [pb.FIELD_STATE_APPLIED] * 5
    assert session.server_settings == _defaults_plus(FIVE_CHANGES, FIVE_CHANGES)
    operation = await _get_operation(gateway, plan.plan.operation_id)
    assert operation.state == pb.OPERATION_STATE_COMPLETED


async def _unwedge() -> None:
    """Teardown hygiene, run after a test's assertions: closes engine updates that a crashed
    operation abandoned at a ``yield`` while holding the instance lock (the bug
    ``test_a_failed_journal_write_leaves_the_instance_free`` is about), so that the gateway can
    close instead of waiting for that lock forever and hanging the fixture's teardown.

    Such a generator stays alive as long as anything holds the crash's traceback (the journal
    writer thread until its next batch, pytest's log capture until the test ends).
    """
    for leaked in [
        o
        for o in gc.get_objects()
        if isinstance(o, types.AsyncGeneratorType)
        and o.ag_code is engine.update.__code__
        and o.ag_frame is not None
        and o.ag_await is None
    ]:
        await leaked.aclose()


async def _completes_within(awaitable: Awaitable[Any], seconds: float) -> bool:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        return False
    return True


async def test_concurrent_calls_with_one_request_id_run_one_update(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries that arrive together (each on a connection of its own) follow one operation,
    even when the journal is slow to answer whether the request_id is known."""
    gateway: Harness = await make_gateway(instances=_latency_instances(300))
    session = gateway.session()
    await gateway.get()
    journal = gateway.gateway.operations.journal
    real_find = journal.find_request

    def slow_find(instance: str, request_id: str) -> Any:
        time.sleep(0.2)  # a slow disk (runs on the journal's reader thread)
        return real_find(instance, request_id)

    monkeypatch.setattr(journal, "find_request", slow_find)
    request_id = str(uuid.uuid4())
    channels = [aio.insecure_channel(gateway.address) for _ in range(3)]
    try:
        stubs = [pb_grpc.PrivacyServiceStub(c) for c in channels]
        request = pb.UpdatePrivacySettingsRequest(
            instance="sales", settings=settings_to_proto(THREE_CHANGES), request_id=request_id
        )
        results = await asyncio.gather(
            *(
                s.UpdatePrivacySettings(request, metadata=gateway.metadata(), timeout=TIMEOUT)
                for s in stubs
            ),
            return_exceptions=True,
        )
        errors = [
            f"{r.code().name}: {r.details()}" if isinstance(r, aio.AioRpcError) else repr(r)
            for r in results
            if isinstance(r, BaseException)
        ]
        assert errors == []
        responses = [r for r in results if isinstance(r, pb.UpdatePrivacySettingsResponse)]
        assert len({r.operation_id for r in responses}) == 1
        assert _sets(session) == [SentStanza(f.spec.category, v) for f, v in THREE_CHANGES.items()]
        assert len(await _listed_ids(gateway)) == 1
    finally:
        for channel in channels:
            await channel.close()
        await _unwedge()


async def _follow(operation: Operation) -> list[Any]:
    return [event async for event in operation.follow()]


async def test_operations_started_together_with_one_request_id_are_one(tmp_path: Path) -> None:
    """The same race without gRPC: two starts with one request_id, before either has run."""
    operations = Operations(tmp_path / "journal.db", 86400)
    await operations.start_up()
    session = SimulatedSession(latency=0.05)
    instance = Instance("sales", "acme", session)
    request_id = str(uuid.uuid4())

    def request(requested: Settings, request_id: str | None) -> UpdateRequest:
        return UpdateRequest(dict(requested), UpdateOptions(), request_id, "account:acme#t")

    try:
        first, second = await asyncio.gather(
            operations.start(instance, request(THREE_CHANGES, request_id), None),
            operations.start(instance, request(THREE_CHANGES, request_id), None),
        )
        followed = await asyncio.wait_for(
            asyncio.gather(_follow(first), _follow(second), return_exceptions=True), TIMEOUT
        )
        later = await operations.start(
            instance, request(Settings({Field.GROUP_ADD: "contacts"}), None), None
        )
        free = await _completes_within(_follow(later), 3)

        assert [str(e) for e in followed if isinstance(e, BaseException)] == []
        assert second.id == first.id
        assert free, "the instance stayed locked after the duplicate start"
        assert _sets(session) == [
            *(SentStanza(f.spec.category, v) for f, v in THREE_CHANGES.items()),
            SentStanza("groupadd", "contacts"),
        ]
    finally:
        await _unwedge()
        await asyncio.wait_for(operations.close(), TIMEOUT)


async def test_a_failed_journal_write_leaves_the_instance_free(
    gateway: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal write that fails (a full disk) fails that update, not every later one."""
    session = gateway.session()
    journal = gateway.gateway.operations.journal
    real_begin = journal.begin

    def full_disk(db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def failing_begin(row: Any) -> Any:
        monkeypatch.setattr(journal, "begin", real_begin)  # only this once
        return journal._submit(full_disk)

    monkeypatch.setattr(journal, "begin", failing_begin)
    try:
        failed = await _rpc_error(_unary(gateway, Settings({Field.LAST_SEEN: "none"})))
        assert failed.code() == grpc.StatusCode.INTERNAL
        assert "database or disk is full" in failed.details()
        assert session.server_settings[Field.LAST_SEEN] == DEFAULT_SETTINGS[Field.LAST_SEEN]

        try:
            later = await _unary(gateway, Settings({Field.STATUS: "none"}), rpc_timeout=3)
        except aio.AioRpcError as error:
            pytest.fail(f"the next update did not run: {error.code().name} {error.details()}")

        assert session.server_settings[Field.STATUS] == "none"
        assert await _listed_ids(gateway) == [later.operation_id]
    finally:
        await _unwedge()


@pytest.mark.parametrize(
    "change",
    [
        {"settings": Settings({Field.LAST_SEEN: "none"})},
        {"failure_policy": pb.FAILURE_POLICY_ROLLBACK},
        {"force": True},
    ],
    ids=["settings", "policy", "force"],
)
async def test_request_id_with_a_different_request_is_invalid(
    gateway: Harness, change: dict[str, Any]
) -> None:
    session = gateway.session()
    request_id = str(uuid.uuid4())
    first = await _unary(gateway, THREE_CHANGES, request_id=request_id)
    sent = list(session.sent)
    settings = change.pop("settings", THREE_CHANGES)

    unary = await _rpc_error(_unary(gateway, settings, request_id=request_id, **change))
    stream_messages, stream_error = await _drain(
        _stream(gateway, settings, request_id=request_id, **change)
    )

    message = f"request_id {request_id} was already used for a different request"
    assert unary.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unary.details() == message
    assert stream_messages == []
    assert stream_error is not None
    assert stream_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stream_error.details() == message
    assert session.sent == sent
    assert await _listed_ids(gateway) == [first.operation_id]


async def test_request_id_with_a_different_request_while_running_is_invalid(
    make_gateway: GatewayFactory,
) -> None:
    gateway: Harness = await make_gateway(instances=_latency_instances(100))
    session = gateway.session()
    request_id = str(uuid.uuid4())
    first = _stream(gateway, THREE_CHANGES, request_id=request_id)
    plan = await first.read()
    assert isinstance(plan, pb.StreamUpdatePrivacySettingsResponse)

    error = await _rpc_error(
        _unary(gateway, Settings({Field.GROUP_ADD: "contacts"}), request_id=request_id)
    )
    rest, first_error = await _drain(first)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"request_id {request_id} was already used for a different request"
    assert first_error is None
    assert [u.state for u in _finals(_updates([plan, *rest]))] == [pb.FIELD_STATE_APPLIED] * 3
    assert _sets(session) == [SentStanza(f.spec.category, v) for f, v in THREE_CHANGES.items()]
    assert session.server_settings[Field.GROUP_ADD] == DEFAULT_SETTINGS[Field.GROUP_ADD]


@pytest.mark.parametrize(
    "request_id", ["not-a-uuid", "1234", "g" * 32, str(uuid.uuid4()) + "0", " "]
)
async def test_a_request_id_that_is_not_a_uuid_is_invalid(
    gateway: Harness, request_id: str
) -> None:
    session = gateway.session()
    await gateway.get()
    sent = list(session.sent)

    unary = await _rpc_error(_unary(gateway, THREE_CHANGES, request_id=request_id))
    messages, stream_error = await _drain(_stream(gateway, THREE_CHANGES, request_id=request_id))

    assert unary.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert messages == []
    assert stream_error is not None
    assert stream_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert session.sent == sent
    assert await _listed_ids(gateway) == []


async def _failed_update(
    gateway: Harness, request_id: str
) -> tuple[aio.AioRpcError, status_pb2.Status]:
    error = await _rpc_error(_unary(gateway, EVERY_FIELD_CHANGED, request_id=request_id))
    status = rpc_status.from_call(error)
    assert status is not None
    return error, status


async def test_retry_of_a_failed_operation_returns_the_same_error(gateway: Harness) -> None:
    session = gateway.session()
    session.fail_field(Field.PROFILE, REFUSAL)
    request_id = str(uuid.uuid4())
    first, first_status = await _failed_update(gateway, request_id)
    session.clear_faults()  # were it sent again, it would succeed now
    sent, held = list(session.sent), session.server_settings

    retry, retry_status = await _failed_update(gateway, request_id)
    messages, stream_error = await _drain(
        _stream(gateway, EVERY_FIELD_CHANGED, request_id=request_id)
    )

    assert session.sent == sent
    assert session.server_settings == held
    assert first.code() == grpc.StatusCode.INTERNAL
    assert retry.code() == first.code()
    assert retry.details() == first.details()
    assert error_info(retry_status).reason == error_info(first_status).reason
    first_detail = update_response(first_status)
    assert update_response(retry_status) == first_detail
    assert stream_error is not None
    assert stream_error.code() == first.code()
    assert stream_error.details() == first.details()
    assert _finals(_updates(messages)) == list(first_detail.fields)
    assert _snapshot(messages) == first_detail.settings
    assert len(await _listed_ids(gateway)) == 1


async def test_retry_of_a_failed_operation_returns_the_same_error_info(gateway: Harness) -> None:
    """The same status again: ErrorInfo's metadata (applied, not_attempted, field...) too."""
    session = gateway.session()
    session.fail_field(Field.PROFILE, REFUSAL)
    request_id = str(uuid.uuid4())
    _, first_status = await _failed_update(gateway, request_id)

    _, retry_status = await _failed_update(gateway, request_id)

    assert dict(error_info(retry_status).metadata) == dict(error_info(first_status).metadata)


# -- validate_only and force -------------------------------------------------------------------


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


# -- the property: stream, snapshot, journal and WhatsApp agree --------------------------------


@dataclass(frozen=True)
class Step:
    requested: dict[Field, str]
    refused: frozenset[Field]
    stanzas_before_drop: int | None
    policy: FailurePolicy
    force: bool


_values = {f: st.sampled_from(f.spec.values) for f in Field}
_accounts = st.fixed_dictionaries(_values).map(Settings)
_steps = st.builds(
    Step,
    requested=st.sets(st.sampled_from(list(Field)), min_size=1).flatmap(
        lambda fields: st.fixed_dictionaries({f: _values[f] for f in fields})
    ),
    refused=st.frozensets(st.sampled_from(list(Field)), max_size=3),
    stanzas_before_drop=st.none() | st.integers(0, 5),
    policy=st.sampled_from(list(FailurePolicy)),
    force=st.booleans(),
)


def _check_policy(step: Step, finals: list[FieldEvent], before: Settings) -> None:
    """The outcomes follow the policy."""
    firsts = [e for e in finals if e.state not in (FieldState.RESTORED, FieldState.RESTORE_FAILED)]
    restores = finals[len(firsts) :]
    assert [e.field for e in firsts] == list(Settings(step.requested))
    failed = [i for i, e in enumerate(firsts) if e.state is FieldState.FAILED]
    if step.policy is FailurePolicy.CONTINUE or not failed:
        assert all(e.state is not FieldState.NOT_ATTEMPTED for e in firsts)
    else:
        assert len(failed) == 1
        after = firsts[failed[0] + 1 :]
        assert all(e.state is FieldState.NOT_ATTEMPTED for e in after)
    if step.policy is FailurePolicy.ROLLBACK and failed:
        applied = [e.field for e in firsts if e.state is FieldState.APPLIED]
        assert [e.field for e in restores] == list(reversed(applied))
    else:
        assert restores == []
    for event in firsts:
        if event.state is FieldState.UNCHANGED:
            assert not step.force
            assert before[event.field] == event.value


async def _run_step(operations: Operations, instance: Instance, step: Step) -> None:
    """Runs one update with the step's faults and checks every invariant."""
    session = instance.session
    assert isinstance(session, SimulatedSession)
    session.clear_faults()
    session.reconnect()
    for field in step.refused:
        session.fail_field(field, REFUSAL)
    if step.stanzas_before_drop is not None:
        session.drop_after(step.stanzas_before_drop)
    before = session.server_settings
    journaled = len((await operations.list(instance, 100, ""))[0])
    request = UpdateRequest(
        step.requested, UpdateOptions(step.policy, step.force), None, "account:acme#test"
    )
    operation = await operations.start(instance, request, None)
    events: list[Any] = []
    raised: GatewayError | None = None
    try:
        async for event in operation.follow():
            events.append(event)
    except GatewayError as error:
        raised = error
    rows, _ = await operations.list(instance, 100, "")

    if not events:
        # Refused before the plan (the connection dropped at the one-time fetch): nothing sent,
        # nothing journaled.
        assert raised is not None
        assert raised.reason == "INSTANCE_NOT_CONNECTED"
        assert session.server_settings == before
        assert len(rows) == journaled
        return
    # A failed update ends with its snapshot, which carries the error (the servicer raises it);
    # only a refusal before the plan is raised by follow().
    assert raised is None
    assert len(rows) == journaled + 1
    assert rows[0].id == operation.id
    plan, snapshot = events[0], events[-1]
    assert isinstance(plan, Plan)
    assert isinstance(snapshot, Snapshot)
    # The snapshot the caller receives is what WhatsApp holds.
    assert snapshot.settings == session.server_settings
    assert snapshot.settings.complete
    finals = [e for e in events if isinstance(e, FieldEvent) and e.state in FINAL_STATES]
    assert list(snapshot.outcomes) == finals
    _check_policy(step, finals, before)
    # WhatsApp holds exactly what the events say was applied and restored.
    model = dict(before)
    for event in finals:
        if event.state is FieldState.APPLIED:
            model[event.field] = event.value
        elif event.state is FieldState.RESTORED:
            model[event.field] = before[event.field]
    assert session.server_settings == Settings(model)
    # The journal recorded exactly those final events, and how the update ended.
    row = await operations.get(instance, operation.id)
    assert list(row.outcomes) == finals
    assert row.settings == snapshot.settings
    assert row.state.name == ("COMPLETED" if snapshot.error is None else "FAILED")
    if snapshot.error is not None:
        assert row.error is not None
        assert row.error.message == snapshot.error.message
        assert row.error.reason == snapshot.error.reason


async def _run_property(account: Settings, steps: list[Step]) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        operations = Operations(Path(data_dir) / "journal.db", 86400)
        await operations.start_up()
        instance = Instance("sales", "acme", SimulatedSession(account))
        try:
            for step in steps:
                await _run_step(operations, instance, step)
        finally:
            await operations.close()


@hypothesis_settings(max_examples=50, deadline=None)
@given(account=_accounts, steps=st.lists(_steps, min_size=1, max_size=4))
def test_random_updates_agree_with_the_journal_and_whatsapp(
    account: Settings, steps: list[Step]
) -> None:
    asyncio.run(_run_property(account, steps))
