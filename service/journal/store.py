"""The operation journal: every update, durable in SQLite before the caller hears of it.

One row per operation and one per field outcome (a restore after a rollback is an outcome of
its own), written as they happen, so a gateway killed mid-update leaves the operation readable:
on the next start it is marked INTERRUPTED, with the fields that were applied.

SQLite in WAL mode: a commit is in the database's write-ahead log when it returns, so it
survives the gateway being killed; with ``journal_fsync`` it is also flushed to the disk, which
survives a power loss, at the cost of a disk flush per commit. Writes go
through one thread, in order, committed in groups: however many updates run at once, each commit
flushes everything that arrived while the previous one was flushing, and the whole group's
waiters are woken with one hop back to their event loop rather than one per write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from service.journal.commit import Queued, Rows, Settled, WriterThread, commit_group

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id            TEXT PRIMARY KEY,
    instance      TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    request_id    TEXT,
    body_hash     TEXT NOT NULL,
    requested     TEXT NOT NULL,
    policy        TEXT NOT NULL,
    validate_only INTEGER NOT NULL,
    force         INTEGER NOT NULL,
    state         TEXT NOT NULL,
    started_at    REAL NOT NULL,
    ended_at      REAL,
    settings      TEXT,
    error_code    TEXT,
    error_reason  TEXT,
    error_message TEXT,
    error_metadata TEXT
);
CREATE INDEX IF NOT EXISTS operations_by_instance ON operations (instance, started_at, id);
CREATE UNIQUE INDEX IF NOT EXISTS operations_by_request
    ON operations (instance, request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS outcomes (
    operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    field        TEXT NOT NULL,
    state        TEXT NOT NULL,
    value        TEXT NOT NULL,
    previous     TEXT NOT NULL,
    elapsed      REAL,
    error        TEXT,
    PRIMARY KEY (operation_id, position)
);
"""

T = TypeVar("T")
RUNNING = "RUNNING"
INTERRUPTED = "INTERRUPTED"
COMPLETED = "COMPLETED"
FAILED = "FAILED"


@dataclass(frozen=True)
class OutcomeRow:
    position: int
    field: str
    state: str
    value: str
    previous: str
    elapsed: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class OperationRow:
    id: str
    instance: str
    requested_by: str
    request_id: str | None
    body_hash: str
    requested: Mapping[str, str]
    policy: str
    validate_only: bool
    force: bool
    state: str
    started_at: float
    ended_at: float | None = None
    settings: Mapping[str, str] | None = None
    error_code: str | None = None
    error_reason: str | None = None
    error_message: str | None = None
    error_metadata: Mapping[str, str] | None = None
    outcomes: tuple[OutcomeRow, ...] = field(default=())


#: Commits less than this apart, twice running, mean the loop is busy (see ``Journal``).
BUSY_GAP_SECONDS = 0.001
#: A commit on the loop slower than this means the GIL is contended; for the next
#: ``SLOW_COMMIT_MEMORY_SECONDS``, groups go to the writer thread.
SLOW_COMMIT_SECONDS = 0.0005
SLOW_COMMIT_MEMORY_SECONDS = 1.0


class Journal:
    """The journal database.

    Writes are queued and committed in groups, one transaction for everything that arrived
    meanwhile; each returns a future of the calling event loop that resolves once its commit is
    durable. Where a group is committed depends on the load:

    - Without ``fsync`` a commit is a write into the OS's cache (microseconds). While commits are
      occasional, a group is committed on the event loop itself at the end of the loop turn that
      queued it: no thread hop, so a lone update waits least.
    - Under sustained load (two commits in a row less than ``BUSY_GAP_SECONDS`` apart), or once
      two commits in a row on the loop took longer than ``SLOW_COMMIT_SECONDS``, groups go to a
      writer thread. Every SQLite call lets go of the GIL, and with hundreds of stanza threads
      waiting for it the loop gets it back late each time; on the writer thread, groups also
      grow while the previous one commits.
    - With ``fsync`` a commit waits for the disk, so every group goes to the writer thread.

    Groups commit in order: once one is on the writer thread, later ones follow it there until
    it has caught up. Reads and checkpoints use a second connection on the caller's thread (WAL
    lets it read while the writer writes), so no commit ever stalls on a checkpoint.
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = _connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the WAL file (the OS's cache) when it returns, which survives the
        # gateway being killed; FULL also flushes it to the disk, which survives power loss.
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        # A checkpoint copies the WAL into the database and syncs it: ``checkpoint()`` does that
        # off the loop, so no commit ever stalls on one.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()
        self._reads = _connect(path)
        self._reads_lock = threading.Lock()
        self._fsync = fsync
        self._queue: list[Queued] = []
        self._closed = False
        self._writer = WriterThread(self._commit, self._settle_from_writer)
        #: Writes handed to the writer thread and not yet settled on the loop.
        self._on_writer = 0
        self._last_commit = float("-inf")
        self._slow_until = float("-inf")
        self._slow_streak = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_gap = float("inf")
        #: Called on the loop after each group's futures are resolved: one call per commit, so
        #: a reader of many writes' futures need not put a callback on each of them.
        self.on_commit: Callable[[], None] | None = None

    def _add_missing_columns(self) -> None:
        """Brings a journal written by an earlier version up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(operations)")}
        if "error_metadata" not in columns:
            self._db.execute("ALTER TABLE operations ADD COLUMN error_metadata TEXT")

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

        ``urgent``: the caller waits for this write before going on (a new operation: no stanza
        goes out before it is on disk). While the journal is quiet it is committed at once, with
        whatever is queued, rather than at the end of the loop turn.
        """
        if self._closed:
            raise RuntimeError("the journal is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.append((work, future))
        if urgent and not self._fsync and not self._on_writer and not self._busy():
            self._commit_queued()
        elif len(self._queue) == 1:
            self._loop.call_soon(self._commit_queued)
        return future

    def _busy(self) -> bool:
        """Whether groups should go to the writer thread: two commits in a row less than
        ``BUSY_GAP_SECONDS`` apart (sustained load), or a recent commit on the loop that took
        longer than ``SLOW_COMMIT_SECONDS`` (the GIL is contended: each SQLite call waited)."""
        now = time.monotonic()
        if now < self._slow_until:
            return True
        return now - self._last_commit < BUSY_GAP_SECONDS and self._last_gap < BUSY_GAP_SECONDS

    def _commit_queued(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        if self._fsync or self._on_writer or self._busy():
            self._on_writer += len(batch)
            self._writer.submit(batch)
            return
        started = time.monotonic()
        results = self._commit(batch)
        self._committed()
        slow = self._last_commit - started > SLOW_COMMIT_SECONDS
        self._slow_streak = self._slow_streak + 1 if slow else 0
        if self._slow_streak >= 2:  # twice running: not a one-off stall
            self._slow_until = self._last_commit + SLOW_COMMIT_MEMORY_SECONDS
        self._settle(results)

    def _commit(self, batch: list[Queued]) -> list[Settled]:
        return commit_group(self._db, batch)

    def _settle_from_writer(self, results: list[Settled]) -> None:
        self._on_writer -= len(results)
        self._committed()
        self._settle(results)

    def _committed(self) -> None:
        now = time.monotonic()
        self._last_gap, self._last_commit = now - self._last_commit, now

    def _settle(self, results: list[Settled]) -> None:
        for future, result, error in results:
            if future.done():  # its waiter went away; the write is committed anyway
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        if self.on_commit is not None:
            self.on_commit()

    # -- writes (each returns a future that resolves once the write is on disk) ---------------

    def begin(self, row: OperationRow) -> asyncio.Future[None]:
        params = (
            row.id, row.instance, row.requested_by, row.request_id, row.body_hash,
            json.dumps(dict(row.requested)), row.policy, int(row.validate_only), int(row.force),
            row.state, row.started_at,
        )  # fmt: skip
        return self._submit(Rows("begin", params), urgent=True)

    def record(self, operation_id: str, outcome: OutcomeRow) -> asyncio.Future[None]:
        params = (
            operation_id, outcome.position, outcome.field, outcome.state, outcome.value,
            outcome.previous, outcome.elapsed, outcome.error,
        )  # fmt: skip
        return self._submit(Rows("record", params))

    def finish(
        self,
        operation_id: str,
        state: str,
        settings: Mapping[str, str] | None,
        error: tuple[str, str, str] | None,
        error_metadata: Mapping[str, str] | None = None,
    ) -> asyncio.Future[None]:
        code, reason, message = error or (None, None, None)
        params = (
            state, time.time(), json.dumps(dict(settings)) if settings else None, code, reason,
            message, json.dumps(dict(error_metadata)) if error_metadata else None, operation_id,
        )  # fmt: skip
        return self._submit(Rows("finish", params))

    def mark_interrupted(self) -> asyncio.Future[int]:
        """Operations a previous process left RUNNING (it died mid-update): INTERRUPTED."""
        ended = time.time()

        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE operations SET state = ?, ended_at = ?, error_code = ?, error_reason = ?,"
                " error_message = ? WHERE state = ?",
                (
                    INTERRUPTED, ended, "UNAVAILABLE", "INTERRUPTED",
                    "the gateway stopped before the update finished", RUNNING,
                ),
            )  # fmt: skip
            return cursor.rowcount

        return self._submit(write)

    def purge(self, older_than: float) -> asyncio.Future[int]:
        """Deletes finished operations that ended before ``older_than`` (a ``time.time()``)."""

        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM operations WHERE state != ? AND ended_at < ?", (RUNNING, older_than)
            )
            return cursor.rowcount

        return self._submit(write)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, instance: str, operation_id: str) -> OperationRow | None:
        with self._reads_lock:
            row = self._reads.execute(
                "SELECT * FROM operations WHERE instance = ? AND id = ?", (instance, operation_id)
            ).fetchone()
            return self._with_outcomes(row) if row else None

    def find_request(self, instance: str, request_id: str) -> OperationRow | None:
        with self._reads_lock:
            row = self._reads.execute(
                "SELECT * FROM operations WHERE instance = ? AND request_id = ?",
                (instance, request_id),
            ).fetchone()
            return self._with_outcomes(row) if row else None

    def list(
        self, instance: str, page_size: int, page_token: str = ""
    ) -> tuple[list[OperationRow], str]:
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

    def _with_outcomes(self, row: sqlite3.Row) -> OperationRow:
        outcomes = self._reads.execute(
            "SELECT * FROM outcomes WHERE operation_id = ? ORDER BY position", (row["id"],)
        ).fetchall()
        return OperationRow(
            id=row["id"],
            instance=row["instance"],
            requested_by=row["requested_by"],
            request_id=row["request_id"],
            body_hash=row["body_hash"],
            requested=json.loads(row["requested"]),
            policy=row["policy"],
            validate_only=bool(row["validate_only"]),
            force=bool(row["force"]),
            state=row["state"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            settings=json.loads(row["settings"]) if row["settings"] else None,
            error_code=row["error_code"],
            error_reason=row["error_reason"],
            error_message=row["error_message"],
            error_metadata=json.loads(row["error_metadata"]) if row["error_metadata"] else None,
            outcomes=tuple(
                OutcomeRow(
                    o["position"],
                    o["field"],
                    o["state"],
                    o["value"],
                    o["previous"],
                    o["elapsed"],
                    o["error"],
                )
                for o in outcomes
            ),
        )


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are opened explicitly. Each connection is used by one
    # thread at a time (the loop or the writer; the reads lock), not the thread that opened it.
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def encode_page_token(started_at: float, operation_id: str) -> str:
    raw = json.dumps([started_at, operation_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[float, str]:
    """Raises ValueError for a token this journal did not make."""
    try:
        started_at, operation_id = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError) as exc:
        raise ValueError("invalid page_token") from exc
    if not isinstance(started_at, int | float) or not isinstance(operation_id, str):
        raise ValueError("invalid page_token")
    return float(started_at), operation_id


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
