"""How the journal commits a group of writes: one transaction, on whichever thread runs it.

The common writes are plain rows (``Rows``) for statements SQLite keeps prepared (it caches
them by their text), rather than closures; the rare ones (marking interrupted operations,
purging) are callables that may return a row count. ``WriterThread`` commits groups off the
event loop when ``Journal`` sends them there.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Settled = tuple["asyncio.Future[Any]", Any, BaseException | None]
#: How long the writer thread waits for another process to let go of the journal's lock, in
#: total, before it fails the group (its writes are then retried by whoever queued them).
BUSY_PATIENCE_SECONDS = 5.0
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


class JournalBusy(Exception):
    """Another connection holds the journal's write lock: nothing of the group was done."""


@dataclass(frozen=True, slots=True)
class Rows:
    """One row written with one of the journal's statements (``service.journal.schema``)."""

    statement: str
    params: tuple[Any, ...]


Write = Rows | Callable[[sqlite3.Connection], Any]
Queued = tuple[Write, "asyncio.Future[Any]"]


def commit_group(db: sqlite3.Connection, batch: Sequence[Queued]) -> list[Settled]:
    """Commits ``batch`` in one transaction; each write's result or error, in batch order.

    Writes do not fail in normal operation, so they run plainly; if one does (a full disk), the
    batch is redone with a savepoint per write, so that one bad write cannot lose the others.
    Raises ``JournalBusy``, having done nothing, when another connection holds the write lock:
    the connection has no busy timeout, so that a commit on the event loop never waits for one.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode in _BUSY_CODES:
            raise JournalBusy(str(exc)) from exc
        return [(future, None, exc) for _, future in batch]
    try:
        try:
            results = _each(db, batch)
        except Exception:
            _rollback(db)
            db.execute("BEGIN IMMEDIATE")
            results = [(future, *_one(db, work)) for work, future in batch]
        db.execute("COMMIT")
    except Exception as exc:  # the commit itself failed: nothing of the batch is on disk
        _rollback(db)
        results = [(future, None, exc) for _, future in batch]
    return results


def _each(db: sqlite3.Connection, batch: Sequence[Queued]) -> list[Settled]:
    # A batch settles its futures back in order, each with its write's result.
    return [(future, _run(db, work), None) for work, future in batch]


def _run(db: sqlite3.Connection, work: Write) -> Any:
    if isinstance(work, Rows):
        db.execute(work.statement, work.params)
        return None
    return work(db)


def _one(db: sqlite3.Connection, work: Write) -> tuple[Any, BaseException | None]:
    """Runs one write in a savepoint of its own."""
    db.execute("SAVEPOINT one")
    try:
        result = _run(db, work)
    except Exception as exc:
        db.execute("ROLLBACK TO one")
        db.execute("RELEASE one")
        return None, exc
    db.execute("RELEASE one")
    return result, None


def commit_patiently(db: sqlite3.Connection, batch: Sequence[Queued]) -> list[Settled]:
    """``commit_group`` off the loop: waits (sleeping, on this thread) while another connection
    holds the lock, up to ``BUSY_PATIENCE_SECONDS``, then fails the group with the busy error."""
    patience = BUSY_PATIENCE_SECONDS
    waited, pause = 0.0, 0.005
    while True:
        try:
            return commit_group(db, batch)
        except JournalBusy as busy:
            if waited >= patience:
                return [(future, None, busy) for _, future in batch]
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, 0.1)
        except Exception as exc:  # BEGIN failed otherwise (a disk I/O error): nothing was done
            return [(future, None, exc) for _, future in batch]


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


class WriterThread:
    """Commits groups of writes on a thread of its own: everything queued while the previous
    group committed goes in the next one. Each group's results go back to its loop in one hop."""

    def __init__(
        self,
        commit: Callable[[list[Queued]], list[Settled]],
        settle: Callable[[list[Settled]], None],
    ) -> None:
        self._commit = commit
        self._settle = settle
        self._queue: list[Queued] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, batch: list[Queued]) -> None:
        with self._wake:
            if self._thread is None:  # started on first use: a quiet journal never needs it
                self._thread = threading.Thread(
                    target=self._run, name="journal-writer", daemon=True
                )
                self._thread.start()
            self._queue.extend(batch)
            self._wake.notify()

    def stop(self) -> None:
        """Commits what is queued, then ends the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

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
