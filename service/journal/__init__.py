"""The operation journal: every update, durable in SQLite before the caller hears of it."""

from service.journal.store import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    RUNNING,
    Journal,
    OperationRow,
    OutcomeRow,
    as_json,
)

__all__ = [
    "COMPLETED",
    "FAILED",
    "INTERRUPTED",
    "RUNNING",
    "Journal",
    "OperationRow",
    "OutcomeRow",
    "as_json",
]
