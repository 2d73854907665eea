"""An update as a caller holds it: the input it sends, and the handle it follows.

``UpdateInput`` is the one shape both edges build from their wire; ``UpdateHandle`` is what a call
follows: the events as they are journaled, or just the outcome, and the knowledge that its caller
left. A caller who goes away (a cancelled gRPC call, a REST client that hung up) halts the update:
the stanza in flight finishes and is journaled, and no further stanza starts. Only the caller who
started an operation may halt it; a retry that re-attached to it just leaves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType

from service.engine import Event, Plan, Snapshot
from service.errors import UpdateFailed
from service.observability import calls
from service.operations import Operation, caller_left
from service.settings import Field


@dataclass(frozen=True, slots=True)
class UpdateInput:
    """What a caller asks of an update, as its wire said it (``rules`` validates it)."""

    instance: str
    settings: Mapping[Field, str]
    #: The failure policy's name without the wire's prefix (``STOP``); None for the default.
    policy: str | None = None
    force: bool = False
    validate_only: bool = False
    #: The retry id as sent (a UUID); None when the call is not a retry.
    request_id: str | None = None
    #: When the caller stops waiting (``time.monotonic()``); None when it never does.
    deadline: float | None = None


class UpdateHandle:
    """One call's hold on an operation: its own, or one a retry re-attached to.

    Use it as an async context manager: leaving the block by an exception (the call cancelled,
    the connection gone) tells the operation its caller left.
    """

    def __init__(self, operation: Operation, *, owned: bool, deadline: float | None) -> None:
        self.operation = operation
        self._owned = owned
        self._deadline = deadline

    @property
    def operation_id(self) -> str:
        """The id a caller can look the operation up by; a dry run has none (nothing journaled)."""
        return "" if self.operation.request.options.validate_only else self.operation.id

    def follow(self) -> AsyncIterator[Event]:
        """Every event from the plan to the snapshot, each once it is journaled."""
        return self.operation.follow()

    async def outcome(self) -> tuple[Plan, Snapshot]:
        """The plan and the snapshot of an update that completed; raises ``failure`` if not."""
        plan, snapshot = await self.operation.outcome()
        if snapshot.error is not None:
            raise self.failure(snapshot.error)
        return plan, snapshot

    def failure(self, error: UpdateFailed) -> UpdateFailed:
        """``error`` naming the operation, so the caller can look it up."""
        if self.operation_id:
            error.metadata = {**error.metadata, "operation_id": self.operation_id}
        calls.note_failure(error)
        return error

    def left(self) -> None:
        """The caller went away: no further stanza, if this caller started the operation."""
        if self._owned:
            caller_left(self.operation, self._deadline)

    async def __aenter__(self) -> UpdateHandle:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            self.left()
