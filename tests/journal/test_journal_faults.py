"""The stream, the journal and WhatsApp agree when the journal itself fails.

A full disk (a real tmpfs, filled to the last byte) and a journal locked by another process (a
real ``BEGIN EXCLUSIVE``), at every position of a five-field update: before it, and while each
of its stanzas is in flight. Whatever happens, no stanza goes out after a write that did not
land; the caller is told exactly which fields are live; the instance refuses further updates
while the journal owes writes; and once the journal works again it holds what the stream said.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import SentStanza
from service.settings import Field, Settings
from tests.helpers.faults import JournalLock, SmallFilesystem
from tests.helpers.harness import Harness
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
from tests.helpers.rich_status import error_info, update_response
from tests.helpers.updates import FIVE_CHANGES

FIELDS = list(FIVE_CHANGES)
LATER = Settings({Field.GROUP_ADD: "contacts"})


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


async def _accepted_again(
    gateway: Harness, seconds: float = 10.0
) -> pb.UpdatePrivacySettingsResponse:
    """The instance's next update, once the journal has taken what it owed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await _unary(gateway, LATER)
        except grpc.aio.AioRpcError as error:
            if time.monotonic() >= deadline:
                raise AssertionError(error.details()) from error
            await asyncio.sleep(0.2)


def _journal_path(gateway: Harness) -> Any:
    return gateway.gateway.operations.journal.path


def _states(updates: list[pb.FieldUpdate]) -> list[tuple[int, int]]:
    return [(u.field, u.state) for u in updates]


async def _a_failed_update(
    gateway: Harness, call: Any, applied: int, reason: str
) -> list[pb.FieldUpdate]:
    """Checks what the caller was told of an update the journal failed with ``applied`` fields
    live on WhatsApp; returns its field outcomes."""
    messages, error = await _drain(call)
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == reason
    finals = _finals(_updates(messages))
    states = [u.state for u in finals]
    assert states == [pb.FIELD_STATE_APPLIED] * applied + [pb.FIELD_STATE_NOT_ATTEMPTED] * (
        len(FIELDS) - applied
    )
    # The status details say the same: a unary caller learns it without the stream.
    assert list(update_response(status).fields) == finals
    # WhatsApp holds exactly the applied fields: nothing went out after the write that failed.
    session = gateway.session()
    assert _sets(session) == _sets_for(applied)
    assert session.server_settings == _defaults_plus(FIVE_CHANGES, FIELDS[:applied])
    return finals


def _sets_for(applied: int) -> list[SentStanza]:
    return [SentStanza(f.spec.category, FIVE_CHANGES[f]) for f in FIELDS[:applied]]


async def _journal_agrees(
    gateway: Harness, operation_id: str, finals: list[pb.FieldUpdate], reason: str
) -> None:
    """Once the journal works again, it holds what the stream said."""
    deadline = time.monotonic() + 10
    while True:
        response = await gateway.stub.GetUpdateOperation(
            pb.GetUpdateOperationRequest(instance="sales", operation_id=operation_id),
            metadata=gateway.metadata(),
        )
        operation = response.operation
        if operation.state != pb.OPERATION_STATE_RUNNING:
            break
        assert time.monotonic() < deadline, "the journal never caught up"
        await asyncio.sleep(0.1)
    assert operation.state == pb.OPERATION_STATE_FAILED, operation
    assert operation.error_reason == reason
    assert _states(list(operation.fields)) == _states(finals)


# -- a full disk -------------------------------------------------------------------------------


async def test_a_full_disk_before_an_update_refuses_it_and_sends_nothing(
    disk_gateway: tuple[Harness, SmallFilesystem],
) -> None:
    gateway, disk = disk_gateway
    disk.fill()

    error = await _rpc_error(_unary(gateway, FIVE_CHANGES))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "JOURNAL_UNAVAILABLE"
    assert _sets(gateway.session()) == []
    disk.free()
    later = await _accepted_again(gateway)
    assert later.settings.permissions.group_add != 0


@pytest.mark.parametrize("applied", range(1, len(FIELDS) + 1))
async def test_a_full_disk_mid_update_stops_it_and_the_journal_catches_up(
    disk_gateway: tuple[Harness, SmallFilesystem], applied: int
) -> None:
    """The disk fills while stanza number ``applied`` is in flight: its outcome cannot land."""
    gateway, disk = disk_gateway
    session = gateway.session()
    call = _stream(gateway, FIVE_CHANGES)
    plan = await call.read()
    assert isinstance(plan, pb.StreamUpdatePrivacySettingsResponse)
    await _until(lambda: len(_sets(session)) == applied)
    disk.fill()

    reason = "JOURNAL_FAILED" if applied < len(FIELDS) else "JOURNAL_BEHIND"
    rest, error = await _drain(call)
    finals = await _a_failed_update_from(gateway, [plan, *rest], error, applied, reason)

    # While the journal owes the update's writes, the instance takes no other update.
    refused = await _rpc_error(_unary(gateway, LATER))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.details().startswith("The operation journal cannot record updates")
    disk.free()
    await _journal_agrees(gateway, plan.plan.operation_id, finals, reason)
    await _accepted_again(gateway)


async def _a_failed_update_from(
    gateway: Harness, messages: list[Any], error: Any, applied: int, reason: str
) -> list[pb.FieldUpdate]:
    class Replayed:
        def __init__(self) -> None:
            self._messages = list(messages)

        async def read(self) -> Any:
            if self._messages:
                return self._messages.pop(0)
            raise error

    return await _a_failed_update(gateway, Replayed(), applied, reason)


# -- a journal locked by another process --------------------------------------------------------


@pytest.mark.parametrize("edge", ["unary", "stream"])
async def test_a_lock_held_before_an_update_refuses_it_and_sends_nothing(
    slow_gateway: Harness, edge: str, impatient_journal: None
) -> None:
    """Another process locks the journal before the update's first write (its plan): the
    caller is told the journal cannot record updates, no stanza goes out, and the journal
    holds no operation; once the lock is let go, the instance takes updates again."""
    gateway = slow_gateway
    session = gateway.session()
    before = session.server_settings
    lock = JournalLock(_journal_path(gateway))
    await lock.take()
    try:
        if edge == "unary":
            error = await _rpc_error(_unary(gateway, FIVE_CHANGES))
            messages: list[Any] = []
        else:
            messages, drained = await _drain(_stream(gateway, FIVE_CHANGES))
            assert drained is not None
            error = drained
    finally:
        await lock.release()

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details().startswith("The operation journal cannot record updates: ")
    assert "locked" in error.details(), error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "JOURNAL_UNAVAILABLE"
    # The stream showed nothing, WhatsApp got nothing, the journal holds nothing.
    assert messages == []
    assert _sets(session) == []
    assert session.server_settings == before
    listed = await gateway.stub.ListUpdateOperations(
        pb.ListUpdateOperationsRequest(instance="sales"), metadata=gateway.metadata()
    )
    assert list(listed.operations) == []
    later = await _accepted_again(gateway)
    assert later.settings.permissions.group_add != 0


@pytest.mark.parametrize("position", range(len(FIELDS)))
async def test_a_brief_lock_mid_update_delays_nothing_but_the_journal(
    slow_gateway: Harness, position: int
) -> None:
    """Another process locks the journal while stanza ``position + 1`` is in flight and lets go
    a second later: the update completes, every field journaled, and meanwhile the event loop
    keeps answering (no busy wait on it)."""
    gateway = slow_gateway
    session = gateway.session()
    lock = JournalLock(_journal_path(gateway))
    await lock.start()
    call = _stream(gateway, FIVE_CHANGES)
    plan = await call.read()
    await _until(lambda: len(_sets(session)) == position + 1)
    await lock.take()
    try:
        worst, probes = await _probe_while_pending(gateway, session, position + 1)
        # The stanza in flight was answered, and its outcome's write waits on the lock:
        # no later stanza went out meanwhile.
        sent = len(_sets(session))
    finally:
        await lock.release()
    assert worst < 1.0, f"the event loop stalled {worst:.3f} s while the journal was locked"
    assert probes >= 10, probes
    assert sent == position + 1, sent
    rest, error = await _drain(call)

    assert error is None
    finals = _finals(_updates([plan, *rest]))
    assert [u.state for u in finals] == [pb.FIELD_STATE_APPLIED] * len(FIELDS)
    assert session.server_settings == _defaults_plus(FIVE_CHANGES, FIELDS)
    operation = (
        await gateway.stub.GetUpdateOperation(
            pb.GetUpdateOperationRequest(instance="sales", operation_id=plan.plan.operation_id),
            metadata=gateway.metadata(),
        )
    ).operation
    assert operation.state == pb.OPERATION_STATE_COMPLETED
    assert _states(list(operation.fields)) == _states(finals)


async def _probe_while_pending(
    gateway: Harness, session: Any, answered: int, *, hold: float = 1.0
) -> tuple[float, int]:
    """Calls the gateway every ~50 ms, for ``hold`` seconds and at least half a second after
    stanza number ``answered`` was answered (its outcome's write then pending on the lock); the
    longest gap between two answers, and how many answers came.

    Client and gateway share the event loop, so any wait on it (a busy wait on the lock) shows
    as a gap, whether it falls in a call or between two."""
    settled = _defaults_plus(FIVE_CHANGES, FIELDS[:answered])
    started = last = time.monotonic()
    answered_at: float | None = None
    worst, probes = 0.0, 0
    while True:
        await gateway.get("support")
        now = time.monotonic()
        worst, last, probes = max(worst, now - last), now, probes + 1
        if worst >= 1.0:  # stalled: the caller's assertion says so
            return worst, probes
        if answered_at is None and session.server_settings == settled:
            answered_at = now
        if answered_at is not None and now - answered_at >= 0.5 and now - started >= hold:
            return worst, probes
        assert now - started < 10, "the stanza in flight was never answered"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("applied", range(1, len(FIELDS) + 1))
async def test_a_lock_held_past_patience_stops_the_update_until_it_is_let_go(
    slow_gateway: Harness, applied: int, impatient_journal: None
) -> None:
    gateway = slow_gateway
    session = gateway.session()
    lock = JournalLock(_journal_path(gateway))
    call = _stream(gateway, FIVE_CHANGES)
    plan = await call.read()
    await _until(lambda: len(_sets(session)) == applied)
    await lock.take()
    try:
        reason = "JOURNAL_FAILED" if applied < len(FIELDS) else "JOURNAL_BEHIND"
        rest, error = await _drain(call)
        finals = await _a_failed_update_from(gateway, [plan, *rest], error, applied, reason)
        refused = await _rpc_error(_unary(gateway, LATER))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await lock.release()
    await _journal_agrees(gateway, plan.plan.operation_id, finals, reason)
    await _accepted_again(gateway)
