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
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
Write = Callable[[sqlite3.Connection], Any]
Settled = tuple["asyncio.Future[Any]", Any, BaseException | None]
RUNNING = "RUNNING"
INTERRUPTED = "INTERRUPTED"


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


class Journal:
    """The journal database.

    Writes are queued and committed in groups, one transaction for everything that arrived
    meanwhile; each returns a future of the calling event loop that resolves once its commit is
    durable. Without ``fsync`` a commit is a write into the OS's cache (microseconds), so groups
    are committed on the event loop itself, once per loop turn: no thread hop per write. With
    ``fsync`` a commit waits for the disk, so groups are committed by a thread of their own.
    Reads and checkpoints use a second connection on the caller's thread (WAL lets it read while
    the writer writes), and checkpoints run there, never in a commit on the loop.
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
        self._queue: list[tuple[Write, asyncio.Future[Any]]] = []
        self._closed = False
        self._writer = _WriterThread(self._commit, self._settle) if fsync else None
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
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            await loop.run_in_executor(None, self._writer.stop)
        else:
            self._commit_queued()
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

    def _submit(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queues ``work``; must be called from the event loop that awaits the result."""
        if self._closed:
            raise RuntimeError("the journal is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._writer is not None:
            self._writer.submit(work, future)
            return future
        self._queue.append((work, future))
        if len(self._queue) == 1:
            future.get_loop().call_soon(self._commit_queued)
        return future

    def _commit_queued(self) -> None:
        batch, self._queue = self._queue, []
        if batch:
            self._settle(self._commit(batch))

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

    def _commit(self, batch: list[tuple[Write, asyncio.Future[Any]]]) -> list[Settled]:
        """Commits ``batch`` in one transaction. Writes do not fail in normal operation, so they
        run plainly; if one does (a full disk), the batch is redone with a savepoint per write,
        so that one bad write cannot lose the others."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                results: list[Settled] = [(f, work(self._db), None) for work, f in batch]
            except Exception:
                self._rollback()
                self._db.execute("BEGIN IMMEDIATE")
                results = [(future, *self._one(work)) for work, future in batch]
            self._db.execute("COMMIT")
        except Exception as exc:  # the commit itself failed: nothing of the batch is on disk
            self._rollback()
            results = [(future, None, exc) for _, future in batch]
        return results

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _one(self, work: Write) -> tuple[Any, BaseException | None]:
        """Runs one write in a savepoint of its own."""
        self._db.execute("SAVEPOINT one")
        try:
            result = work(self._db)
        except Exception as exc:
            self._db.execute("ROLLBACK TO one")
            self._db.execute("RELEASE one")
            return None, exc
        self._db.execute("RELEASE one")
        return result, None

    # -- writes (each returns a future that resolves once the write is on disk) ---------------

    def begin(self, row: OperationRow) -> asyncio.Future[None]:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO operations (id, instance, requested_by, request_id, body_hash,"
                " requested, policy, validate_only, force, state, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id, row.instance, row.requested_by, row.request_id, row.body_hash,
                    json.dumps(dict(row.requested)), row.policy, int(row.validate_only),
                    int(row.force), row.state, row.started_at,
                ),
            )  # fmt: skip

        return self._submit(write)

    def record(self, operation_id: str, outcome: OutcomeRow) -> asyncio.Future[None]:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO outcomes (operation_id, position, field, state, value,"
                " previous, elapsed, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    operation_id, outcome.position, outcome.field, outcome.state, outcome.value,
                    outcome.previous, outcome.elapsed, outcome.error,
                ),
            )  # fmt: skip

        return self._submit(write)

    def finish(
        self,
        operation_id: str,
        state: str,
        settings: Mapping[str, str] | None,
        error: tuple[str, str, str] | None,
        error_metadata: Mapping[str, str] | None = None,
    ) -> asyncio.Future[None]:
        code, reason, message = error or (None, None, None)
        ended = time.time()
        metadata = json.dumps(dict(error_metadata)) if error_metadata else None

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE operations SET state = ?, ended_at = ?, settings = ?, error_code = ?,"
                " error_reason = ?, error_message = ?, error_metadata = ? WHERE id = ?",
                (
                    state, ended, json.dumps(dict(settings)) if settings else None,
                    code, reason, message, metadata, operation_id,
                ),
            )  # fmt: skip

        return self._submit(write)

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


class _WriterThread:
    """Commits queued writes in groups on a thread of its own (for commits that wait for the
    disk), and wakes each group's waiters with one hop back to their loop."""

    def __init__(
        self,
        commit: Callable[[list[tuple[Write, asyncio.Future[Any]]]], list[Settled]],
        settle: Callable[[list[Settled]], None],
    ) -> None:
        self._commit = commit
        self._settle = settle
        self._queue: list[tuple[Write, asyncio.Future[Any]]] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    def submit(self, work: Write, future: asyncio.Future[Any]) -> None:
        with self._wake:
            self._queue.append((work, future))
            self._wake.notify()

    def stop(self) -> None:
        """Commits what is queued, then ends the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                batch, self._queue = self._queue, []
                if not batch and self._stopping:
                    return
            settled: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
            for result in self._commit(batch):
                settled.setdefault(result[0].get_loop(), []).append(result)
            for loop, results in settled.items():
                # A closed loop has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._settle, results)


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
