"""One update as an operation: its events, shown to its callers as the journal records them.

``Operations`` (``service.operations.registry``) starts, runs and journals operations; this is
what a caller follows. An event the journal must record is published only once its write is on
disk, so whatever a caller saw survives the gateway being killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from service.engine import (
    CALLER_CANCELLED,
    DEADLINE_PASSED,
    LEASE_LOST,
    Event,
    Halt,
    Plan,
    Snapshot,
    UpdateOptions,
)
from service.errors import GatewayError
from service.instances import Instance
from service.settings import Field


@dataclass(frozen=True)
class UpdateRequest:
    """One caller's update, validated."""

    requested: Mapping[Field, str]
    options: UpdateOptions
    request_id: str | None
    requested_by: str

    def fingerprint(self) -> str:
        """Identifies the request's content, to tell a retry from a different request."""
        body = {
            "requested": {f.value: v for f, v in self.requested.items()},
            "policy": self.options.policy.value,
            "force": self.options.force,
            "validate_only": self.options.validate_only,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class Operation:
    """A running or finished update: its events so far, followed by any number of callers.

    An event that the journal must record is only published once its write is on disk, and the
    engine's next stanza waits for that too (``service.operations.journaling``), so what a caller
    saw survives the gateway being killed and the journal is never behind WhatsApp.
    """

    def __init__(self, operation_id: str, instance: Instance, request: UpdateRequest) -> None:
        self.id = operation_id
        self.instance = instance
        self.request = request
        #: The events callers may see, in order: each one journaled if it needed to be.
        self.events: list[Event] = []
        self.error: GatewayError | None = None
        self.done = False
        self._waiters: list[asyncio.Future[None]] = []
        self._end_waiters: list[asyncio.Future[None]] = []
        self._halt: Halt | None = None
        #: The loop it runs and is followed on (looked up once: each lookup is a system call).
        self.loop = asyncio.get_running_loop()

    def halt(self, reason: Halt) -> None:
        """No further stanza may start (the stanza in flight finishes)."""
        if self._halt is None:
            self._halt = reason

    def halted(self) -> Halt | None:
        """Why no further stanza may start, if one may not: halted, or the instance is no
        longer this process's to serve (checked here too, before the lease's own stop runs)."""
        if self._halt is None and not self.instance.serving():
            self._halt = LEASE_LOST
        return self._halt

    def publish(self, event: Event) -> None:
        """Shows ``event`` to callers. ``Operations`` publishes an event the journal must record
        only once its write is on disk (or, the journal having failed, once it is owed)."""
        self.events.append(event)
        self._wake()

    def end(self, error: GatewayError | None = None) -> None:
        """No more events. ``error`` refuses the update, or reports it crashed."""
        if error is not None:
            self.error = error
        self.done = True
        self._wake()
        for waiter in self._end_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._end_waiters.clear()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def ended(self) -> None:
        """Returns once the operation has ended (its outcome journaled, if it could be)."""
        if not self.done:
            waiter = self.loop.create_future()
            self._end_waiters.append(waiter)
            await waiter

    async def outcome(self) -> tuple[Plan, Snapshot]:
        """The plan and the snapshot once the operation has ended; raises the error of a refused
        update. For a caller that wants only the end: one wake-up rather than one per event."""
        await self.ended()
        if self.error is not None:
            raise self.error
        plan, snapshot = self.events[0], self.events[-1]
        assert isinstance(plan, Plan), "the engine plans first"
        assert isinstance(snapshot, Snapshot), "the engine snapshots last"
        return plan, snapshot

    async def follow(self) -> AsyncIterator[Event]:
        """Every event from the first, as they come; raises the error of a refused update."""
        seen = 0
        while True:
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            # A waiter of its own: a follower that is cancelled must not cancel the others.
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter


def caller_left(operation: Operation, deadline: float | None) -> None:
    """The caller who started ``operation`` went away: start no further stanza."""
    if not operation.done:
        passed = deadline is not None and time.monotonic() >= deadline
        operation.halt(DEADLINE_PASSED if passed else CALLER_CANCELLED)
