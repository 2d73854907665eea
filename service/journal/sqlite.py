"""The SQLite ``Journal`` as a ``JournalStore``: its reads and checkpoints off the event loop.

``Journal`` (``service.journal.store``) reads on the caller's thread; here every read and every
checkpoint runs on one reader thread of its own, as ``Operations`` ran them before it took any
store. The writes are ``Journal``'s own futures, looked up on it at each call.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from service.data_dir import JournalError
from service.engine import FieldEvent
from service.journal.store import Journal
from service.operations.record import OperationError, OperationRecord, OperationState
from service.settings import Settings

T = TypeVar("T")
#: ``seconds -> None`` for commits on the loop and on the writer thread (``Journal``).
CommitTimers = tuple[Callable[[float], None], Callable[[float], None]]


class SqliteJournal:
    """``JournalStore`` on one SQLite file: one process writes it, so start-up marks every
    operation still RUNNING as INTERRUPTED (``shared`` is False)."""

    shared = False

    def __init__(self, journal: Journal) -> None:
        #: The SQLite journal itself (tests reach it to make its writes fail).
        self.sqlite = journal
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="journal-reader")

    @property
    def location(self) -> Path:
        return self.sqlite.path

    @property
    def path(self) -> Path:
        return self.sqlite.path

    def begin(self, record: OperationRecord) -> asyncio.Future[None]:
        return self.sqlite.begin(record)

    def record(
        self, instance: str, operation_id: str, position: int, outcome: FieldEvent
    ) -> asyncio.Future[None]:
        return self.sqlite.record(operation_id, position, outcome)

    def finish(
        self,
        instance: str,
        operation_id: str,
        state: OperationState,
        settings: Settings | None,
        error: OperationError | None,
    ) -> asyncio.Future[None]:
        return self.sqlite.finish(operation_id, state, settings, error)

    def mark_interrupted(
        self, instance: str | None = None, sparing: Collection[str] = ()
    ) -> asyncio.Future[int]:
        return self.sqlite.mark_interrupted(instance, sparing)

    def purge(self, older_than: float) -> asyncio.Future[int]:
        return self.sqlite.purge(older_than)

    async def get(self, instance: str, operation_id: str) -> OperationRecord | None:
        return await self._off_loop(self.sqlite.get, instance, operation_id)

    async def find_request(self, instance: str, request_id: str) -> OperationRecord | None:
        return await self._off_loop(self.sqlite.find_request, instance, request_id)

    async def list(
        self, instance: str, page_size: int, page_token: str = ""
    ) -> tuple[list[OperationRecord], str]:
        return await self._off_loop(self.sqlite.list, instance, page_size, page_token)

    async def upkeep(self) -> None:
        """Copies committed writes from the write-ahead log into the database, off the loop."""
        await self._off_loop(self.sqlite.checkpoint)

    async def close(self) -> None:
        await self.sqlite.close()
        self._reader.shutdown(wait=True)

    async def _off_loop(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, call, *args)


def sqlite_journal(
    path: Path, *, fsync: bool = False, commit_timers: CommitTimers | None = None
) -> Callable[[], Awaitable[SqliteJournal]]:
    """The opener ``Operations`` takes for the journal file ``path``; opening it raises
    ``JournalError`` (one line, what to fix) when the file cannot be used."""

    async def open_journal() -> SqliteJournal:
        loop = asyncio.get_running_loop()
        try:
            journal = await loop.run_in_executor(None, lambda: Journal(path, fsync=fsync))
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(path, exc) from exc
        journal.commit_timers = commit_timers
        return SqliteJournal(journal)

    return open_journal
