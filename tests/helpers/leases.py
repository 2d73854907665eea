"""An ``Ownership`` for the journal's tests: leases it writes into ``gateway_leases`` itself.

The real lease code (renewal, taking over a dead replica's instances, routing) is not the
journal's; what the journal needs of it is that each lease it claims is a real row of
``gateway_leases`` with a token from ``gateway_lease_tokens``, so that the ``FENCE`` its writes
carry really runs in PostgreSQL. ``steal`` and ``expire`` do to the rows what another replica,
or the passing of time, would.
"""

from __future__ import annotations

import asyncpg

from service.cluster.database import MIGRATION_LOCK
from service.cluster.ownership import LEASE_TABLES, Peer

#: Seconds a lease taken here lasts: longer than any test.
LEASE_SECONDS = 300.0

TAKE = (
    "INSERT INTO gateway_leases (instance, owner, token, expires_at)"
    " VALUES ($1, $2, nextval('gateway_lease_tokens'), now() + make_interval(secs => $3))"
    " ON CONFLICT (instance) DO UPDATE SET owner = EXCLUDED.owner, token = EXCLUDED.token,"
    " expires_at = EXCLUDED.expires_at RETURNING token"
)


class TestLeases:
    """Holds the leases it took (``take``), each a row of ``gateway_leases``, by its token.

    Its view of what it holds is its own, like a replica's: a lease another replica took
    (``steal``) is still "held" here until it is told, and the database's fence is what stops
    its writes then.
    """

    __test__ = False  # not a test class, whatever its name

    def __init__(self, url: str, replica_id: str = "replica-a") -> None:
        self._url = url
        self._replica_id = replica_id
        self._tokens: dict[str, int] = {}

    @property
    def replica_id(self) -> str:
        return self._replica_id

    def route(self, instance: str) -> Peer | None:
        return None if instance in self._tokens else Peer("elsewhere", "127.0.0.1:1", None)

    def token(self, instance: str) -> int | None:
        return self._tokens.get(instance)

    def holds(self, instance: str) -> bool:
        return instance in self._tokens

    async def take(self, *instances: str) -> None:
        """Takes ``instances``' leases for this replica (a new token each)."""
        for instance in instances:
            self._tokens[instance] = await take_lease(self._url, instance, self._replica_id)

    def forget(self, instance: str) -> None:
        """This replica learns it lost ``instance``'s lease."""
        self._tokens.pop(instance, None)


async def take_lease(url: str, instance: str, owner: str, seconds: float = LEASE_SECONDS) -> int:
    """Writes ``owner``'s lease on ``instance`` (as the lease code does); its new token."""
    connection = await asyncpg.connect(url)
    try:
        await _lease_tables(connection)
        token = await connection.fetchval(TAKE, instance, owner, seconds)
    finally:
        await connection.close()
    assert isinstance(token, int)
    return token


async def steal(url: str, instance: str, owner: str = "replica-b") -> int:
    """Another replica takes ``instance``'s lease: a new token, another owner."""
    return await take_lease(url, instance, owner)


async def expire(url: str, instance: str) -> None:
    """``instance``'s lease runs out (by the database's clock), nobody taking it over."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "UPDATE gateway_leases SET expires_at = now() - interval '1 second'"
            " WHERE instance = $1",
            instance,
        )
    finally:
        await connection.close()


async def _lease_tables(connection: asyncpg.Connection) -> None:
    # ``migrate`` takes a pool; one connection's worth of the same, under the same lock.
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(LEASE_TABLES)
