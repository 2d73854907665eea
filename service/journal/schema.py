"""How an operation is laid out in the journal's tables, and read back as a record.

One row per operation and one per field outcome. States, policies, fields and error codes are
stored as their names (``COMPLETED``, ``STOP``, ``last_seen``, ``UNAVAILABLE``), and settings as
JSON objects of field names to values: the layout every earlier journal file has, so they all
still read. PostgreSQL's tables (``service.journal.postgres``) have the same columns. ``decode``
turns rows of either into an ``OperationRecord``, the one place that does.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from service.engine import FailurePolicy, FieldEvent, FieldState
from service.errors import Code
from service.operations.record import OperationError, OperationRecord, OperationState
from service.settings import Field, Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id            TEXT PRIMARY KEY,
    instance      TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    request_id    TEXT,
    body_hash     TEXT NOT NULL,
    requested     TEXT NOT NULL,
    policy        TEXT NOT NULL,
    validate_only INTEGER NOT NULL,
    force         INTEGER NOT NULL,
    state         TEXT NOT NULL,
    started_at    REAL NOT NULL,
    ended_at      REAL,
    settings      TEXT,
    error_code    TEXT,
    error_reason  TEXT,
    error_message TEXT,
    error_metadata TEXT
);
CREATE INDEX IF NOT EXISTS operations_by_instance ON operations (instance, started_at, id);
CREATE UNIQUE INDEX IF NOT EXISTS operations_by_request
    ON operations (instance, request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS outcomes (
    operation_id TEXT NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    field        TEXT NOT NULL,
    state        TEXT NOT NULL,
    value        TEXT NOT NULL,
    previous     TEXT NOT NULL,
    elapsed      REAL,
    error        TEXT,
    PRIMARY KEY (operation_id, position)
);
"""

#: The statements of the common writes (``Rows``; SQLite keeps each prepared).
BEGIN = (
    "INSERT INTO operations (id, instance, requested_by, request_id, body_hash,"
    " requested, policy, validate_only, force, state, started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
RECORD = (
    "INSERT OR REPLACE INTO outcomes (operation_id, position, field, state, value,"
    " previous, elapsed, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
FINISH = (
    "UPDATE operations SET state = ?, ended_at = ?, settings = ?, error_code = ?,"
    " error_reason = ?, error_message = ?, error_metadata = ? WHERE id = ?"
)


def create(db: sqlite3.Connection) -> None:
    """Creates the tables, and brings a journal written by an earlier version up to them."""
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(operations)")}
    if "error_metadata" not in columns:
        db.execute("ALTER TABLE operations ADD COLUMN error_metadata TEXT")


class Row(Protocol):
    """A row by column name: ``sqlite3.Row``, an asyncpg ``Record``, any mapping."""

    def __getitem__(self, key: str, /) -> Any: ...


def decode(row: Row, outcomes: Iterable[Row]) -> OperationRecord:
    """The record of an operation's row and its outcome rows (in position order), from either
    database: SQLite's integers for booleans and PostgreSQL's booleans read the same."""
    settings = row["settings"]
    code = row["error_code"]
    metadata = row["error_metadata"]
    return OperationRecord(
        id=row["id"],
        instance=row["instance"],
        requested_by=row["requested_by"],
        request_id=row["request_id"],
        body_hash=row["body_hash"],
        requested={Field(k): v for k, v in json.loads(row["requested"]).items()},
        policy=FailurePolicy[row["policy"]],
        validate_only=bool(row["validate_only"]),
        force=bool(row["force"]),
        state=OperationState(row["state"]),
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        settings=_settings(settings) if settings else None,
        error=OperationError(
            Code(code),
            row["error_reason"] or "",
            row["error_message"] or "",
            json.loads(metadata) if metadata else {},
        )
        if code
        else None,
        outcomes=tuple(
            FieldEvent(
                Field(o["field"]),
                FieldState[o["state"]],
                o["value"],
                o["previous"],
                o["elapsed"],
                o["error"],
            )
            for o in outcomes
        ),
    )


def encode_values(values: Mapping[Field, str]) -> str:
    """Fields and values (the requested ones, or settings) as the journal stores them."""
    return json.dumps({f.value: v for f, v in values.items()})


def _settings(stored: str) -> Settings:
    return Settings({Field(k): v for k, v in json.loads(stored).items()})
