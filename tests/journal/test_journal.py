"""The operation journal on its own, through its public methods: that a write's future resolves
only once it is committed, that nothing is lost or reordered wherever a group commits, that a
failed write fails only itself, what ``journal_fsync`` changes, that records read back as they
were written (after a restart too), and that the file keeps the layout earlier journals have.

Which rule sends a group to the loop or the writer thread is ``tests/test_journal_policy.py``'s
subject; here the journal's clock only sets the scene (a frozen clock: every commit comes at
once, so from the third on the load is sustained), and where a group committed is seen from
outside (``_where_committed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.engine import FailurePolicy, FieldEvent, FieldState
from service.errors import Code
from service.journal import Journal
from service.operations import OperationError, OperationRecord, OperationState
from service.operations.record import INTERRUPTED_ERROR
from service.settings import Field, Settings

TIMEOUT = 10
APPLIED = FieldEvent(Field.LAST_SEEN, FieldState.APPLIED, "none", "all", 0.01)


def _operation(operation_id: str, **changes: Any) -> OperationRecord:
    record = OperationRecord(
        id=operation_id,
        instance="sales",
        requested_by="account acme",
        request_id=None,
        body_hash="0" * 64,
        requested={Field.LAST_SEEN: "none"},
        policy=FailurePolicy.STOP,
        validate_only=False,
        force=False,
        state=OperationState.RUNNING,
        started_at=time.time(),
    )
    return dataclasses.replace(record, **changes)


class FakeClock:
    """A clock that moves when the test moves it, and on ``step`` seconds each time it is read
    (with a step of 10 ms, every commit on the loop looks slow and none comes soon after
    another)."""

    def __init__(self, step: float = 0.0) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _begun(journal: Journal, operation_id: str) -> Callable[[], bool]:
    return lambda: journal.get("sales", operation_id) is not None


def _outcomes(journal: Journal, operation_id: str, count: int) -> Callable[[], bool]:
    def recorded() -> bool:
        record = journal.get("sales", operation_id)
        return record is not None and len(record.outcomes) >= count

    return recorded


def _committed_while_the_loop_waits(committed: Callable[[], bool]) -> None:
    """Waits on the loop's own thread, blocking it, until ``committed()``: nothing on the loop
    can commit meanwhile, so if it becomes true another thread committed the write."""
    deadline = time.monotonic() + TIMEOUT
    while not committed():
        assert time.monotonic() < deadline, "the write was never committed"
        time.sleep(0.001)


async def _where_committed(write: asyncio.Future[Any], committed: Callable[[], bool]) -> str:
    """Where the group holding ``write`` committed, told apart from outside the journal.

    A group on the loop commits, and settles its writes, at once or in the loop turn that
    queued it. A group on the writer thread is not settled in that turn: it commits while the
    loop is held up, and is settled on a later turn.
    """
    if not write.done():
        await asyncio.sleep(0)  # the end of the turn that queued it: committed, or handed on
    if write.done():
        return "loop"
    _committed_while_the_loop_waits(committed)
    await asyncio.wait_for(write, TIMEOUT)
    return "writer"


# -- where groups commit, seen from outside -------------------------------------------------


async def test_occasional_commits_run_on_the_loop_sustained_ones_on_the_writer(
    loaded: Journal,
) -> None:
    """Once commits come back to back, a group of more than one write goes to the writer thread;
    a lone write (an update waits for each of its writes in turn) commits on the loop at once."""
    where = []
    for n in range(3):
        write = loaded.begin(_operation(f"op-{n}"))
        where.append(await _where_committed(write, _begun(loaded, f"op-{n}")))
    lone = loaded.record("op-0", 0, APPLIED)
    where.append(await _where_committed(lone, _outcomes(loaded, "op-0", 1)))
    loaded.purge(0.0)  # queued for the end of the turn: the next write is not alone
    grouped = loaded.record("op-1", 0, APPLIED)
    where.append(await _where_committed(grouped, _outcomes(loaded, "op-1", 1)))

    assert where == ["loop", "loop", "loop", "loop", "writer"]
    for n in range(3):
        assert await asyncio.to_thread(loaded.get, "sales", f"op-{n}") is not None


async def test_a_quiet_journal_commits_on_the_loop(tmp_path: Path) -> None:
    clock = FakeClock()
    journal = Journal(tmp_path / "journal.db", clock=clock)
    try:
        where = [await _where_committed(journal.begin(_operation("op-1")), _begun(journal, "op-1"))]
        for position in range(3):
            clock.now += 0.01  # commits 10 ms apart: never sustained
            write = journal.record("op-1", position, APPLIED)
            where.append(await _where_committed(write, _outcomes(journal, "op-1", position + 1)))
        clock.now += 0.01
        finish = journal.finish("op-1", OperationState.COMPLETED, None, None)
        where.append(await _where_committed(finish, lambda: True))
        record = await asyncio.to_thread(journal.get, "sales", "op-1")
    finally:
        await journal.close()

    assert where == ["loop"] * 5
    assert record is not None
    assert record.state is OperationState.COMPLETED
    assert len(record.outcomes) == 3


async def test_slow_commits_on_the_loop_send_the_next_groups_to_the_writer(
    tmp_path: Path,
) -> None:
    """A commit on the loop that is slow twice running means the GIL is contended: for a while,
    groups go to the writer thread even when they are few."""
    journal = Journal(tmp_path / "journal.db", clock=FakeClock(step=0.01))
    try:
        where = []
        for n in range(4):
            write = journal.begin(_operation(f"op-{n}"))
            where.append(await _where_committed(write, _begun(journal, f"op-{n}")))
    finally:
        await journal.close()

    assert where == ["loop", "loop", "writer", "writer"]


async def test_a_new_operation_is_on_disk_before_begin_returns_while_quiet(
    loaded: Journal,
) -> None:
    """The engine waits for an operation's row before its first stanza: when nothing else is
    committing, that wait costs no loop turn."""
    quiet = loaded.begin(_operation("op-quiet"))
    assert quiet.done()
    assert loaded.get("sales", "op-quiet") is not None, "on disk when begin returns"

    loaded.begin(_operation("op-warm"))  # a second commit at the same instant: now it is busy
    lone = loaded.begin(_operation("op-lone"))
    assert lone.done(), "a lone write commits at once even when commits come back to back"
    loaded.purge(0.0)  # queued for the end of the turn: the next begin is not alone
    busy = loaded.begin(_operation("op-busy"))
    assert not busy.done(), "behind another write it joins the next group instead"
    await asyncio.wait_for(busy, TIMEOUT)
    assert await asyncio.to_thread(loaded.get, "sales", "op-busy") is not None


# -- durability and order -------------------------------------------------------------------


async def test_under_load_every_write_is_committed_and_settled_in_order(
    loaded: Journal,
) -> None:
    settled: list[int] = []
    unsettled_commits: list[int] = []

    def settle(position: int) -> None:
        # A write is settled only once it is committed: by then the journal reads it back.
        record = loaded.get("sales", "op-1")
        if record is None or len(record.outcomes) <= position:
            unsettled_commits.append(position)
        settled.append(position)

    await loaded.begin(_operation("op-1"))
    writes = []
    for position in range(200):
        outcome = dataclasses.replace(APPLIED, elapsed=float(position))
        write = loaded.record("op-1", position, outcome)
        write.add_done_callback(lambda _, position=position: settle(position))
        writes.append(write)
        if position % 20 == 0:
            await asyncio.sleep(0)  # a group on the loop, the rest on the writer thread
    await asyncio.wait_for(asyncio.gather(*writes), TIMEOUT)
    await loaded.finish("op-1", OperationState.COMPLETED, Settings({Field.LAST_SEEN: "none"}), None)

    record = await asyncio.to_thread(loaded.get, "sales", "op-1")
    assert record is not None
    assert record.state is OperationState.COMPLETED
    assert [o.elapsed for o in record.outcomes] == list(range(200))
    assert settled == list(range(200))
    assert unsettled_commits == []


@pytest.mark.parametrize(("commits_before", "expected"), [(1, "loop"), (2, "writer")])
async def test_a_failed_write_fails_only_itself(
    loaded: Journal, commits_before: int, expected: str
) -> None:
    await loaded.begin(_operation("op-1"))
    if commits_before == 2:
        await loaded.begin(_operation("op-warm"))

    loaded.purge(0.0)  # queued first, so that the three writes below join its group
    before = loaded.record("op-1", 0, APPLIED)
    failed = loaded.record("op-unknown", 0, APPLIED)  # no such operation: a foreign key fails
    after = loaded.record("op-1", 1, APPLIED)
    where = await _where_committed(after, _outcomes(loaded, "op-1", 2))
    results = await asyncio.wait_for(
        asyncio.gather(before, failed, after, return_exceptions=True), TIMEOUT
    )

    assert where == expected, "the three writes were one group"
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert "FOREIGN KEY" in str(results[1])
    record = await asyncio.to_thread(loaded.get, "sales", "op-1")
    assert record is not None
    assert record.outcomes == (APPLIED, APPLIED)
    assert await asyncio.to_thread(loaded.get, "sales", "op-unknown") is None


async def test_a_closed_journal_takes_no_write(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    await journal.begin(_operation("op-1"))
    await journal.close()

    with pytest.raises(RuntimeError, match="closed"):
        journal.begin(_operation("op-2"))
    reopened = Journal(tmp_path / "journal.db")
    try:
        assert await asyncio.to_thread(reopened.get, "sales", "op-1") is not None
    finally:
        await reopened.close()


async def test_journal_fsync_flushes_every_commit_from_the_writer_thread(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db", fsync=True)
    try:
        quiet = journal.begin(_operation("op-1"))
        assert not quiet.done(), "not even a lone new operation commits on the loop"
        where = [await _where_committed(quiet, _begun(journal, "op-1"))]
        write = journal.record("op-1", 0, APPLIED)
        where.append(await _where_committed(write, _outcomes(journal, "op-1", 1)))
        settings = Settings({Field.LAST_SEEN: "none"})
        await journal.finish("op-1", OperationState.COMPLETED, settings, None)
        record = await asyncio.to_thread(journal.get, "sales", "op-1")
    finally:
        await journal.close()

    assert journal.synchronous == "FULL", "each commit waits for the disk"
    assert where == ["writer", "writer"], "a commit that waits for the disk stays off the loop"
    assert record is not None
    assert record.state is OperationState.COMPLETED
    assert [(o.field, o.state) for o in record.outcomes] == [(Field.LAST_SEEN, FieldState.APPLIED)]


async def test_without_fsync_commits_survive_a_killed_process_not_a_power_loss(
    journal: Journal,
) -> None:
    with contextlib.closing(sqlite3.connect(journal.path)) as db:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]

    assert (mode, journal.synchronous) == ("wal", "NORMAL"), "in the OS's cache on commit"


# -- records --------------------------------------------------------------------------------


def _failed_operation() -> tuple[OperationRecord, list[FieldEvent], Settings, OperationError]:
    begun = _operation(
        "op-failed",
        request_id="req-1",
        requested={Field.STATUS: "contacts", Field.LAST_SEEN: "none"},  # not canonical order
        policy=FailurePolicy.ROLLBACK,
        force=True,
    )
    outcomes = [
        FieldEvent(Field.LAST_SEEN, FieldState.APPLIED, "none", "all", 0.25),
        FieldEvent(Field.STATUS, FieldState.FAILED, "contacts", "all", 0.5, "refused"),
        FieldEvent(Field.LAST_SEEN, FieldState.RESTORED, "all", "none", None),
    ]
    settings = Settings({Field.LAST_SEEN: "all", Field.STATUS: "all"})
    error = OperationError(Code.INTERNAL, "STANZA_FAILED", "refused", {"field": "status"})
    return begun, outcomes, settings, error


async def _write_failed_operation(journal: Journal) -> OperationRecord:
    begun, outcomes, settings, error = _failed_operation()
    await journal.begin(begun)
    for position, outcome in enumerate(outcomes):
        await journal.record(begun.id, position, outcome)
    await journal.finish(begun.id, OperationState.FAILED, settings, error)
    return begun


async def test_a_record_reads_back_as_it_was_written(journal: Journal) -> None:
    begun = await _write_failed_operation(journal)
    _, outcomes, settings, error = _failed_operation()

    record = await asyncio.to_thread(journal.get, "sales", begun.id)

    assert record is not None
    assert record.ended_at is not None
    assert begun.started_at <= record.ended_at <= time.time()
    expected = dataclasses.replace(
        begun,
        state=OperationState.FAILED,
        ended_at=record.ended_at,
        settings=settings,
        error=error,
        outcomes=tuple(outcomes),
    )
    assert record == expected
    assert list(record.requested) == [Field.STATUS, Field.LAST_SEEN], "the request's order"
    assert await asyncio.to_thread(journal.find_request, "sales", "req-1") == expected
    assert await asyncio.to_thread(journal.find_request, "support", "req-1") is None
    assert await asyncio.to_thread(journal.get, "support", begun.id) is None
    assert await asyncio.to_thread(journal.list, "sales", 10) == ([expected], "")


async def test_records_survive_the_journal_being_closed_and_reopened(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    begun = await _write_failed_operation(journal)
    await journal.begin(_operation("op-running"))
    before = await asyncio.to_thread(journal.list, "sales", 10)
    await journal.close()

    reopened = Journal(tmp_path / "journal.db")
    try:
        after = await asyncio.to_thread(reopened.list, "sales", 10)
        found = await asyncio.to_thread(reopened.find_request, "sales", "req-1")
    finally:
        await reopened.close()

    assert after == before
    assert [r.id for r in after[0]] == ["op-running", begun.id]
    assert found == after[0][1]


async def test_list_pages_newest_first(journal: Journal) -> None:
    for n, started_at in enumerate([10.0, 20.0, 30.0, 30.0, 40.0]):
        await journal.begin(_operation(f"op-{n}", started_at=started_at))
    await journal.begin(_operation("op-other", instance="support", started_at=50.0))

    pages = []
    token = ""
    while True:
        page, token = await asyncio.to_thread(journal.list, "sales", 2, token)
        pages.append([r.id for r in page])
        if not token:
            break

    # Newest first; operations that started together come in descending id order.
    assert pages == [["op-4", "op-3"], ["op-2", "op-1"], ["op-0"]]
    with pytest.raises(ValueError, match="invalid page_token"):
        journal.list("sales", 2, "not-a-token")


async def test_mark_interrupted_ends_what_was_left_running(journal: Journal) -> None:
    await journal.begin(_operation("op-running"))
    await journal.record("op-running", 0, APPLIED)
    await _write_failed_operation(journal)
    before = time.time()

    interrupted = await journal.mark_interrupted()
    running = await asyncio.to_thread(journal.get, "sales", "op-running")
    failed = await asyncio.to_thread(journal.get, "sales", "op-failed")

    assert interrupted == 1
    assert running is not None
    assert running.state is OperationState.INTERRUPTED
    assert running.error == INTERRUPTED_ERROR
    assert running.ended_at is not None
    assert running.ended_at >= before
    assert running.outcomes == (APPLIED,), "the fields applied before the stop are kept"
    assert running.settings is None
    assert failed is not None
    assert failed.state is OperationState.FAILED, "only what was left running"
    assert await journal.mark_interrupted() == 0


async def test_purge_deletes_finished_operations_past_retention(journal: Journal) -> None:
    for operation_id in ("op-old", "op-recent", "op-running"):
        await journal.begin(_operation(operation_id))
        await journal.record(operation_id, 0, APPLIED)
    await journal.finish("op-old", OperationState.COMPLETED, None, None)
    await asyncio.sleep(0.01)
    cutoff = time.time()
    await asyncio.sleep(0.01)
    await journal.finish("op-recent", OperationState.COMPLETED, None, None)

    purged = await journal.purge(cutoff)
    left = await asyncio.to_thread(journal.list, "sales", 10)

    assert purged == 1
    assert sorted(r.id for r in left[0]) == ["op-recent", "op-running"]
    # Its outcomes went with it: the id can be journaled again from scratch.
    await journal.begin(_operation("op-old"))
    reborn = await asyncio.to_thread(journal.get, "sales", "op-old")
    assert reborn is not None
    assert reborn.outcomes == ()


# -- the file ------------------------------------------------------------------------------

#: The operations table as a journal from before ``error_metadata`` wrote it.
_EARLIER_SCHEMA = """
CREATE TABLE operations (
    id TEXT PRIMARY KEY, instance TEXT NOT NULL, requested_by TEXT NOT NULL, request_id TEXT,
    body_hash TEXT NOT NULL, requested TEXT NOT NULL, policy TEXT NOT NULL,
    validate_only INTEGER NOT NULL, force INTEGER NOT NULL, state TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, settings TEXT, error_code TEXT, error_reason TEXT,
    error_message TEXT
);
CREATE TABLE outcomes (
    operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    position INTEGER NOT NULL, field TEXT NOT NULL, state TEXT NOT NULL, value TEXT NOT NULL,
    previous TEXT NOT NULL, elapsed REAL, error TEXT, PRIMARY KEY (operation_id, position)
);
INSERT INTO operations VALUES ('op-earlier', 'sales', 'account acme', NULL, 'h',
    '{"last_seen": "none"}', 'STOP', 0, 0, 'FAILED', 1.0, 2.0,
    '{"last_seen": "all"}', 'INTERNAL', 'STANZA_FAILED', 'refused');
INSERT INTO outcomes VALUES ('op-earlier', 0, 'last_seen', 'FAILED', 'none', 'all', 0.5,
    'refused');
"""


async def test_a_journal_an_earlier_version_wrote_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(_EARLIER_SCHEMA)
    journal = Journal(path)
    try:
        record = await asyncio.to_thread(journal.get, "sales", "op-earlier")
    finally:
        await journal.close()

    assert record == OperationRecord(
        id="op-earlier",
        instance="sales",
        requested_by="account acme",
        request_id=None,
        body_hash="h",
        requested={Field.LAST_SEEN: "none"},
        policy=FailurePolicy.STOP,
        validate_only=False,
        force=False,
        state=OperationState.FAILED,
        started_at=1.0,
        ended_at=2.0,
        settings=Settings({Field.LAST_SEEN: "all"}),
        error=OperationError(Code.INTERNAL, "STANZA_FAILED", "refused"),
        outcomes=(FieldEvent(Field.LAST_SEEN, FieldState.FAILED, "none", "all", 0.5, "refused"),),
    )


async def test_records_are_stored_as_the_names_earlier_versions_stored(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        await _write_failed_operation(journal)
    finally:
        await journal.close()

    with contextlib.closing(sqlite3.connect(tmp_path / "journal.db")) as db:
        operation = db.execute(
            "SELECT requested, policy, state, settings, error_code, error_reason, error_message,"
            " error_metadata FROM operations"
        ).fetchone()
        outcomes = db.execute(
            "SELECT position, field, state, value, previous, elapsed, error FROM outcomes"
            " ORDER BY position"
        ).fetchall()

    requested, policy, state, settings, *error = operation
    assert json.loads(requested) == {"status": "contacts", "last_seen": "none"}
    assert (policy, state) == ("ROLLBACK", "FAILED")
    assert json.loads(settings) == {"last_seen": "all", "status": "all"}
    assert error[:3] == ["INTERNAL", "STANZA_FAILED", "refused"]
    assert json.loads(error[3]) == {"field": "status"}
    assert outcomes == [
        (0, "last_seen", "APPLIED", "none", "all", 0.25, None),
        (1, "status", "FAILED", "contacts", "all", 0.5, "refused"),
        (2, "last_seen", "RESTORED", "all", "none", None, None),
    ]
