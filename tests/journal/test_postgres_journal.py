"""The operation journal on PostgreSQL: the same records as SQLite's, fenced by lease tokens.

Against a real server (``postgres_server``, a fresh database per test): what both stores read
back for the same writes, request-id lookups and pages; the fence (a lease another replica
took, or one that expired, refuses the write in the database itself, changing nothing);
``adopt`` marking only its instance's RUNNING operations; a request id journaled by another
replica in the same instant; and, through a real gateway, a database stopped mid-update.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_status import rpc_status

from service.assembly import build_gateway
from service.cluster import DatabaseError
from service.config import from_mapping
from service.engine import FailurePolicy, FieldEvent, FieldState, UpdateOptions
from service.errors import Code, GatewayError
from service.instances import Instance
from service.journal.postgres import PostgresJournal, postgres_journal
from service.journal.protocol import JournalStore, RequestExists, StaleLease
from service.journal.sqlite import SqliteJournal
from service.operations import Operations, UpdateRequest
from service.operations.journaling import RETRY_PAUSES
from service.operations.record import OperationError, OperationRecord, OperationState
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import SentStanza, SimulatedSession
from service.settings import Field, Settings
from tests.helpers.harness import gateway_config
from tests.helpers.leases import TestLeases, expire, steal, take_lease
from tests.helpers.operations import (
    _defaults_plus,
    _drain,
    _finals,
    _rpc_error,
    _sets,
    _stream,
    _unary,
    _updates,
)
from tests.helpers.postgres import PostgresServer
from tests.helpers.rich_status import error_info
from tests.helpers.updates import FIVE_CHANGES

FIELDS = list(FIVE_CHANGES)
LATER = Settings({Field.GROUP_ADD: "contacts"})
APPLIED = FieldEvent(Field.LAST_SEEN, FieldState.APPLIED, "none", "all", 0.25)
FAILED = FieldEvent(Field.ONLINE, FieldState.FAILED, "match_last_seen", "all", 1.5, "refused")
SETTINGS = Settings({Field.LAST_SEEN: "none", Field.ONLINE: "all"})
ERROR = OperationError(Code.FAILED_PRECONDITION, "FIELD_FAILED", "online failed", {"a": "b"})
SLOW_SALES = [
    {"name": "sales", "account": "acme", "latency_ms": 200},
    {"name": "support", "account": "acme"},
]


def _operation(
    operation_id: str,
    *,
    instance: str = "sales",
    request_id: str | None = None,
    started_at: float = 1000.0,
) -> OperationRecord:
    return OperationRecord(
        id=operation_id,
        instance=instance,
        requested_by="account:acme#t",
        request_id=request_id,
        body_hash="hash",
        requested={Field.LAST_SEEN: "none", Field.ONLINE: "match_last_seen"},
        policy=FailurePolicy.CONTINUE,
        validate_only=False,
        force=True,
        state=OperationState.RUNNING,
        started_at=started_at,
    )


async def _write_one_update(store: JournalStore, operation_id: str) -> None:
    begun = _operation(operation_id, request_id=f"req-{operation_id}")
    await store.begin(begun)
    await store.record("sales", operation_id, 0, APPLIED)
    await store.record("sales", operation_id, 1, FAILED)
    await store.finish("sales", operation_id, OperationState.FAILED, SETTINGS, ERROR)


def _without_end_time(record: OperationRecord | None) -> OperationRecord:
    assert record is not None
    assert record.ended_at is not None
    return dataclasses.replace(record, ended_at=None)


async def _lease_token(url: str, instance: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        token = await connection.fetchval(
            "SELECT token FROM gateway_leases WHERE instance = $1", instance
        )
    finally:
        await connection.close()
    assert isinstance(token, int)
    return token


async def _rows(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


# -- the same records as SQLite's --------------------------------------------------------------


async def test_a_written_update_reads_back_as_it_was_written(store: JournalStore) -> None:
    await _write_one_update(store, "op-1")

    record = await store.get("sales", "op-1")

    assert _without_end_time(record) == dataclasses.replace(
        _operation("op-1", request_id="req-op-1"),
        state=OperationState.FAILED,
        settings=SETTINGS,
        error=ERROR,
        outcomes=(APPLIED, FAILED),
    )
    assert await store.find_request("sales", "req-op-1") == record
    assert await store.find_request("support", "req-op-1") is None
    assert await store.get("support", "op-1") is None
    assert await store.list("sales", 10) == ([record], "")


async def test_both_stores_hold_the_same_records_and_pages_for_the_same_writes(
    sqlite_store: SqliteJournal, pg_journal: PostgresJournal
) -> None:
    """One sequence of writes, given to each store: every read answers the same."""
    stores: list[JournalStore] = [sqlite_store, pg_journal]
    starts = [5.0, 3.0, 3.0, 3.0, 1.0, 7.5]  # ties: the id breaks them
    for store in stores:
        for n, started_at in enumerate(starts):
            await store.begin(_operation(f"op-{n}", started_at=started_at, request_id=f"r{n}"))
            await store.record("sales", f"op-{n}", 0, APPLIED)
        await store.begin(_operation("op-other", instance="support", started_at=4.0))
        await store.finish("sales", "op-2", OperationState.COMPLETED, SETTINGS, None)
        await store.finish("sales", "op-3", OperationState.FAILED, None, ERROR)

    pages: list[list[tuple[list[OperationRecord], str]]] = []
    for store in stores:
        walked, token = [], ""
        while True:
            page, token = await store.list("sales", 2, token)
            walked.append(([_normalized(r) for r in page], token))
            if not token:
                break
        pages.append(walked)
    sqlite_pages, pg_pages = pages

    assert pg_pages == sqlite_pages
    assert [r.id for page, _ in pg_pages for r in page] == [
        "op-5", "op-0", "op-3", "op-2", "op-1", "op-4",
    ]  # fmt: skip
    for n in range(len(starts)):
        assert _normalized(await pg_journal.find_request("sales", f"r{n}")) == _normalized(
            await sqlite_store.find_request("sales", f"r{n}")
        )
    assert await pg_journal.list("support", 10) == await sqlite_store.list("support", 10)


def _normalized(record: OperationRecord | None) -> OperationRecord | None:
    """The record with its end time (each store's own clock reading) reduced to whether it
    has one."""
    if record is None or record.ended_at is None:
        return record
    return dataclasses.replace(record, ended_at=1.0)


@pytest.mark.parametrize("token", ["not-a-token", "W10=", "x" * 300])
async def test_an_invalid_page_token_is_a_value_error(
    pg_journal: PostgresJournal, token: str
) -> None:
    with pytest.raises(ValueError, match="invalid page_token"):
        await pg_journal.list("sales", 2, token)


async def test_a_second_begin_of_one_request_id_is_that_request(
    pg_journal: PostgresJournal,
) -> None:
    await pg_journal.begin(_operation("op-1", request_id="req-1"))

    with pytest.raises(RequestExists):
        await pg_journal.begin(_operation("op-2", request_id="req-1"))
    # Another instance's request ids are its own.
    await pg_journal.begin(_operation("op-3", instance="support", request_id="req-1"))

    found = await pg_journal.find_request("sales", "req-1")
    assert found is not None
    assert found.id == "op-1"
    assert await pg_journal.get("sales", "op-2") is None


async def test_a_begin_retried_after_it_landed_is_done(pg_journal: PostgresJournal) -> None:
    """An attempt whose commit landed but whose answer was lost is tried again: no error."""
    await pg_journal.begin(_operation("op-1"))
    await pg_journal.begin(_operation("op-1"))
    assert (await pg_journal.list("sales", 10))[0][0].id == "op-1"


# -- the fence ---------------------------------------------------------------------------------


async def test_each_write_carries_the_lease_token(
    pg_journal: PostgresJournal, database_url: str
) -> None:
    await _write_one_update(pg_journal, "op-1")
    token = await _lease_token(database_url, "sales")

    operations = await _rows(database_url, "SELECT lease_token FROM operations")
    outcomes = await _rows(database_url, "SELECT lease_token FROM outcomes")

    assert [r["lease_token"] for r in operations] == [token]
    assert [r["lease_token"] for r in outcomes] == [token, token]


async def test_a_write_under_a_lease_another_replica_took_is_refused_and_changes_nothing(
    pg_journal: PostgresJournal, database_url: str
) -> None:
    await pg_journal.begin(_operation("op-1"))
    await pg_journal.record("sales", "op-1", 0, APPLIED)
    before = await pg_journal.get("sales", "op-1")
    ours = await _lease_token(database_url, "sales")

    theirs = await steal(database_url, "sales")  # this replica does not know yet

    assert theirs != ours
    with pytest.raises(StaleLease, match=f"lease token {ours} is no longer"):
        await pg_journal.record("sales", "op-1", 1, FAILED)
    with pytest.raises(StaleLease):
        await pg_journal.finish("sales", "op-1", OperationState.COMPLETED, SETTINGS, None)
    with pytest.raises(StaleLease):
        await pg_journal.begin(_operation("op-2"))
    with pytest.raises(StaleLease):
        await pg_journal.mark_interrupted("sales")
    assert await pg_journal.get("sales", "op-1") == before
    assert await pg_journal.get("sales", "op-2") is None
    rows = await _rows(database_url, "SELECT state, lease_token FROM operations")
    assert [(r["state"], r["lease_token"]) for r in rows] == [("RUNNING", ours)]
    # The instance whose lease did not move writes on.
    await pg_journal.begin(_operation("op-3", instance="support"))


async def test_an_expired_lease_fences(pg_journal: PostgresJournal, database_url: str) -> None:
    await pg_journal.begin(_operation("op-1"))

    await expire(database_url, "sales")

    with pytest.raises(StaleLease):
        await pg_journal.finish("sales", "op-1", OperationState.COMPLETED, None, None)
    with pytest.raises(StaleLease):
        await pg_journal.begin(_operation("op-2"))
    record = await pg_journal.get("sales", "op-1")
    assert record is not None
    assert record.state is OperationState.RUNNING
    assert await pg_journal.get("sales", "op-2") is None


async def test_an_instance_without_a_lease_is_not_written(
    pg_journal: PostgresJournal, leases: TestLeases
) -> None:
    leases.forget("sales")
    with pytest.raises(StaleLease, match="holds no lease"):
        await pg_journal.begin(_operation("op-1"))
    assert await pg_journal.list("sales", 10) == ([], "")


# -- INTERRUPTED across replicas ---------------------------------------------------------------


async def test_adopt_marks_only_that_instances_running_operations(database_url: str) -> None:
    """A previous owner left ``sales`` and ``support`` operations RUNNING: start-up marks
    nothing (they may be running elsewhere), and adopting ``sales`` marks only its own."""
    previous = TestLeases(database_url, replica_id="replica-dead")
    await previous.take("sales", "support")
    journal = await postgres_journal(database_url, previous)()
    try:
        await journal.begin(_operation("sales-running", started_at=1.0))
        await journal.begin(_operation("sales-done", started_at=2.0))
        await journal.finish("sales", "sales-done", OperationState.COMPLETED, None, None)
        await journal.begin(_operation("support-running", instance="support", started_at=3.0))
    finally:
        await journal.close()

    leases = TestLeases(database_url)
    await leases.take("sales")  # a new token: this replica is sales's owner now
    operations = Operations(postgres_journal(database_url, leases), 86400)
    await operations.start_up()
    try:
        states = await _states(database_url)
        assert states == {
            "sales-running": "RUNNING",
            "sales-done": "COMPLETED",
            "support-running": "RUNNING",
        }
        assert await operations.adopt("sales") == 1
        assert await operations.adopt("sales") == 0
        with pytest.raises(StaleLease):  # support's lease is still the other replica's
            await operations.adopt("support")
    finally:
        await operations.close()

    assert await _states(database_url) == {
        "sales-running": "INTERRUPTED",
        "sales-done": "COMPLETED",
        "support-running": "RUNNING",
    }
    rows = await _rows(
        database_url, "SELECT error_reason, lease_token FROM operations WHERE id = 'sales-running'"
    )
    assert [(r["error_reason"], r["lease_token"]) for r in rows] == [
        ("INTERRUPTED", leases.token("sales"))
    ]


async def test_adopt_spares_what_this_replica_runs(database_url: str) -> None:
    leases = TestLeases(database_url)
    await leases.take("sales")
    operations = Operations(postgres_journal(database_url, leases), 86400)
    await operations.start_up()
    instance = Instance("sales", "acme", SimulatedSession(latency=0.3))
    try:
        running = await operations.start(instance, _request(Settings(FIVE_CHANGES)), None)
        await _until_journaled(operations, instance, running.id)
        assert await operations.adopt("sales") == 0
        _, snapshot = await asyncio.wait_for(running.outcome(), 10)
        assert snapshot.error is None
    finally:
        await operations.close()
    assert await _states(database_url) == {running.id: "COMPLETED"}


async def _states(url: str) -> dict[str, str]:
    return {r["id"]: r["state"] for r in await _rows(url, "SELECT id, state FROM operations")}


def _request(requested: Settings, request_id: str | None = None) -> UpdateRequest:
    return UpdateRequest(dict(requested), UpdateOptions(), request_id, "account:acme#t")


async def _until_journaled(operations: Operations, instance: Instance, operation_id: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            await operations.get(instance, operation_id)
            return
        except Exception:
            assert time.monotonic() < deadline, "the operation was never journaled"
            await asyncio.sleep(0.01)


# -- request ids across replicas ---------------------------------------------------------------


async def test_a_request_id_another_replica_journaled_first_is_that_operation(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas take one request id in the same instant: this one's lookup missed the
    other's row (not yet committed), and its own row then runs into it. It is that operation:
    its events, its id, and nothing sent."""
    leases = TestLeases(database_url)
    await leases.take("sales")
    request_id = str(uuid.uuid4())
    other = await postgres_journal(database_url, leases)()
    try:
        first = dataclasses.replace(
            _operation("op-elsewhere", request_id=request_id),
            requested=dict(FIVE_CHANGES),
            policy=FailurePolicy.STOP,
            force=False,
            body_hash=_request(Settings(FIVE_CHANGES), request_id).fingerprint(),
        )
        await other.begin(first)
        await other.record("sales", "op-elsewhere", 0, APPLIED)
        await other.finish("sales", "op-elsewhere", OperationState.COMPLETED, SETTINGS, None)
    finally:
        await other.close()

    operations = Operations(postgres_journal(database_url, leases), 86400)
    await operations.start_up()
    session = SimulatedSession()
    instance = Instance("sales", "acme", session)
    real_find = operations.journal.find_request
    lookups: list[str] = []

    async def not_yet_committed(instance: str, request_id: str) -> OperationRecord | None:
        lookups.append(request_id)
        if len(lookups) == 1:
            return None  # the other replica's insert had not committed when this one looked
        return await real_find(instance, request_id)

    monkeypatch.setattr(operations.journal, "find_request", not_yet_committed)
    try:
        operation = await operations.start(
            instance, _request(Settings(FIVE_CHANGES), request_id), None
        )
        events = [e async for e in operation.follow()]
        # A different request under the same id is refused, as on one replica.
        with pytest.raises(GatewayError, match="already used for a different request"):
            await operations.start(instance, _request(LATER, request_id), None)
    finally:
        await operations.close()

    assert lookups == [request_id, request_id, request_id]
    assert operation.id == "op-elsewhere"
    assert _sets(session) == []
    assert [e for e in events if isinstance(e, FieldEvent)] == [APPLIED]
    assert await _states(database_url) == {"op-elsewhere": "COMPLETED"}


# -- a database that is gone -------------------------------------------------------------------


async def test_a_database_stopped_mid_update_stops_it_and_the_journal_catches_up(
    private_postgres: PostgresServer, make_pg_gateway: Any
) -> None:
    """The server stops while the second stanza is in flight: its outcome cannot land, so no
    third stanza goes out; the caller is told what is live; the instance refuses updates
    (JOURNAL_UNAVAILABLE) while the journal owes writes; and once the server is back the
    journal holds what the stream said."""
    url = private_postgres.new_database("gateway")
    gateway, _ = await make_pg_gateway(url, instances=SLOW_SALES)
    session = gateway.session()
    call = _stream(gateway, FIVE_CHANGES)
    plan = await call.read()
    assert isinstance(plan, pb.StreamUpdatePrivacySettingsResponse)
    await _until(lambda: len(_sets(session)) == 2)

    private_postgres.stop()
    try:
        messages, error = await _drain(call)
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(error)
        assert status is not None
        assert error_info(status).reason == "JOURNAL_FAILED"
        finals = _finals(_updates([plan, *messages]))
        assert [u.state for u in finals] == [pb.FIELD_STATE_APPLIED] * 2 + [
            pb.FIELD_STATE_NOT_ATTEMPTED
        ] * 3
        applied = [SentStanza(f.spec.category, FIVE_CHANGES[f]) for f in FIELDS[:2]]
        assert _sets(session) == applied
        assert session.server_settings == _defaults_plus(FIVE_CHANGES, FIELDS[:2])

        refused = await _rpc_error(_unary(gateway, LATER))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        refusal = rpc_status.from_call(refused)
        assert refusal is not None
        assert error_info(refusal).reason == "JOURNAL_UNAVAILABLE"
        assert url not in refused.details()
        assert _sets(session) == applied
    finally:
        private_postgres.start()

    operation = await _journaled_again(gateway, plan.plan.operation_id)
    assert operation.state == pb.OPERATION_STATE_FAILED
    assert operation.error_reason == "JOURNAL_FAILED"
    assert [(u.field, u.state) for u in operation.fields] == [(u.field, u.state) for u in finals]
    later = await _accepted_again(gateway)
    assert later.settings.permissions.group_add != 0


async def test_a_database_gone_before_an_update_refuses_it_and_sends_nothing(
    private_postgres: PostgresServer, make_pg_gateway: Any
) -> None:
    url = private_postgres.new_database("gateway")
    gateway, _ = await make_pg_gateway(url)
    private_postgres.stop()
    try:
        started = time.monotonic()
        error = await _rpc_error(_unary(gateway, FIVE_CHANGES))
        took = time.monotonic() - started
        await gateway.get("support")  # the loop was never blocked
    finally:
        private_postgres.start()

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "JOURNAL_UNAVAILABLE"
    assert error.details().startswith("The operation journal cannot record updates")
    assert url not in error.details()
    assert _sets(gateway.session()) == []
    assert took >= sum(RETRY_PAUSES)  # tried again before giving up
    await _accepted_again(gateway)


async def test_a_lease_taken_mid_update_stops_it_after_the_stanza_in_flight(
    database_url: str, make_pg_gateway: Any
) -> None:
    """Another replica takes ``sales`` while its second stanza is in flight: that outcome's
    write is fenced off, so no third stanza goes out, and the caller is told what is live."""
    gateway, leases = await make_pg_gateway(database_url, instances=SLOW_SALES)
    session = gateway.session()
    ours = leases.token("sales")
    call = _stream(gateway, FIVE_CHANGES)
    plan = await call.read()
    assert isinstance(plan, pb.StreamUpdatePrivacySettingsResponse)
    await _until(lambda: len(_sets(session)) == 2)

    await steal(database_url, "sales")

    messages, error = await _drain(call)
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "JOURNAL_FAILED"
    finals = _finals(_updates([plan, *messages]))
    assert [u.state for u in finals] == [pb.FIELD_STATE_APPLIED] * 2 + [
        pb.FIELD_STATE_NOT_ATTEMPTED
    ] * 3
    assert _sets(session) == [SentStanza(f.spec.category, FIVE_CHANGES[f]) for f in FIELDS[:2]]
    # The journal holds what was written under this replica's lease, and nothing after.
    rows = await _rows(database_url, "SELECT state, lease_token FROM operations")
    assert [(r["state"], r["lease_token"]) for r in rows] == [("RUNNING", ours)]
    outcomes = await _rows(database_url, "SELECT position FROM outcomes ORDER BY position")
    assert [r["position"] for r in outcomes] == [0]


async def _until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


async def _journaled_again(gateway: Any, operation_id: str) -> pb.UpdateOperation:
    """The operation once the journal has taken what it owed (no longer RUNNING)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            response = await gateway.stub.GetUpdateOperation(
                pb.GetUpdateOperationRequest(instance="sales", operation_id=operation_id),
                metadata=gateway.metadata(),
            )
        except grpc.aio.AioRpcError as error:  # the pool is still reconnecting
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        else:
            if response.operation.state != pb.OPERATION_STATE_RUNNING:
                operation: pb.UpdateOperation = response.operation
                return operation
        assert time.monotonic() < deadline, "the journal never caught up"
        await asyncio.sleep(0.1)


async def _accepted_again(gateway: Any) -> pb.UpdatePrivacySettingsResponse:
    deadline = time.monotonic() + 20
    while True:
        try:
            response: pb.UpdatePrivacySettingsResponse = await _unary(gateway, LATER)
            return response
        except grpc.aio.AioRpcError as error:
            if time.monotonic() >= deadline:
                raise AssertionError(error.details()) from error
            await asyncio.sleep(0.2)


async def test_take_lease_helper_tokens_only_grow(database_url: str) -> None:
    """The test double's tokens come from the lease sequence, as the lease code's do."""
    first = await take_lease(database_url, "sales", "a")
    second = await take_lease(database_url, "sales", "b")
    assert second > first


# -- start-up ----------------------------------------------------------------------------------


async def test_a_database_that_cannot_be_reached_is_one_line_at_start_up() -> None:
    url = "postgres://gateway:secret-password@127.0.0.1:1/journal"
    config = from_mapping(gateway_config(database_url=url), env={})
    gateway = build_gateway(config, ownership=TestLeases(url))

    # The replica's shared pool is opened first, before the journal: it is the one to refuse.
    with pytest.raises(DatabaseError) as raised:
        await gateway.start()

    message = str(raised.value)
    assert message.startswith("database_url: cannot connect")
    assert "\n" not in message
    assert "secret-password" not in message
    await gateway.close()


def test_a_database_url_makes_a_replica_fenced_by_its_own_leases() -> None:
    config = from_mapping(gateway_config(database_url="postgres://127.0.0.1:1/x"), env={})
    gateway = build_gateway(config)
    assert gateway.cluster is not None
    assert gateway.ownership is gateway.cluster
    assert gateway.cluster.external is None
