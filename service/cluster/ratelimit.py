"""One rate limit per token for every replica together, kept in their shared PostgreSQL.

Each admitted request is a row (the key, the time by the database server's clock); a key is
over its limit when ``per_minute`` of its rows are younger than the window. One check is one
round trip: a single call of the ``gateway_rate_limit_hit`` function, which runs as one
transaction (asyncpg's implicit one) and does everything in turn:

1. ``pg_advisory_xact_lock`` on the key's 64-bit hash: checks of one key, from any replica,
   take turns; checks of different keys do not wait for each other.
2. ``clock_timestamp()``, read once the lock is held: the server's clock, so replicas' clocks
   never matter, and read after the wait, so the times of one key's hits grow in the order the
   lock was granted.
3. Deletes the key's hits that have left the window, counts the rest, and inserts a hit if
   there are fewer than ``per_minute``.

Why this is exact under concurrency: the function is ``VOLATILE`` PL/pgSQL, so each statement
in it takes a fresh snapshot (READ COMMITTED); the count runs after the lock was granted, and
the lock is only released after the previous holder's commit is visible (PostgreSQL ends the
transaction in the proc array before it releases its locks). The count therefore sees every hit
admitted before it, nothing else can insert a hit for that key until this transaction commits,
and so no window ever holds more than ``per_minute`` of a key's hits; a refusal only happens
when ``per_minute`` admitted hits are really in the window, so never fewer are admitted either.
(Taking the lock inside one plain SQL statement would not do: that statement's snapshot is
taken before it waits for the lock, and would miss the hit the previous holder just committed.)

What is kept stays bounded: each check deletes its key's expired hits, so a key in use holds at
most ``per_minute`` rows; and about once a minute each replica's next check also sweeps every
key's expired hits (``SKIP LOCKED``: the sweep never waits for a row, so two checks can never
deadlock), which clears the keys of tokens no longer used. The table is ``UNLOGGED``: hits only
matter for a minute, so they are not worth a WAL flush per request; the cost is that a crash of
the database server (or a fail-over to a standby) forgets the current window's hits, once.

When the database cannot answer (down, unreachable, slower than ``CHECK_TIMEOUT_SECONDS``), a
check fails open to this replica's own in-memory limit of ``per_minute`` (so the limit becomes
at most one ``per_minute`` per replica, never unlimited) and logs one warning a minute at most;
for ``RETRY_DATABASE_SECONDS`` after a failure the replica does not ask the database, so a
stalled server slows one check, not all of them. Failing closed would turn a database outage
into every call refused with a reason that is not the caller's (no catalogue reason says "the
rate limit cannot be counted"), while the calls themselves may well not need the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service import errors
from service.cluster.database import migrate
from service.ratelimit import RateLimiter

log = logging.getLogger(__name__)

#: The moving window: a hit counts against its key for this long after it was admitted.
WINDOW = datetime.timedelta(seconds=60)
#: Seconds between one replica's sweeps of every key's expired hits (bounded cost: one scan of
#: a table that only holds the last minute's hits, plus the keys no longer used since).
SWEEP_INTERVAL_SECONDS = 60.0
#: Seconds a check may wait for a connection and its answer before it fails open: a stalled
#: database must not hold every call for the pool's statement timeout.
CHECK_TIMEOUT_SECONDS = 2.0
#: Seconds a replica counts on its own after the database failed to answer a check, before it
#: asks the database again: a stalled database costs one check's timeout, not every check's.
RETRY_DATABASE_SECONDS = 2.0
#: Seconds between two warnings that the database cannot count hits (an outage is one line a
#: minute, not one a request).
WARNING_INTERVAL_SECONDS = 60.0
#: The seed of the key's hash for its advisory lock: keeps these locks apart from any other
#: part's locks on ``hashtextextended(name, 0)`` (the leases' instance names, say).
LOCK_SEED = 0x726174656C696D  # "ratelim"

#: The hits table and the function a check calls; created with ``migrate``, so idempotent.
RATE_LIMIT_TABLES = f"""
CREATE UNLOGGED TABLE IF NOT EXISTS gateway_rate_hits (
    key TEXT        NOT NULL,
    at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_rate_hits_key_at ON gateway_rate_hits (key, at);
CREATE OR REPLACE FUNCTION gateway_rate_limit_hit(
    p_key TEXT, p_limit INTEGER, p_window INTERVAL, p_sweep BOOLEAN,
    OUT admitted BOOLEAN, OUT oldest TIMESTAMPTZ, OUT server_now TIMESTAMPTZ
) LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    counted BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, {LOCK_SEED}));
    server_now := clock_timestamp();
    DELETE FROM gateway_rate_hits WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM gateway_rate_hits
        WHERE key = p_key AND at <= server_now - p_window FOR UPDATE SKIP LOCKED));
    SELECT count(*) INTO counted FROM gateway_rate_hits
        WHERE key = p_key AND at > server_now - p_window;
    admitted := counted < p_limit;
    IF admitted THEN
        INSERT INTO gateway_rate_hits (key, at) VALUES (p_key, server_now);
    ELSE
        -- The hit whose exit brings the key back under the limit: the oldest one, unless the
        -- limit was lowered while older hits still count.
        SELECT at INTO oldest FROM gateway_rate_hits
            WHERE key = p_key AND at > server_now - p_window
            ORDER BY at OFFSET counted - p_limit LIMIT 1;
    END IF;
    IF p_sweep THEN
        -- Last, so that a check never waits for anything while it holds rows of other keys.
        DELETE FROM gateway_rate_hits WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM gateway_rate_hits
            WHERE at <= server_now - p_window FOR UPDATE SKIP LOCKED));
    END IF;
END
$fn$;
"""

_CHECK = "SELECT admitted, oldest, server_now FROM gateway_rate_limit_hit($1, $2, $3, $4)"
#: What a check treats as "the database cannot answer" (anything else is a bug and propagates).
_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


async def open_rate_limiter(pool: asyncpg.Pool, per_minute: int) -> PostgresRateLimiter:
    """The replicas' shared limit of ``per_minute`` requests a minute per token on ``pool``;
    creates its table and function first (concurrent replicas take turns, see ``migrate``).

    With 0 (off) it creates nothing and its checks never reach the database. The assembly
    replaces the in-memory limiter with it when ``database_url`` is set::

        limiter = await open_rate_limiter(pool, config.rate_limit_per_minute)
    """
    limiter = PostgresRateLimiter(pool, per_minute)
    if per_minute:
        await migrate(pool, RATE_LIMIT_TABLES)
    return limiter


@dataclass
class _Turn:
    """This process's queue for one key: its checks go to the database one at a time."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0


class PostgresRateLimiter:
    """``per_minute`` requests a minute for each key across every replica; 0 turns it off.

    Satisfies ``service.ratelimit.RateLimit``. The tables must exist (``open_rate_limiter``).

    A replica sends one key's checks one at a time (the database would serialize them anyway),
    so a burst on one token holds one connection of the pool rather than all of them; and all
    keys together hold at most ``max_connections`` (default: half the pool), so a burst never
    starves the other users of the shared pool (the leases' renewals above all).
    """

    def __init__(
        self, pool: asyncpg.Pool, per_minute: int, *, max_connections: int | None = None
    ) -> None:
        if per_minute < 0:
            raise ValueError("rate_limit_per_minute cannot be negative")
        self.per_minute = per_minute
        self._pool = pool
        share = max_connections or max(1, pool.get_max_size() // 2)
        self._connections = asyncio.Semaphore(share)
        self._turns: dict[str, _Turn] = {}
        #: Connections on their way back to the pool (``_release_later``).
        self._releasing: set[asyncio.Task[None]] = set()
        self._next_sweep = 0.0
        #: This replica's own limit, used only while the database cannot answer.
        self._fallback = RateLimiter(per_minute)
        self._failures = 0
        self._next_warning = 0.0
        self._database_back_at = 0.0

    async def check(self, key: str) -> None:
        """Counts one request for ``key`` in the database (one round trip); raises
        ``RATE_LIMITED`` with the seconds until the hit that keeps ``key`` over the limit
        leaves the window. Fails open to this replica's own limit if the database cannot
        answer (the module's docstring says why)."""
        if not self.per_minute:
            return
        if time.monotonic() < self._database_back_at:
            await self._fallback.check(key)
            return
        async with self._turn(key):
            try:
                admitted, retry_after = await self._hit(key)
            except _DATABASE_ERRORS as exc:
                self._failed(exc)
                await self._fallback.check(key)
                return
        self._answered()
        if not admitted:
            raise errors.RATE_LIMITED.error(
                retry_after=retry_after, limit_per_minute=self.per_minute
            )

    async def _hit(self, key: str) -> tuple[bool, float]:
        """Whether the database admitted a hit for ``key``, and if not, the seconds to wait."""
        sweep = time.monotonic() >= self._next_sweep
        await self._connections.acquire()
        connection: PoolConnectionProxy[asyncpg.Record] | None = None
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                connection = await self._pool.acquire()
                row = await connection.fetchrow(_CHECK, key, self.per_minute, WINDOW, sweep)
        finally:
            self._release_later(connection)
        if sweep:
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS
        assert row is not None
        admitted: bool = row["admitted"]
        if admitted:
            return True, 0.0
        oldest: datetime.datetime = row["oldest"]
        server_now: datetime.datetime = row["server_now"]
        return False, max(0.0, (oldest + WINDOW - server_now).total_seconds())

    def _release_later(self, connection: PoolConnectionProxy[asyncpg.Record] | None) -> None:
        """Gives ``connection`` back to the pool without the check waiting for it: asyncpg
        resets a connection it takes back (``pg_advisory_unlock_all(); ... RESET ALL``), a
        second round trip the caller has no reason to wait for. The connection still counts
        against ``max_connections`` until it is back."""
        if connection is None:
            self._connections.release()
            return
        task = asyncio.get_running_loop().create_task(self._release(connection))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, connection: PoolConnectionProxy[asyncpg.Record]) -> None:
        try:
            await self._pool.release(connection)
        except _DATABASE_ERRORS:
            pass  # asyncpg closed it; the pool opens another when one is needed
        finally:
            self._connections.release()

    @contextlib.asynccontextmanager
    async def _turn(self, key: str) -> AsyncIterator[None]:
        """Holds ``key``'s turn in this process; forgets the key once nobody waits for it."""
        turn = self._turns.setdefault(key, _Turn())
        turn.waiting += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.waiting -= 1
            if not turn.waiting:
                del self._turns[key]

    def _failed(self, exc: BaseException) -> None:
        """Notes a check the database could not answer; warns at most once a minute. The line
        names the error's type (and SQLSTATE), never its text: a connection error's text can
        name the server, and nothing here may quote the URL or a key."""
        self._failures += 1
        now = time.monotonic()
        self._database_back_at = now + RETRY_DATABASE_SECONDS
        if now < self._next_warning:
            return
        self._next_warning = now + WARNING_INTERVAL_SECONDS
        state = getattr(exc, "sqlstate", None)
        cause = type(exc).__name__ + (f" {state}" if state else "")
        log.warning(
            "rate limit: the database cannot count requests (%s; %d check(s) so far): each "
            "replica limits tokens on its own until it answers",
            cause,
            self._failures,
        )

    def _answered(self) -> None:
        """Notes that the database answers (again), after an outage it warned about."""
        if self._failures:
            log.info(
                "rate limit: the database counts requests again (%d check(s) were limited by "
                "this replica alone)",
                self._failures,
            )
            self._failures = 0
            self._next_warning = 0.0
