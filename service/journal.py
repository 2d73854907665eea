"""The operation journal: every update, durable in SQLite before the caller hears of it.

One row per operation and one per field outcome (a restore after a rollback is an outcome of
its own), written as they happen, so a gateway killed mid-update leaves the operation readable:
on the next start it is marked INTERRUPTED, with the fields that were applied.

SQLite in WAL mode: a commit is in the database's write-ahead log when it returns, so it
survives the gateway being killed; with ``journal_fsync`` it is also flushed to the disk, which
survives a power loss, at the cost of a disk flush per commit. Writes go
through one thread, in order, committed in groups: however many updates run at once, each commit
flushes everything that arrived while the previous one was flushing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
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
    """The journal database. Writes are queued and committed in groups by one thread (one disk
    flush for everything that arrived meanwhile); each write's future resolves once its commit is
    on disk. Reads run on the caller's thread."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the WAL file (the OS's cache) when it returns, which survives the
        # gateway being killed; FULL also flushes it to the disk, which survives power loss.
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()
        self._lock = threading.Lock()
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]] = []
        self._wake = threading.Condition()
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()

    def _add_missing_columns(self) -> None:
        """Brings a journal written by an earlier version up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(operations)")}
        if "error_metadata" not in columns:
            self._db.execute("ALTER TABLE operations ADD COLUMN error_metadata TEXT")

    def close(self) -> None:
        """Commits what is queued, then closes."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._writer.join()
        self._db.close()

    def _submit(self, work: Callable[[sqlite3.Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._wake:
            if self._closing:
                raise RuntimeError("the journal is closed")
            self._queue.append((work, future))
            self._wake.notify()
        return future

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                batch, self._queue = self._queue, []
                if not batch and self._closing:
                    return
            results: list[tuple[Future[Any], Any, BaseException | None]] = []
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                for work, future in batch:
                    self._db.execute("SAVEPOINT one")
                    try:
                        results.append((future, work(self._db), None))
                        self._db.execute("RELEASE one")
                    except Exception as exc:  # one bad write must not lose the others
                        self._db.execute("ROLLBACK TO one")
                        self._db.execute("RELEASE one")
                        results.append((future, None, exc))
                self._db.execute("COMMIT")
            for future, result, error in results:
                # A waiter that went away cancelled its future; the write is committed anyway.
                with contextlib.suppress(InvalidStateError):
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(result)

    # -- writes (each returns a future that resolves once the write is on disk) ---------------

    def begin(self, row: OperationRow) -> Future[None]:
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

    def record(self, operation_id: str, outcome: OutcomeRow) -> Future[None]:
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
    ) -> Future[None]:
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

    def mark_interrupted(self) -> Future[int]:
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

    def purge(self, older_than: float) -> Future[int]:
        """Deletes finished operations that ended before ``older_than`` (a ``time.time()``)."""

        def write(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM operations WHERE state != ? AND ended_at < ?", (RUNNING, older_than)
            )
            return cursor.rowcount

        return self._submit(write)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, instance: str, operation_id: str) -> OperationRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM operations WHERE instance = ? AND id = ?", (instance, operation_id)
            ).fetchone()
            return self._with_outcomes(row) if row else None

    def find_request(self, instance: str, request_id: str) -> OperationRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM operations WHERE instance = ? AND request_id = ?",
                (instance, request_id),
            ).fetchone()
            return self._with_outcomes(row) if row else None

    def list(
        self, instance: str, page_size: int, page_token: str = ""
    ) -> tuple[list[OperationRow], str]:
        """Newest first; returns the page and the token of the next one ("" at the end)."""
        before = decode_page_token(page_token) if page_token else (float("inf"), "")
        with self._lock:
            rows = self._db.execute(
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
        outcomes = self._db.execute(
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
