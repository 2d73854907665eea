"""The operation journal in the PostgreSQL database replicas share, each write fenced by a lease.

The tables are SQLite's (``service.journal.schema``), column for column, plus ``lease_token``:
the fencing token (``service.cluster.ownership``) of the lease the write was made under. Every
write of an instance carries the token this replica holds on it and the ``FENCE`` condition, so
the database itself refuses the write of a replica that lost the lease (it stalled past it, or
another replica took the instance over): such a write changes nothing and raises
``StaleLease``. A write is one statement, committed when it returns; ``Operations`` awaits each
before the next stanza, so the writes of one operation land in order.

A database that is gone (stopped, unreachable, refusing connections) raises
``JournalUnavailable``, which ``Operations`` treats as SQLite's full disk: no further stanza, the
write retried, then owed until the database takes it.

Ids sort bytewise (``COLLATE "C"``), as SQLite's ``TEXT`` does, so pages and page tokens are
the same in both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from service.cluster import DatabaseError
from service.cluster.database import (
    CONNECT_TIMEOUT_SECONDS,
    migrate,
    open_pool,
)
from service.cluster.ownership import FENCE, LEASE_TABLES, Ownership
from service.data_dir import JournalError
from service.engine import FieldEvent
from service.journal import schema
from service.journal.protocol import JournalUnavailable, RequestExists, StaleLease
from service.journal.store import decode_page_token, encode_page_token
from service.operations.record import (
    INTERRUPTED_ERROR,
    OperationError,
    OperationRecord,
    OperationState,
)
from service.settings import Settings

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

T = TypeVar("T")
#: A connection of the pool, as ``Pool.acquire`` lends it.
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

TABLES = """
CREATE TABLE IF NOT EXISTS operations (
    id             TEXT COLLATE "C" PRIMARY KEY,
    instance       TEXT NOT NULL,
    requested_by   TEXT NOT NULL,
    request_id     TEXT,
    body_hash      TEXT NOT NULL,
    requested      TEXT NOT NULL,
    policy         TEXT NOT NULL,
    validate_only  BOOLEAN NOT NULL,
    force          BOOLEAN NOT NULL,
    state          TEXT NOT NULL,
    started_at     DOUBLE PRECISION NOT NULL,
    ended_at       DOUBLE PRECISION,
    settings       TEXT,
    error_code     TEXT,
    error_reason   TEXT,
    error_message  TEXT,
    error_metadata TEXT,
    lease_token    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_by_instance ON operations (instance, started_at, id);
CREATE UNIQUE INDEX IF NOT EXISTS operations_by_request
    ON operations (instance, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_running ON operations (instance) WHERE state = 'RUNNING';
CREATE TABLE IF NOT EXISTS outcomes (
    operation_id TEXT COLLATE "C" NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    field        TEXT NOT NULL,
    state        TEXT NOT NULL,
    value        TEXT NOT NULL,
    previous     TEXT NOT NULL,
    elapsed      DOUBLE PRECISION,
    error        TEXT,
    lease_token  BIGINT NOT NULL,
    PRIMARY KEY (operation_id, position)
);
"""

# Each fenced write: ``$1`` the instance, ``$2`` the token (as ``FENCE`` has them). The write
# and the second look at the fence are one statement, so they see one snapshot: ``held`` says
# whether the write's fence let it through, ``written`` how many rows it changed.
_FENCED = (
    "WITH written AS ({write} RETURNING 1) SELECT "
    + FENCE
    + (" AS held, (SELECT count(*) FROM written) AS written")
)
BEGIN = _FENCED.format(
    write="INSERT INTO operations (id, instance, requested_by, request_id, body_hash, requested,"
    " policy, validate_only, force, state, started_at, lease_token)"
    " SELECT $3::text, $1::text, $4::text, $5::text, $6::text, $7::text, $8::text,"
    " $9::boolean, $10::boolean, $11::text, $12::double precision, $2::bigint"
    f" WHERE {FENCE} ON CONFLICT (id) DO NOTHING"
)
RECORD = _FENCED.format(
    write="INSERT INTO outcomes (operation_id, position, field, state, value, previous, elapsed,"
    " error, lease_token)"
    " SELECT $3::text, $4::integer, $5::text, $6::text, $7::text, $8::text,"
    " $9::double precision, $10::text, $2::bigint"
    f" WHERE {FENCE}"
    " AND EXISTS (SELECT 1 FROM operations o WHERE o.id = $3 AND o.instance = $1)"
    " ON CONFLICT (operation_id, position) DO UPDATE SET field = EXCLUDED.field,"
    " state = EXCLUDED.state, value = EXCLUDED.value, previous = EXCLUDED.previous,"
    " elapsed = EXCLUDED.elapsed, error = EXCLUDED.error, lease_token = EXCLUDED.lease_token"
)
FINISH = _FENCED.format(
    write="UPDATE operations SET state = $4, ended_at = $5, settings = $6, error_code = $7,"
    " error_reason = $8, error_message = $9, error_metadata = $10, lease_token = $2"
    f" WHERE id = $3 AND instance = $1 AND {FENCE}"
)
MARK_INTERRUPTED = _FENCED.format(
    write="UPDATE operations SET state = $3, ended_at = $4, error_code = $5, error_reason = $6,"
    " error_message = $7, lease_token = $2"
    f" WHERE instance = $1 AND state = $8 AND NOT (id = ANY($9::text[])) AND {FENCE}"
)
PURGE = "DELETE FROM operations WHERE state != $1 AND ended_at < $2"
GET = "SELECT * FROM operations WHERE instance = $1 AND id = $2"
FIND_REQUEST = "SELECT * FROM operations WHERE instance = $1 AND request_id = $2"
LIST = (
    "SELECT * FROM operations WHERE instance = $1"
    " AND (started_at < $2 OR (started_at = $2 AND id < $3))"
    " ORDER BY started_at DESC, id DESC LIMIT $4"
)
OUTCOMES = (
    "SELECT * FROM outcomes WHERE operation_id = ANY($1::text[]) ORDER BY operation_id, position"
)

#: What a database that is gone raises: it may work again, so the write is retried, then owed.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # CannotConnectNowError, AdminShutdownError and a statement timeout (QueryCanceledError).
    asyncpg.OperatorInterventionError,
    # Too many connections, a full disk on the server, out of memory.
    asyncpg.InsufficientResourcesError,
    # A server that became a standby (a failover under way).
    asyncpg.ReadOnlySQLTransactionError,
)
#: What a failed attempt to create the tables raises, besides a database that is gone.
UNUSABLE: tuple[type[BaseException], ...] = (*UNAVAILABLE, asyncpg.PostgresError)
#: What a pool that cannot close cleanly raises.
UNCLOSABLE: tuple[type[BaseException], ...] = (*UNAVAILABLE, TimeoutError)
#: The unique index a second ``begin`` of one instance's ``request_id`` runs into.
REQUEST_INDEX = "operations_by_request"
#: Seconds ``close`` waits for the pool's connections to close before it drops them.
CLOSE_TIMEOUT_SECONDS = 5.0


class PostgresJournal:
    """``JournalStore`` on an asyncpg pool, shared with the other replicas (``shared``).

    Each write is a task of its own, started at once and committed even if whoever awaits it
    goes away (as SQLite's queued writes are); ``close`` lets those in flight land. ``owns_pool``:
    ``close`` also closes the pool (the opener's own pool, ``postgres_journal``).
    """

    shared = True
    location: Path | None = None

    def __init__(
        self, pool: asyncpg.Pool, ownership: Ownership, *, owns_pool: bool = False
    ) -> None:
        self._pool = pool
        self._ownership = ownership
        self._owns_pool = owns_pool
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- writes (each resolves once committed) -------------------------------------------------

    def begin(self, record: OperationRecord) -> Awaitable[None]:
        token = self._token(record.instance)
        params = (
            record.id, record.requested_by, record.request_id, record.body_hash,
            schema.encode_values(record.requested), record.policy.name, record.validate_only,
            record.force, record.state.value, record.started_at,
        )  # fmt: skip

        async def write(connection: Connection) -> None:
            try:
                await self._fenced(connection, BEGIN, record.instance, token, *params)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != REQUEST_INDEX or record.request_id is None:
                    raise
                raise RequestExists(record.instance, record.request_id) from None
            # No row written but the fence held: the id is there already (an earlier attempt
            # of this write committed, and only its answer was lost).

        return self._write(write)

    def record(
        self, instance: str, operation_id: str, position: int, outcome: FieldEvent
    ) -> Awaitable[None]:
        token = self._token(instance)
        params = (
            operation_id, position, outcome.field.value, outcome.state.name, outcome.value,
            outcome.previous, outcome.elapsed, outcome.error,
        )  # fmt: skip

        async def write(connection: Connection) -> None:
            if not await self._fenced(connection, RECORD, instance, token, *params):
                raise _not_journaled(instance, operation_id)

        return self._write(write)

    def finish(
        self,
        instance: str,
        operation_id: str,
        state: OperationState,
        settings: Settings | None,
        error: OperationError | None,
    ) -> Awaitable[None]:
        token = self._token(instance)
        code, reason, message, metadata = (
            (error.code.value, error.reason, error.message, error.metadata)
            if error is not None
            else (None, None, None, None)
        )
        params = (
            operation_id, state.value, time.time(),
            schema.encode_values(settings) if settings else None, code, reason, message,
            json.dumps(dict(metadata)) if metadata else None,
        )  # fmt: skip

        async def write(connection: Connection) -> None:
            if not await self._fenced(connection, FINISH, instance, token, *params):
                raise _not_journaled(instance, operation_id)

        return self._write(write)

    def mark_interrupted(
        self, instance: str | None = None, sparing: Collection[str] = ()
    ) -> Awaitable[int]:
        """``instance``'s RUNNING operations (but ``sparing``) as INTERRUPTED, under its lease.

        Raises ValueError without an instance: replicas share the table, and the operations of
        the instances this replica does not own are running elsewhere.
        """
        if instance is None:
            raise ValueError("a shared journal marks one instance's operations, under its lease")
        token = self._token(instance)
        error = INTERRUPTED_ERROR
        params = (
            OperationState.INTERRUPTED.value, time.time(), error.code.value, error.reason,
            error.message, OperationState.RUNNING.value, list(sparing),
        )  # fmt: skip

        async def write(connection: Connection) -> int:
            return await self._fenced(connection, MARK_INTERRUPTED, instance, token, *params)

        return self._write(write)

    def purge(self, older_than: float) -> Awaitable[int]:
        """Not fenced: any replica may delete what every replica has finished with."""

        async def write(connection: Connection) -> int:
            status = await connection.execute(PURGE, OperationState.RUNNING.value, older_than)
            return int(status.rsplit(" ", 1)[-1])

        return self._write(write)

    def _token(self, instance: str) -> int | None:
        # Read when the write is made, not when it lands: a write retried after the lease moved
        # back to this replica carries the new token.
        return self._ownership.token(instance)

    async def _fenced(
        self,
        connection: Connection,
        statement: str,
        instance: str,
        token: int | None,
        *params: Any,
    ) -> int:
        """Runs a fenced write; how many rows it changed. Raises ``StaleLease`` if the fence
        stopped it (or this replica holds no lease on ``instance`` at all)."""
        if token is None:
            raise StaleLease(f"instance {instance}: this replica holds no lease on it")
        row = await connection.fetchrow(statement, instance, token, *params)
        assert row is not None
        if not row["held"]:
            raise StaleLease(
                f"instance {instance}: lease token {token} is no longer the instance's"
                " (the lease moved or expired)"
            )
        return int(row["written"])

    def _write(self, write: Callable[[Connection], Awaitable[T]]) -> Awaitable[T]:
        if self._closed:
            raise RuntimeError("the journal is closed")
        task = asyncio.get_running_loop().create_task(self._on_connection(write))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        # Its waiter may go away (a cancelled call); the write lands all the same.
        return asyncio.shield(task)

    async def _on_connection(self, run: Callable[[Connection], Awaitable[T]]) -> T:
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT_SECONDS) as connection:
                return await run(connection)
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, instance: str, operation_id: str) -> OperationRecord | None:
        return await self._one(GET, instance, operation_id)

    async def find_request(self, instance: str, request_id: str) -> OperationRecord | None:
        return await self._one(FIND_REQUEST, instance, request_id)

    async def list(
        self, instance: str, page_size: int, page_token: str = ""
    ) -> tuple[list[OperationRecord], str]:
        """Newest first, as SQLite's ``Journal.list``, with its page tokens."""
        before = decode_page_token(page_token) if page_token else (float("inf"), "")

        async def read(connection: Connection) -> list[OperationRecord]:
            rows = await connection.fetch(LIST, instance, before[0], before[1], page_size + 1)
            return await _with_outcomes(connection, rows)

        records = await self._on_connection(read)
        page = records[:page_size]
        more = len(records) > page_size
        token = encode_page_token(page[-1].started_at, page[-1].id) if more and page else ""
        return page, token

    async def _one(self, statement: str, *params: Any) -> OperationRecord | None:
        async def read(connection: Connection) -> list[OperationRecord]:
            row = await connection.fetchrow(statement, *params)
            return await _with_outcomes(connection, [row]) if row is not None else []

        records = await self._on_connection(read)
        return records[0] if records else None

    # -- upkeep --------------------------------------------------------------------------------

    async def upkeep(self) -> None:
        """Nothing: the server keeps its own write-ahead log."""

    async def close(self) -> None:
        """Lets the writes in flight land (or fail), then closes the pool if it is the
        journal's own."""
        if self._closed:
            return
        self._closed = True
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._owns_pool:
            try:
                await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_SECONDS)
            except UNCLOSABLE:
                # A server that stopped answering: drop the connections rather than wait.
                self._pool.terminate()


async def _with_outcomes(
    connection: Connection, rows: list[asyncpg.Record]
) -> list[OperationRecord]:
    """The records of ``rows``, each with its outcomes (one query for the lot)."""
    if not rows:
        return []
    outcomes: dict[str, list[asyncpg.Record]] = {row["id"]: [] for row in rows}
    for outcome in await connection.fetch(OUTCOMES, list(outcomes)):
        outcomes[outcome["operation_id"]].append(outcome)
    return [schema.decode(row, outcomes[row["id"]]) for row in rows]


def _unavailable(exc: BaseException) -> JournalUnavailable:
    # asyncpg's messages name the host and port at most, never the URL's password.
    return JournalUnavailable(
        f"the journal's database cannot be reached ({type(exc).__name__}: {exc})"
    )


def _not_journaled(instance: str, operation_id: str) -> LookupError:
    return LookupError(f"operation {operation_id} of instance {instance} is not in the journal")


def postgres_journal(
    url: str,
    ownership: Ownership,
    *,
    pool: Callable[[], Awaitable[asyncpg.Pool]] | None = None,
) -> Callable[[], Coroutine[Any, Any, PostgresJournal]]:
    """The opener ``Operations`` takes for the database at ``url``: a pool of its own (or the
    one ``pool()`` gives: a replica's shared pool), and the journal's tables (with the leases',
    which its fence reads) made if missing. Raises ``JournalError`` (one line, never the URL)
    when the database cannot be used."""
    shared = pool

    async def open_journal() -> PostgresJournal:
        try:
            pool = await (shared() if shared is not None else open_pool(url))
        except DatabaseError as exc:
            raise JournalError(None, exc) from None
        try:
            await migrate(pool, LEASE_TABLES + TABLES)
        except UNUSABLE as exc:
            with contextlib.suppress(*UNAVAILABLE):
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_SECONDS)
            cause = DatabaseError(
                f"database_url: cannot create the journal's tables ({type(exc).__name__}: {exc})"
            )
            raise JournalError(None, cause) from None
        return PostgresJournal(pool, ownership, owns_pool=shared is None)

    return open_journal
