"""What one operation's events write to the journal, and what happens when the journal fails.

The rule: no stanza goes out unless every write before it is on disk. The operation's row is
written before the first stanza, and each field's outcome before the next one is sent, so the
journal is never behind WhatsApp by more than the stanza in flight.

A write that fails (a full disk, a lock another process holds for longer than the writer
thread waits) is tried again, ``RETRY_PAUSES`` apart. If the journal stays unusable, the writes
it still owes are kept, in order, as a ``JournalDebt``: the update stops (no further stanza),
its caller is told exactly what was applied, and the debt is written as soon as the journal
takes writes again (``Operations`` retries it, and refuses the instance's further updates
meanwhile).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.engine import FINAL_STATES, Event, FieldEvent, Plan, Snapshot
from service.journal import protocol as journal_protocol
from service.operations.operation import Operation
from service.operations.record import OperationError, OperationRecord, OperationState

if TYPE_CHECKING:
    from service.journal.protocol import JournalStore

#: The pauses between a failed write's attempts: three attempts in about half a second (and the
#: writer thread's own wait for a lock, ``BUSY_PATIENCE_SECONDS``, within each).
RETRY_PAUSES = (0.1, 0.4)

Write = Callable[[], Awaitable[None]]


@dataclass
class JournalDebt:
    """Writes the journal owes, in the order they must land; ``error`` is the last failure."""

    writes: list[Write] = field(default_factory=list)
    error: str = ""

    async def pay(self) -> bool:
        """Writes what is owed, in order, stopping at the first failure; whether all landed."""
        while self.writes:
            try:
                await self.writes[0]()
            except Exception as exc:
                self.error = str(exc)
                return False
            self.writes.pop(0)
        return True


class OperationJournal:
    """Writes an operation's events as they come, each durably before the next stanza."""

    def __init__(self, journal: JournalStore, operation: Operation) -> None:
        self._journal = journal
        self._operation = operation
        self._outcomes = 0
        self.begun = False
        #: Writes not yet on disk, once the journal has proved unusable for this operation.
        self.debt: JournalDebt | None = None

    @property
    def usable(self) -> bool:
        return self.debt is None

    def needs_write(self, event: Event) -> bool:
        if self._operation.request.options.validate_only:
            return False
        return not isinstance(event, FieldEvent) or event.state in FINAL_STATES

    async def write(self, event: Event) -> bool:
        """Writes what ``event`` calls for, trying again if it fails; False if the journal
        stayed unusable (the write is then owed, with every later one: ``debt``)."""
        write = self._write_for(event)
        if write is None:
            return True
        if self.debt is not None:
            self.debt.writes.append(write)
            return False
        for pause in (*RETRY_PAUSES, None):
            try:
                await write()
            except journal_protocol.RequestExists:
                raise  # not a failure: another replica's operation is this one
            except Exception as exc:
                if pause is None:
                    self.debt = JournalDebt([write], str(exc))
                    return False
                await asyncio.sleep(pause)
            else:
                return True
        raise AssertionError("unreachable")

    def _write_for(self, event: Event) -> Write | None:
        operation, journal = self._operation, self._journal
        if not self.needs_write(event):
            return None
        if isinstance(event, Plan):
            self.begun = True
            record = _begun(operation)
            return lambda: journal.begin(record)
        if isinstance(event, FieldEvent):
            position = self._outcomes
            self._outcomes += 1
            return lambda: journal.record(operation.instance.name, operation.id, position, event)
        assert isinstance(event, Snapshot)
        error = event.error
        state = OperationState.ended_by(error.code if error is not None else None)
        ending = (
            OperationError(error.code, error.reason, error.message, error.metadata)
            if error is not None
            else None
        )
        return lambda: journal.finish(
            operation.instance.name, operation.id, state, event.settings, ending
        )


def _begun(operation: Operation) -> OperationRecord:
    request = operation.request
    return OperationRecord(
        id=operation.id,
        instance=operation.instance.name,
        requested_by=request.requested_by,
        request_id=request.request_id,
        body_hash=request.fingerprint(),
        requested=request.requested,
        policy=request.options.policy,
        validate_only=request.options.validate_only,
        force=request.options.force,
        state=OperationState.RUNNING,
        started_at=time.time(),
    )
