"""Updates as operations: journaled, detached from their caller, safe to retry.

- ``record``: ``OperationState`` and ``OperationRecord``, an operation as the journal holds it;
- ``operation``: ``Operation``, what a caller follows, and ``UpdateRequest``;
- ``journaling``: what an operation's events write to the journal;
- ``replay``: a finished operation from its record, for a retry;
- ``registry``: ``Operations``, which starts, runs, journals, finds and lists them.
"""

from service.operations.operation import Operation, UpdateRequest, caller_left
from service.operations.record import OperationError, OperationRecord, OperationState
from service.operations.registry import Operations

__all__ = [
    "Operation",
    "OperationError",
    "OperationRecord",
    "OperationState",
    "Operations",
    "UpdateRequest",
    "caller_left",
]
