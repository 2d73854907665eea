"""What one operation's events write to the journal, and the writes still in flight."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from service.engine import FINAL_STATES, Event, FieldEvent, Plan, Snapshot
from service.operations.operation import Operation
from service.operations.record import OperationError, OperationRecord, OperationState

if TYPE_CHECKING:
    from service.journal import Journal


class OperationJournal:
    """Queues the journal write each of an operation's events calls for."""

    def __init__(self, journal: Journal, operation: Operation) -> None:
        self._journal = journal
        self._operation = operation
        self._outcomes = 0
        self._pending: list[asyncio.Future[None]] = []
        self.begun = False

    def write(self, event: Event) -> asyncio.Future[None] | None:
        """Queues the write ``event`` calls for, if any; its future resolves once on disk."""
        operation = self._operation
        if operation.request.options.validate_only:
            return None
        if isinstance(event, Plan):
            self.begun = True
            return self._track(self._journal.begin(_begun(operation)))
        if isinstance(event, FieldEvent) and event.state in FINAL_STATES:
            position = self._outcomes
            self._outcomes += 1
            return self._track(self._journal.record(operation.id, position, event))
        if isinstance(event, Snapshot):
            error = event.error
            state = OperationState.ended_by(error.code if error is not None else None)
            ending = (
                OperationError(error.code, error.reason, error.message, error.metadata)
                if error is not None
                else None
            )
            return self._track(self._journal.finish(operation.id, state, event.settings, ending))
        return None

    async def flushed(self) -> None:
        """Returns once every write is on disk; raises the first that failed."""
        if self._pending:
            # Groups commit in the order writes were queued: the last one done means all are.
            with contextlib.suppress(Exception):
                await self._pending[-1]
        failures = [write.exception() for write in self._pending]
        first = next((failure for failure in failures if failure is not None), None)
        if first is not None:
            raise first

    def _track(self, write: asyncio.Future[None]) -> asyncio.Future[None]:
        self._pending.append(write)
        return write


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
