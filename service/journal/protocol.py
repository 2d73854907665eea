"""What ``Operations`` asks of a journal, whichever database holds it.

Two stores satisfy ``JournalStore``: SQLite in the data directory (``service.journal.sqlite``,
one process, the default) and PostgreSQL shared by replicas (``service.journal.postgres``).
Either way a write's awaitable resolves only once the write is durable, and ``Operations`` awaits
each write of an operation before the next stanza goes out, so the writes of one operation land
in order. Reads are coroutines: neither store may block the event loop.

The errors here let ``Operations`` tell the stores' failures apart without importing either
database's driver: ``JournalUnavailable`` is a write (or read) that could not be made now and may
work later (a database that is gone), ``StaleLease`` one the database refused because this
replica no longer holds the instance's lease, and ``RequestExists`` an operation whose
``request_id`` another replica has already journaled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection
from pathlib import Path
from typing import Protocol

from service.engine import FieldEvent
from service.operations.record import OperationError, OperationRecord, OperationState
from service.settings import Settings


class JournalUnavailable(Exception):
    """The journal's database cannot be reached now; the message says why in one line and
    never quotes the database URL. Like a full disk: the write is retried, then owed."""


class StaleLease(JournalUnavailable):
    """A fenced write the database refused: this replica holds no lease on the instance any
    more (another replica took it, or it expired), so it must not write the instance's records.
    A failed write like any other: no further stanza is sent, and the caller is told what is
    live."""


class RequestExists(Exception):
    """``begin`` found the instance's ``request_id`` already journaled (by another replica, in
    the same instant): the retry is that operation, not a new one."""

    def __init__(self, instance: str, request_id: str) -> None:
        super().__init__(f"instance {instance} already has an operation for this request_id")
        self.instance = instance
        self.request_id = request_id


class JournalStore(Protocol):
    """The operation journal as ``Operations`` uses it."""

    @property
    def shared(self) -> bool:
        """Whether other processes (replicas) write this journal too. Then start-up marks
        nothing INTERRUPTED (their operations are running); each instance's leftovers are
        marked when this replica takes its lease (``Operations.adopt``)."""
        ...

    @property
    def location(self) -> Path | None:
        """The journal's file, for messages; None for a database (whose URL is never shown)."""
        ...

    def begin(self, record: OperationRecord) -> Awaitable[None]:
        """A new operation (RUNNING, no outcomes yet). Raises ``RequestExists`` when another
        process journaled the instance's ``request_id`` first."""
        ...

    def record(
        self, instance: str, operation_id: str, position: int, outcome: FieldEvent
    ) -> Awaitable[None]:
        """The operation's outcome number ``position`` (from 0): a field's final event."""
        ...

    def finish(
        self,
        instance: str,
        operation_id: str,
        state: OperationState,
        settings: Settings | None,
        error: OperationError | None,
    ) -> Awaitable[None]:
        """How the operation ended, with the settings read back at the end if there are any."""
        ...

    def mark_interrupted(
        self, instance: str | None = None, sparing: Collection[str] = ()
    ) -> Awaitable[int]:
        """RUNNING operations a dead process left (of ``instance``; None: of every instance),
        but those in ``sparing`` (running here), marked INTERRUPTED; how many."""
        ...

    def purge(self, older_than: float) -> Awaitable[int]:
        """Deletes finished operations that ended before ``older_than`` (a ``time.time()``)."""
        ...

    async def get(self, instance: str, operation_id: str) -> OperationRecord | None: ...

    async def find_request(self, instance: str, request_id: str) -> OperationRecord | None: ...

    async def list(
        self, instance: str, page_size: int, page_token: str = ""
    ) -> tuple[list[OperationRecord], str]:
        """Newest first; the page and the next one's token ("" at the end). Raises ValueError
        for a token the journal did not make."""
        ...

    async def upkeep(self) -> None:
        """What the store needs now and then (SQLite: a checkpoint of its write-ahead log)."""
        ...

    async def close(self) -> None:
        """Lets the writes in flight land, then closes."""
        ...
