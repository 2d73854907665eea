"""Retries with a request_id: a retry sends nothing again and gets its operation back.

Whether the first call completed, failed or is still running (a retry then reattaches to it), and
however many retries arrive together, one request_id is one operation. A request_id used again
for a different request, or one that is not a UUID, is refused before anything is sent. And a
journal write that fails fails its own update only.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
import types
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from grpc import aio
from grpc_status import rpc_status

from service import engine
from service.engine import UpdateOptions
from service.grpc.convert import settings_to_proto
from service.instances import Instance
from service.journal.sqlite import sqlite_journal
from service.operations import Operation, Operations, UpdateRequest
from service.operations.journaling import RETRY_PAUSES
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.simulated import DEFAULT_SETTINGS, SentStanza, SimulatedSession
from service.settings import Field, Settings
from tests.helpers.harness import GatewayFactory, Harness
from tests.helpers.operations import (
    REFUSAL,
    TIMEOUT,
    _defaults_plus,
    _drain,
    _finals,
    _get_operation,
    _latency_instances,
    _listed_ids,
    _plan,
    _rpc_error,
    _sets,
    _snapshot,
    _stream,
    _unary,
    _updates,
)
from tests.helpers.rich_status import error_info, update_response
from tests.helpers.updates import EVERY_FIELD_CHANGED, FIVE_CHANGES

#: Three fields, each changed.
THREE_CHANGES = Settings({f: EVERY_FIELD_CHANGED[f] for f in list(Field)[:3]})


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
    journal = gateway.gateway.operations.journal.sqlite
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
    operations = Operations(sqlite_journal(tmp_path / "journal.db"), 86400)
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
    """A journal that cannot write an operation's row (a full disk, on every retry) refuses that
    update, with nothing sent, and not every later one."""
    session = gateway.session()
    journal = gateway.gateway.operations.journal.sqlite
    real_begin = journal.begin
    attempts = []

    def failing_begin(row: Any) -> asyncio.Future[None]:
        """``begin`` as a full disk answers it: the write's future fails with SQLite's error."""
        attempts.append(row.id)
        if len(attempts) == 1 + len(RETRY_PAUSES):  # the update's last try: then it works again
            monkeypatch.setattr(journal, "begin", real_begin)
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(sqlite3.OperationalError("database or disk is full"))
        return failed

    monkeypatch.setattr(journal, "begin", failing_begin)
    try:
        failed = await _rpc_error(_unary(gateway, Settings({Field.LAST_SEEN: "none"})))
        assert failed.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.details() == (
            "The operation journal cannot record updates: database or disk is full"
        )
        assert len(set(attempts)) == 1
        assert len(attempts) == 1 + len(RETRY_PAUSES)
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

    message = f"Request id {request_id} was already used for a different request"
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
    assert error.details() == f"Request id {request_id} was already used for a different request"
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
