"""``Operations``: starts updates as operations, journals them, finds and lists them.

An update runs in a task of its own, not in the caller's: a caller who disconnects or whose
deadline passes stops further stanzas (the engine is told to halt), but the stanza in flight
finishes and the whole outcome is journaled, so ``GetUpdateOperation`` can say exactly what
happened. Callers follow an operation's events; a retry with the same ``request_id`` follows the
same operation while it runs, and replays the journal once it has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from service import engine, errors
from service.data_dir import JournalError
from service.engine import JOURNAL_FAILED, SHUTTING_DOWN, Event, FieldState, Halt, Plan, Snapshot
from service.errors import GatewayError, shown
from service.instances import Instance

# The journal's module rather than its names: the journal decodes rows into this package's
# records, so whichever of the two packages is imported first finds the other part-way through.
from service.journal import protocol as journal_protocol
from service.operations.journaling import JournalDebt, OperationJournal
from service.operations.operation import Operation, UpdateRequest
from service.operations.record import OperationError, OperationRecord, OperationState
from service.operations.replay import replayed

if TYPE_CHECKING:
    from service.journal.protocol import JournalStore
    from service.observability import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often the journal's write-ahead log is copied into its database.
CHECKPOINT_SECONDS = 1.0
#: How often writes the journal owes (it failed them) are tried again.
DEBT_RETRY_SECONDS = 1.0


class Operations:
    """Starts, journals, finds and replays operations.

    ``open_journal`` opens the journal at start-up (``service.journal.sqlite.sqlite_journal``,
    ``service.journal.postgres.postgres_journal``); it raises ``JournalError`` when the journal
    cannot be used, which stops the gateway with one line.
    """

    def __init__(
        self,
        open_journal: Callable[[], Awaitable[JournalStore]],
        retention_seconds: float,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._open_journal = open_journal
        #: Counts updates, their stanzas and the journal's commits (None: nothing is counted).
        self._metrics = metrics
        self._journal: JournalStore | None = None
        self._retention = retention_seconds
        self._running: dict[tuple[str, str], Operation] = {}
        self._by_request: dict[tuple[str, str], Operation] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._upkeep: list[asyncio.Task[None]] = []
        self._closed = False
        self._request_locks: dict[tuple[str, str], asyncio.Lock] = {}
        #: Writes the journal owes, by instance: its updates are refused until they are made.
        self._debts: dict[str, JournalDebt] = {}
        self._debt_task: asyncio.Task[None] | None = None

    async def start_up(self) -> None:
        """Opens the journal, marks what a killed predecessor left RUNNING as INTERRUPTED, and
        starts purging what is past retention.

        A journal the replicas share marks nothing here: the operations left RUNNING in it may
        be running on other replicas. Each instance's are marked when this replica takes its
        lease (``adopt``).
        """
        self._journal = journal = await self._open_journal()
        if not journal.shared:
            try:
                interrupted = await journal.mark_interrupted()
            except (sqlite3.Error, OSError) as exc:
                await journal.close()
                raise JournalError(journal.location, exc) from exc
            self._interrupted(interrupted, "by the previous stop")
        self._upkeep = [
            asyncio.create_task(self._purge_periodically(), name="journal-purge"),
            asyncio.create_task(self._checkpoint_periodically(), name="journal-checkpoint"),
        ]

    async def adopt(self, instance_name: str) -> int:
        """Marks ``instance_name``'s RUNNING operations INTERRUPTED, those this process runs
        aside: called once this replica holds the instance's lease, they were its previous
        owner's, which died or stalled past its lease. Fenced like every write: raises
        ``StaleLease`` if this replica no longer holds the lease, and ``JournalUnavailable``
        while the database is gone (the caller tries again). How many were marked."""
        sparing = [oid for name, oid in self._running if name == instance_name]
        interrupted = await self.journal.mark_interrupted(instance_name, sparing)
        self._interrupted(interrupted, f"on instance {instance_name}'s previous owner")
        return interrupted

    def _interrupted(self, count: int, where: str) -> None:
        if count:
            log.warning("%d update(s) were interrupted %s", count, where)
            if self._metrics is not None:
                self._metrics.update_ended(OperationState.INTERRUPTED, count)

    def halt_running(self, halt: Halt) -> int:
        """Halts every running operation (its stanza in flight finishes); how many there were."""
        running = [o for o in self._running.values() if not o.done]
        for operation in running:
            operation.halt(halt)
        return len(running)

    async def stop_instance(self, name: str, halt: Halt) -> None:
        """Halts the instance's running operations and waits until they have ended and been
        journaled (a replica handing the instance over must not give up its lease before)."""
        running = [o for (instance, _), o in self._running.items() if instance == name]
        for operation in running:
            operation.halt(halt)
        for operation in running:
            await operation.ended()

    async def close(self) -> None:
        """Lets running operations end (their stanzas in flight), then closes the journal."""
        if self._closed:
            return
        self._closed = True
        for task in self._upkeep:
            task.cancel()
        if self._debt_task is not None:
            self._debt_task.cancel()
        for operation in list(self._running.values()):
            operation.halt(SHUTTING_DOWN)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for instance, debt in self._debts.items():  # one last try: else INTERRUPTED on restart
            if not await debt.pay():
                log.error("journal: instance %s's owed writes are lost (%s)", instance, debt.error)
        if self._journal is not None:
            await self._journal.close()

    # -- updates -------------------------------------------------------------------------------

    async def start(
        self, instance: Instance, request: UpdateRequest, deadline: float | None
    ) -> Operation:
        """The operation for ``request``: a new one, or the one a retry refers to."""
        debt = self._debts.get(instance.name)
        if debt is not None:
            raise errors.JOURNAL_UNAVAILABLE.error(
                retry_after=DEBT_RETRY_SECONDS, detail=shown(debt.error)
            )
        if request.request_id is None:
            return self._launch(instance, request, deadline)
        # Calls with one request_id, arriving together, must find each other: the journal
        # lookup and the registration happen under one lock per request_id.
        key = (instance.name, request.request_id)
        lock = self._request_locks.setdefault(key, asyncio.Lock())
        async with lock:
            existing = await self._existing(instance, request)
            operation = existing or self._launch(instance, request, deadline)
        if not lock.locked() and self._request_locks.get(key) is lock:
            del self._request_locks[key]
        return operation

    def _launch(
        self, instance: Instance, request: UpdateRequest, deadline: float | None
    ) -> Operation:
        operation = Operation(_new_operation_id(), instance, request)
        if not request.options.validate_only:
            self._running[(instance.name, operation.id)] = operation
            if request.request_id is not None:
                self._by_request[(instance.name, request.request_id)] = operation
        task = operation.loop.create_task(
            self._run(operation, deadline), name=f"update-{operation.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return operation

    async def _existing(self, instance: Instance, request: UpdateRequest) -> Operation | None:
        assert request.request_id is not None
        running = self._by_request.get((instance.name, request.request_id))
        if running is not None:
            _same_request(running.request, request)
            return running
        record = await self._read(self.journal.find_request(instance.name, request.request_id))
        if record is None:
            return None
        if record.body_hash != request.fingerprint():
            raise _reused(request.request_id)
        return replayed(instance, record)

    async def _journaled_elsewhere(self, operation: Operation) -> None:
        """``operation``'s ``request_id`` was journaled by another replica just before its own
        row could be: it is that operation, found by the path a retry takes (``_existing``).
        Nothing of ``operation`` was sent or shown, so its callers see the other one's events,
        under its id."""
        request, instance = operation.request, operation.instance
        self._forget(operation)
        try:
            existing = await self._existing(instance, request)
        except GatewayError as refused:  # another request under that request_id
            operation.end(refused)
            return
        if existing is None:  # gone again in between (purged): nothing to follow
            operation.end(
                errors.JOURNAL_UNAVAILABLE.error(
                    detail="the request_id's operation"
                    " was journaled by another replica and could not be read back"
                )
            )
            return
        operation.id = existing.id
        for event in existing.events:
            operation.publish(event)
        operation.end(existing.error)

    async def _run(self, operation: Operation, deadline: float | None) -> None:
        request = operation.request
        journal = OperationJournal(self.journal, operation)
        counted = self._metrics.journaled if self._metrics is not None else None
        event: Event | None = None
        try:
            events = engine.update(
                operation.instance,
                request.requested,
                options=request.options,
                deadline=deadline,
                halt=operation.halted,
            )
            # Closed on any exit, so a failure here cannot leave the engine suspended inside
            # the instance's lock.
            async with contextlib.aclosing(events):
                async for event in events:
                    visible = await self._journaled(operation, journal, event)
                    if visible is None:
                        return  # the operation's row could not be written: nothing was sent
                    operation.publish(visible)
                    if counted is not None and journal.needs_write(visible):
                        counted(visible)
        except GatewayError as refused:
            # Refused before the plan (not connected...): nothing was sent or journaled.
            operation.end(refused)
        except Exception as exc:
            log.exception("update %s failed unexpectedly", operation.id)
            crash = errors.INTERNAL.error(detail=exc)
            if journal.begun and journal.usable:
                ending = OperationError(crash.code, crash.reason, crash.message)
                with contextlib.suppress(Exception):
                    await self.journal.finish(
                        operation.instance.name, operation.id, OperationState.FAILED, None, ending
                    )
                if self._metrics is not None and not isinstance(event, Snapshot):
                    self._metrics.update_ended(OperationState.FAILED)
            operation.end(crash)
        finally:
            self._forget(operation)
            if journal.debt is not None and journal.debt.writes:
                self._owe(operation.instance.name, journal.debt)
            operation.end()

    def _forget(self, operation: Operation) -> None:
        """``operation`` no longer runs here (nor is found by its ``request_id``)."""
        name, request_id = operation.instance.name, operation.request.request_id
        if self._running.get((name, operation.id)) is operation:
            del self._running[(name, operation.id)]
        if request_id is not None and self._by_request.get((name, request_id)) is operation:
            del self._by_request[(name, request_id)]

    async def _journaled(
        self, operation: Operation, journal: OperationJournal, event: Event
    ) -> Event | None:
        """``event`` once the journal holds it, as the caller is to see it; None when the
        operation cannot even begin (its row could not be written, or another replica's
        operation has its ``request_id``)."""
        try:
            written = await journal.write(event)
        except journal_protocol.RequestExists:
            await self._journaled_elsewhere(operation)
            return None
        if written:  # once the journal is unusable, each write is owed
            return event
        assert journal.debt is not None
        if isinstance(event, Plan):
            operation.end(errors.JOURNAL_UNAVAILABLE.error(detail=shown(journal.debt.error)))
            journal.debt = None  # nothing happened that the journal must learn of
            return None
        # No further stanza; what was applied is still told, and written once the journal can.
        operation.halt(JOURNAL_FAILED)
        if isinstance(event, Snapshot):
            if journal.debt.writes:
                journal.debt.writes.pop()  # the ending as the engine had it...
            event = _behind(operation, event, journal.debt.error)
            await journal.write(event)  # ...owed as the caller is told it
        return event

    def _owe(self, instance: str, debt: JournalDebt) -> None:
        """``instance``'s updates wait until the journal has taken ``debt``."""
        log.error(
            "journal: %d write(s) of instance %s could not be made (%s); its updates are "
            "refused until they are",
            len(debt.writes), instance, debt.error,
        )  # fmt: skip
        owed = self._debts.get(instance)
        if owed is None:
            self._debts[instance] = debt
        else:  # an update that had begun before the first one's writes failed
            owed.writes.extend(debt.writes)
        if self._debt_task is None or self._debt_task.done():
            self._debt_task = asyncio.create_task(self._pay_debts(), name="journal-debts")

    async def _pay_debts(self) -> None:
        while self._debts:
            await asyncio.sleep(DEBT_RETRY_SECONDS)
            for instance, debt in list(self._debts.items()):
                if await debt.pay():
                    del self._debts[instance]
                    log.warning("journal: instance %s's owed writes are on disk", instance)

    # -- reading the journal -------------------------------------------------------------------

    async def get(self, instance: Instance, operation_id: str) -> OperationRecord:
        record = await self._read(self.journal.get(instance.name, operation_id))
        if record is None:
            raise errors.OPERATION_NOT_FOUND.error(
                instance=instance.name, operation_id=shown(operation_id)
            )
        return record

    async def list(
        self, instance: Instance, page_size: int, page_token: str
    ) -> tuple[list[OperationRecord], str]:
        try:
            return await self._read(self.journal.list(instance.name, page_size, page_token))
        except ValueError as exc:
            raise errors.INVALID_PAGE_TOKEN.error() from exc

    # -- internals -----------------------------------------------------------------------------

    @property
    def journal(self) -> JournalStore:
        if self._journal is None:
            raise RuntimeError("the operation journal is not open: call start_up() first")
        return self._journal

    async def _read(self, read: Awaitable[T]) -> T:
        """A read's result; a database that is gone is the caller's JOURNAL_UNAVAILABLE."""
        try:
            return await read
        except journal_protocol.JournalUnavailable as exc:
            raise errors.JOURNAL_UNAVAILABLE.error(
                retry_after=DEBT_RETRY_SECONDS, detail=shown(str(exc))
            ) from exc

    async def _purge_periodically(self) -> None:
        while True:
            try:
                purged = await self.journal.purge(time.time() - self._retention)
            except (sqlite3.Error, OSError, journal_protocol.JournalUnavailable) as exc:
                # A full disk, a database that is gone: next time, then.
                log.warning("journal: purge failed: %s", exc)
            else:
                if purged:
                    log.info("journal: purged %d operation(s) past retention", purged)
            await asyncio.sleep(3600)

    async def _checkpoint_periodically(self) -> None:
        """Keeps SQLite's write-ahead log short, off the loop (see ``Journal``): the store's
        ``upkeep``."""
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            try:
                await self.journal.upkeep()
            except (sqlite3.Error, OSError, journal_protocol.JournalUnavailable) as exc:
                log.debug("journal: checkpoint failed: %s", exc)  # a full disk, a lock: later


class _RandomIds:
    """Random version-4 UUIDs from ``os.urandom``, read 256 at a time: a read is a system call,
    which lets go of the GIL, and under load the loop then waits to get it back."""

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def __call__(self) -> str:
        if self._next >= len(self._pool):
            self._pool, self._next = os.urandom(16 * 256), 0
        raw = self._pool[self._next : self._next + 16]
        self._next += 16
        return uuid.UUID(bytes=raw, version=4).hex


_new_operation_id = _RandomIds()


def _same_request(known: UpdateRequest, request: UpdateRequest) -> None:
    if known.fingerprint() != request.fingerprint():
        assert request.request_id is not None
        raise _reused(request.request_id)


def _reused(request_id: str) -> GatewayError:
    return errors.REQUEST_ID_REUSED.error(request_id=request_id)


def _behind(operation: Operation, snapshot: Snapshot, detail: str) -> Snapshot:
    """The snapshot as the caller is told it when the journal could not record the update:
    an update that had not failed otherwise fails JOURNAL_BEHIND, with what was applied."""
    if snapshot.error is not None:
        return snapshot
    applied = ",".join(f.value for f in snapshot.fields_in(FieldState.APPLIED))
    metadata = {"instance": operation.instance.name, "applied": applied}
    failed = errors.JOURNAL_BEHIND.failure(snapshot, extra=metadata, detail=shown(detail))
    return Snapshot(snapshot.settings, snapshot.outcomes, failed)
