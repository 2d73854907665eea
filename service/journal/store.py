"""The operation journal: every update, durable in SQLite before the caller hears of it.

One row per operation and one per field outcome (a restore after a rollback is an outcome of
its own), written as they happen, so a gateway killed mid-update leaves the operation readable:
on the next start it is marked INTERRUPTED, with the fields that were applied.

SQLite in WAL mode: a commit is in the database's write-ahead log when it returns, so it
survives the gateway being killed; with ``journal_fsync`` it is also flushed to the disk, which
survives a power loss, at the cost of a disk flush per commit. Writes are committed in order, in
groups: however many updates run at once, each commit flushes everything that arrived while the
previous one was flushing, and the whole group's waiters are woken with one hop back to their
event loop rather than one per write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TypeVar

from service.engine import FieldEvent
from service.journal import schema
from service.journal.commit import (
    JournalBusy,
    Queued,
    Rows,
    Settled,
    WriterThread,
    commit_group,
    commit_patiently,
)
from service.journal.policy import CommitPolicy
from service.operations.record import (
    INTERRUPTED_ERROR,
    OperationError,
    OperationRecord,
    OperationState,
)
from service.settings import Settings

T = TypeVar("T")
#: The longest page token this journal hands out is well under this (a float and an id).
MAX_PAGE_TOKEN_CHARS = 256
MAX_OPERATION_ID_CHARS = 64
_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class Journal:
    """The journal database.

    Writes are queued and committed in groups, one transaction for everything that arrived
    meanwhile; each returns a future of the calling event loop that resolves once its commit is
    durable. A group commits on the event loop while commits are occasional, and on a writer
    thread under sustained load, when commits on the loop got slow, or with ``fsync``: the
    ``CommitPolicy`` (``service.journal.policy``) decides, timing commits with ``clock``.

    Groups commit in order: once one is on the writer thread, later ones follow it there until
    it has caught up. Reads and checkpoints use a second connection on the caller's thread (WAL
    lets it read while the writer writes), so no commit ever stalls on a checkpoint. Reads
    return ``OperationRecord``s, decoded once from the rows.
    """

    def __init__(
        self, path: Path, *, fsync: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # No busy timeout on the writing connection: a commit on the event loop must never wait
        # for another process's lock (``commit_group`` hands such a group to the writer thread,
        # which waits for it there).
        self._db = _connect(path, busy_timeout=0.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the WAL file (the OS's cache) when it returns, which survives the
        # gateway being killed; FULL also flushes it to the disk, which survives power loss.
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        # A checkpoint copies the WAL into the database and syncs it: ``checkpoint()`` does that
        # off the loop, so no commit ever stalls on one.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute("PRAGMA foreign_keys=ON")
        #: SQLite's ``synchronous`` mode the commits run with: FULL with ``fsync``, else NORMAL.
        self.synchronous = _SYNCHRONOUS[self._db.execute("PRAGMA synchronous").fetchone()[0]]
        schema.create(self._db)
        self._reads = _connect(path)
        self._reads_lock = threading.Lock()
        self._policy = CommitPolicy(fsync=fsync, clock=clock)
        self._queue: list[Queued] = []
        self._closed = False
        self._writer = WriterThread(self._commit_patiently, self._settle_from_writer)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Told how long each group commit took, in seconds: one for commits on the loop, one
        #: for those on the writer thread (``service.observability``); None: not timed.
        self.commit_timers: tuple[Callable[[float], None], Callable[[float], None]] | None = None

    async def close(self) -> None:
        """Commits what is queued, checkpoints, then closes."""
        if self._closed:
            return
        self._closed = True
        self._commit_queued()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.stop)
        await loop.run_in_executor(None, self._close_connections)

    def _close_connections(self) -> None:
        with self._reads_lock:
            self._reads.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._reads.close()
        self._db.close()

    def checkpoint(self) -> None:
        """Copies committed writes from the WAL into the database (blocking: call off the loop)."""
        with self._reads_lock:
            if not self._closed:
                self._reads.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _submit(
        self, work: Rows | Callable[[sqlite3.Connection], T], *, urgent: bool = False
    ) -> asyncio.Future[T]:
        """Queues ``work``; must be called from the event loop that awaits the result.

        ``urgent``: the caller waits for this write before going on (no stanza goes out before
        the write before it is on disk). Alone, it is committed at once on the loop, rather than
        at the end of the loop turn; behind other writes it joins their group.
        """
        if self._closed:
            raise RuntimeError("the journal is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.append((work, future))
        if urgent and len(self._queue) == 1 and self._policy.on_loop(lone=True):
            self._commit_on_loop()
        elif len(self._queue) == 1:
            self._loop.call_soon(self._commit_queued)
        return future

    def _commit_queued(self) -> None:
        if not self._queue:
            return
        if self._policy.on_loop(lone=len(self._queue) == 1):
            self._commit_on_loop()
            return
        batch, self._queue = self._queue, []
        self._policy.sent_to_writer(len(batch))
        self._writer.submit(batch)

    def _commit_on_loop(self) -> None:
        batch, self._queue = self._queue, []
        started = self._policy.loop_commit_starts()
        try:
            results = self._commit(batch, 0)
        except JournalBusy:
            # Another process holds the lock: the writer thread waits for it, the loop does not.
            self._policy.sent_to_writer(len(batch))
            self._writer.submit(batch)
            return
        self._policy.committed_on_loop(started)
        self._settle(results)

    def _commit(self, batch: list[Queued], where: int) -> list[Settled]:
        """Commits ``batch`` on the loop (``where`` 0: raises ``JournalBusy`` rather than wait)
        or on the writer thread (1: waits for another process's lock, ``commit_patiently``)."""
        commit = commit_group if where == 0 else commit_patiently
        timers = self.commit_timers
        if timers is None:
            return commit(self._db, batch)
        started = time.perf_counter()
        results = commit(self._db, batch)
        timers[where](time.perf_counter() - started)
        return results

    def _commit_patiently(self, batch: list[Queued]) -> list[Settled]:
        return self._commit(batch, 1)

    def _settle_from_writer(self, results: list[Settled]) -> None:
        self._policy.committed_on_writer(len(results))
        self._settle(results)

    def _settle(self, results: list[Settled]) -> None:
        for future, result, error in results:
            if future.done():  # its waiter went away; the write is committed anyway
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    # -- writes (each returns a future that resolves once the write is on disk) ---------------

    def begin(self, record: OperationRecord) -> asyncio.Future[None]:
        """A new operation (RUNNING, no outcomes yet); committed at once while the journal is
        quiet, since no stanza goes out before it is on disk."""
        params = (
            record.id, record.instance, record.requested_by, record.request_id, record.body_hash,
            schema.encode_values(record.requested), record.policy.name, int(record.validate_only),
            int(record.force), record.state.value, record.started_at,
        )  # fmt: skip
        return self._submit(Rows(schema.BEGIN, params), urgent=True)

    def record(self, operation_id: str, position: int, outcome: FieldEvent) -> asyncio.Future[None]:
        """The operation's outcome number ``position`` (from 0): a field's final event."""
        params = (
            operation_id, position, outcome.field.value, outcome.state.name, outcome.value,
            outcome.previous, outcome.elapsed, outcome.error,
        )  # fmt: skip
        return self._submit(Rows(schema.RECORD, params), urgent=True)

    def finish(
        self,
        operation_id: str,
        state: OperationState,
        settings: Settings | None,
        error: OperationError | None,
    ) -> asyncio.Future[None]:
        """How the operation ended, with the settings read back at the end if there are any."""
        code, reason, message, metadata = (
            (error.code.value, error.reason, error.message, error.metadata)
            if error is not None
            else (None, None, None, None)
        )
        params = (
            state.value, time.time(), schema.encode_values(settings) if settings else None, code,
            reason, message, json.dumps(dict(metadata)) if metadata else None, operation_id,
        )  # fmt: skip
        return self._submit(Rows(schema.FINISH, params), urgent=True)

    def mark_interrupted(
        self, instance: str | None = None, sparing: Collection[str] = ()
    ) -> asyncio.Future[int]:
        """Operations a previous process left RUNNING (it died mid-update): INTERRUPTED.

        ``instance``: only that instance's; ``sparing``: not these, which run in this process.
        """
        ended = time.time()
        error = INTERRUPTED_ERROR
        where = " WHERE state = ?"
        scope: tuple[str, ...] = ()
        if instance is not None:
            where += " AND instance = ?"
            scope = (instance,)
        if sparing:
            where += f" AND id NOT IN ({', '.join('?' * len(sparing))})"
            scope += tuple(sparing)

        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE operations SET state = ?, ended_at = ?, error_code = ?, error_reason = ?,"
                " error_message = ?" + where,
                (
                    OperationState.INTERRUPTED.value, ended, error.code.value, error.reason,
                    error.message, OperationState.RUNNING.value, *scope,
                ),
            )  # fmt: skip
            return cursor.rowcount

        return self._submit(write)

    def purge(self, older_than: float) -> asyncio.Future[int]:
        """Deletes finished operations that ended before ``older_than`` (a ``time.time()``)."""

        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM operations WHERE state != ? AND ended_at < ?",
                (OperationState.RUNNING.value, older_than),
            )
            return cursor.rowcount

        return self._submit(write)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, instance: str, operation_id: str) -> OperationRecord | None:
        with self._reads_lock:
            row = self._reads.execute(
                "SELECT * FROM operations WHERE instance = ? AND id = ?", (instance, operation_id)
            ).fetchone()
            return self._with_outcomes(row) if row else None

    def find_request(self, instance: str, request_id: str) -> OperationRecord | None:
        with self._reads_lock:
            row = self._reads.execute(
                "SELECT * FROM operations WHERE instance = ? AND request_id = ?",
                (instance, request_id),
            ).fetchone()
            return self._with_outcomes(row) if row else None

    def list(
        self, instance: str, page_size: int, page_token: str = ""
    ) -> tuple[list[OperationRecord], str]:
        """Newest first; returns the page and the token of the next one ("" at the end)."""
        before = decode_page_token(page_token) if page_token else (float("inf"), "")
        with self._reads_lock:
            rows = self._reads.execute(
                "SELECT * FROM operations WHERE instance = ?"
                " AND (started_at < ? OR (started_at = ? AND id < ?))"
                " ORDER BY started_at DESC, id DESC LIMIT ?",
                (instance, before[0], before[0], before[1], page_size + 1),
            ).fetchall()
            page = [self._with_outcomes(r) for r in rows[:page_size]]
        more = len(rows) > page_size
        token = encode_page_token(page[-1].started_at, page[-1].id) if more and page else ""
        return page, token

    def _with_outcomes(self, row: sqlite3.Row) -> OperationRecord:
        outcomes = self._reads.execute(
            "SELECT * FROM outcomes WHERE operation_id = ? ORDER BY position", (row["id"],)
        ).fetchall()
        return schema.decode(row, outcomes)


def _connect(path: Path, busy_timeout: float = 5.0) -> sqlite3.Connection:
    # Autocommit mode: transactions are opened explicitly. Each connection is used by one
    # thread at a time (the loop or the writer; the reads lock), not the thread that opened it.
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
    db.row_factory = sqlite3.Row
    return db


def encode_page_token(started_at: float, operation_id: str) -> str:
    raw = json.dumps([started_at, operation_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[float, str]:
    """Raises ValueError for a token this journal did not make, whatever was sent.

    A token is short (``MAX_PAGE_TOKEN_CHARS``): a longer one is refused before it is decoded,
    so that no caller can make the decoder work hard (a JSON document nested thousands deep, a
    number of thousands of digits). Every way decoding can fail (not base64, not UTF-8, not
    JSON, nested too deep, a number too large for a float) is the same ValueError, as is a
    decoded token of the wrong shape: not ``[finite number, id]``.
    """
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise ValueError("invalid page_token")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        started_at, operation_id = decoded
        if isinstance(started_at, bool) or not isinstance(started_at, int | float):
            raise TypeError(started_at)
        started = float(started_at)
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        # ValueError covers binascii.Error, UnicodeError and json's JSONDecodeError.
        raise ValueError("invalid page_token") from exc
    if not math.isfinite(started) or not isinstance(operation_id, str):
        raise ValueError("invalid page_token")
    if len(operation_id) > MAX_OPERATION_ID_CHARS:
        raise ValueError("invalid page_token")
    return started, operation_id
