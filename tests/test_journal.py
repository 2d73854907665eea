"""The operation journal on its own: where a group commits, that nothing is lost or reordered
either way, and that ``journal_fsync`` flushes every commit to the disk."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.engine import FailurePolicy, FieldEvent, FieldState
from service.journal import Journal
from service.journal import policy as journal_module
from service.operations import OperationRecord, OperationState
from service.settings import Field, Settings

TIMEOUT = 10


def _operation(operation_id: str) -> OperationRecord:
    return OperationRecord(
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


def _committing_thread(db: sqlite3.Connection) -> str:
    return threading.current_thread().name


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = Journal(tmp_path / "journal.db")
    try:
        yield opened
    finally:
        await opened.close()


async def test_occasional_commits_run_on_the_loop_sustained_ones_on_the_writer(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every commit counts as soon after the last one: from the third on, the load is sustained.
    monkeypatch.setattr(journal_module, "BUSY_GAP_SECONDS", 3600.0)
    threads = [await journal._submit(_committing_thread) for _ in range(4)]

    loop_thread = threading.current_thread().name
    assert threads == [loop_thread, loop_thread, "journal-writer", "journal-writer"]


async def test_a_quiet_journal_commits_on_the_loop(journal: Journal) -> None:
    threads = []
    for _ in range(3):
        threads.append(await journal._submit(_committing_thread))
        await asyncio.sleep(0.01)  # commits 10 ms apart: never sustained

    assert set(threads) == {threading.current_thread().name}


async def test_under_load_every_write_is_committed_and_settled_in_order(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "BUSY_GAP_SECONDS", 3600.0)
    settled: list[int] = []
    await journal.begin(_operation("op-1"))
    writes = []
    for position in range(200):
        outcome = FieldEvent(Field.LAST_SEEN, FieldState.APPLIED, "none", "all", position)
        write = journal.record("op-1", position, outcome)
        write.add_done_callback(lambda _, position=position: settled.append(position))
        writes.append(write)
        if position % 20 == 0:
            await asyncio.sleep(0)  # some groups on the loop, the rest on the writer thread
    await asyncio.wait_for(asyncio.gather(*writes), TIMEOUT)
    await journal.finish(
        "op-1", OperationState.COMPLETED, Settings({Field.LAST_SEEN: "none"}), None
    )

    row = await asyncio.to_thread(journal.get, "sales", "op-1")
    assert row is not None
    assert row.state is OperationState.COMPLETED
    assert [o.elapsed for o in row.outcomes] == list(range(200))
    assert settled == list(range(200))


async def test_a_failed_write_on_the_writer_thread_fails_only_itself(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "BUSY_GAP_SECONDS", 3600.0)
    for _ in range(2):
        await journal._submit(_committing_thread)

    def full_disk(db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    before = journal.begin(_operation("op-before"))
    failed = journal._submit(full_disk)
    after = journal.begin(_operation("op-after"))
    results = await asyncio.wait_for(
        asyncio.gather(before, failed, after, return_exceptions=True), TIMEOUT
    )

    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], sqlite3.OperationalError)
    assert str(results[1]) == "database or disk is full"
    for operation_id in ("op-before", "op-after"):
        assert await asyncio.to_thread(journal.get, "sales", operation_id) is not None


async def test_journal_fsync_flushes_every_commit_from_the_writer_thread(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db", fsync=True)
    try:
        synchronous = journal._db.execute("PRAGMA synchronous").fetchone()[0]
        thread = await journal._submit(_committing_thread)
        await journal.begin(_operation("op-1"))
        outcome = FieldEvent(Field.LAST_SEEN, FieldState.APPLIED, "none", "all", 0.01)
        await journal.record("op-1", 0, outcome)
        await journal.finish(
            "op-1", OperationState.COMPLETED, Settings({Field.LAST_SEEN: "none"}), None
        )
        row = await asyncio.to_thread(journal.get, "sales", "op-1")
    finally:
        await journal.close()

    assert synchronous == 2, "FULL: each commit waits for the disk"
    assert thread == "journal-writer", "a commit that waits for the disk stays off the loop"
    assert row is not None
    assert row.state is OperationState.COMPLETED
    assert [(o.field, o.state) for o in row.outcomes] == [(Field.LAST_SEEN, FieldState.APPLIED)]


async def test_without_fsync_commits_survive_a_killed_process_not_a_power_loss(
    journal: Journal,
) -> None:
    synchronous = journal._db.execute("PRAGMA synchronous").fetchone()[0]
    mode = journal._db.execute("PRAGMA journal_mode").fetchone()[0]

    assert (mode, synchronous) == ("wal", 1), "WAL with NORMAL: in the OS's cache on commit"


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


async def test_a_new_operation_is_on_disk_before_begin_returns_while_quiet(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine waits for an operation's row before its first stanza: when nothing else is
    committing, that wait costs no loop turn."""
    quiet = journal.begin(_operation("op-quiet"))
    assert quiet.done()

    monkeypatch.setattr(journal_module, "BUSY_GAP_SECONDS", 3600.0)
    for _ in range(2):
        await journal._submit(_committing_thread)
    busy = journal.begin(_operation("op-busy"))
    assert not busy.done(), "under load it joins the next group instead"
    await asyncio.wait_for(busy, TIMEOUT)
    assert await asyncio.to_thread(journal.get, "sales", "op-busy") is not None


async def test_slow_commits_on_the_loop_send_the_next_groups_to_the_writer(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit on the loop that is slow twice running means the GIL is contended: for a while,
    groups go to the writer thread even when they are few."""
    monkeypatch.setattr(journal_module, "SLOW_COMMIT_SECONDS", 0.0)
    threads = []
    for _ in range(4):
        threads.append(await journal._submit(_committing_thread))
        await asyncio.sleep(0.01)  # never sustained: only slowness can move them

    loop_thread = threading.current_thread().name
    assert threads == [loop_thread, loop_thread, "journal-writer", "journal-writer"]
