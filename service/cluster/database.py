"""The database replicas share: one asyncpg pool, and the tables each part needs.

Each part of the gateway that keeps something in PostgreSQL (the journal, the leases, the rate
limit, the device book) states its own tables as ``CREATE ... IF NOT EXISTS`` and creates them
with ``migrate``, which holds a transaction-scoped advisory lock: replicas starting together on
a fresh database take turns (two concurrent ``CREATE TABLE IF NOT EXISTS`` of one table can fail
with a duplicate key in ``pg_type``, 23505), and one that finds the tables made does nothing.
"""

from __future__ import annotations

import asyncpg

from service.cluster import DatabaseError

#: The advisory lock key under which every replica creates tables (any constant all agree on).
MIGRATION_LOCK = 0x70726976  # "priv"
#: Seconds to connect before a replica gives up on the database (a silent server would
#: otherwise hold the call for the kernel's TCP timeout).
CONNECT_TIMEOUT_SECONDS = 5.0
#: Seconds any one statement may take before the server cancels it.
STATEMENT_TIMEOUT_SECONDS = 5.0


async def open_pool(url: str, *, max_size: int = 10, flushed: bool = True) -> asyncpg.Pool:
    """A pool of connections to ``url``; raises ``DatabaseError`` if none can be made.

    ``flushed=False``: its commits return before the server has flushed them to its disk
    (``synchronous_commit = off``). They survive the gateway being killed, as the SQLite
    journal's commits do without ``journal_fsync``, but not the database server crashing
    (the last fraction of a second may be lost); a commit then costs a round trip, not a
    disk flush."""
    settings = {"application_name": "privacy-gateway"}
    if not flushed:
        settings["synchronous_commit"] = "off"
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT_SECONDS,
            command_timeout=STATEMENT_TIMEOUT_SECONDS,
            server_settings=settings,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(f"database_url: cannot connect ({type(exc).__name__}: {exc})") from None
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, ddl: str) -> None:
    """Runs ``ddl`` (idempotent statements) under the migration lock, in one transaction."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(ddl)
