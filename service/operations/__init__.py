"""Updates as operations: journaled, detached from their caller, safe to retry."""

from service.operations.operation import Operation, UpdateRequest, caller_left
from service.operations.registry import Operations

__all__ = ["Operation", "Operations", "UpdateRequest", "caller_left"]
