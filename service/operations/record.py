"""An operation as the journal holds it: one typed record, which both edges render.

The journal decodes a row into an ``OperationRecord`` once, as it reads it; GetUpdateOperation
and ListUpdateOperations render records (``service.grpc.convert``, ``service.http.responses``),
and a retry of a finished operation replays one (``service.operations.replay``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from service import errors
from service.engine import FailurePolicy, FieldEvent
from service.errors import Code
from service.settings import Field, Settings


class OperationState(enum.Enum):
    """Where an operation stands: running, or how it ended (the journal stores the value)."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    #: The gateway stopped while it ran (it was killed): marked so on the next start.
    INTERRUPTED = "INTERRUPTED"

    @classmethod
    def ended_by(cls, code: Code | None) -> OperationState:
        """How an update that ended with an error of ``code`` (None: none) ended."""
        if code is None:
            return cls.COMPLETED
        return _ENDED_BY.get(code, cls.FAILED)


_ENDED_BY = {
    Code.CANCELLED: OperationState.CANCELLED,
    Code.DEADLINE_EXCEEDED: OperationState.DEADLINE_EXCEEDED,
}


@dataclass(frozen=True, slots=True)
class OperationError:
    """Why an operation did not complete, as its caller was told."""

    code: Code
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)


#: What an operation a stopped gateway left running ended with.
INTERRUPTED_ERROR = OperationError(
    errors.INTERRUPTED.code,
    errors.INTERRUPTED.name,
    "the gateway stopped before the update finished",
)


@dataclass(frozen=True, slots=True)
class OperationRecord:
    """One journaled operation: the request, how it stands, and each field's outcome."""

    id: str
    instance: str
    requested_by: str
    request_id: str | None
    #: The request's fingerprint (``UpdateRequest.fingerprint``): a retry's must match.
    body_hash: str
    #: The fields and values asked for, in the request's order.
    requested: Mapping[Field, str]
    policy: FailurePolicy
    validate_only: bool
    force: bool
    state: OperationState
    #: ``time.time()`` when it started and, once it has, when it ended.
    started_at: float
    ended_at: float | None = None
    #: The settings read back at the end; None while it runs or if it ended without them.
    settings: Settings | None = None
    error: OperationError | None = None
    #: Every final event, in order (a restore, or the re-read of an UNCONFIRMED stanza, is a
    #: second outcome of its field).
    outcomes: tuple[FieldEvent, ...] = ()
