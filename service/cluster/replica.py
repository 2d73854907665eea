"""What ``database_url`` adds to a gateway: the shared pool, and this replica's place among the
others (its name, the addresses it advertises, its leases).

A ``Cluster`` is made with the gateway (``service.assembly``) and is its ``Ownership`` from the
start: until it has joined (``join``, once the ports are bound and their addresses known) it
holds no lease, so it serves nothing itself. Joining starts the leases, and the leases start and
stop the instances' sessions: a replica connects a session only while it holds its lease.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable

import asyncpg

from service import errors
from service.cluster import DatabaseError
from service.cluster.database import migrate, open_pool
from service.cluster.forwarding.marker import Marks
from service.cluster.leases import Acquired, Leases, LeaseTiming, Lost
from service.cluster.ownership import Ownership, Peer
from service.config import GatewayConfig

log = logging.getLogger(__name__)

#: How long closing the pool may wait for its connections to come back.
CLOSE_SECONDS = 5.0
#: Instances move to a replica only once it has been alive this many TTLs (see ``LeaseTiming``).
SETTLE_TTLS = 3
#: The deployment's secret, which signs the marks replicas put on the calls they forward to
#: each other: made once, by whichever replica starts first; callers never see it.
_SECRET_TABLE = """
CREATE TABLE IF NOT EXISTS gateway_secret (
    id     SMALLINT PRIMARY KEY CHECK (id = 1),
    secret BYTEA NOT NULL
);
"""
_MAKE_SECRET = "INSERT INTO gateway_secret (id, secret) VALUES (1, $1) ON CONFLICT DO NOTHING"
_WILDCARDS = {"0.0.0.0", "::", "[::]", ""}


class Cluster:
    """This replica among the others sharing ``database_url``; the gateway's ``Ownership``."""

    def __init__(self, config: GatewayConfig, ownership: Ownership | None = None) -> None:
        """``ownership``: leases that another part of the program holds (the journal's tests,
        which move them by hand); this replica then runs none of its own."""
        assert config.database_url is not None
        self.external = ownership
        self._url = config.database_url
        #: ``journal_fsync``: every commit flushed to the server's disk before it returns.
        self._flushed = config.journal_fsync
        self._replica_id = config.replica_id or f"{socket.gethostname()}-{secrets.token_hex(3)}"
        self._advertise = (config.advertise_address, config.advertise_http_address)
        self._listen = (config.listen, config.http_listen or None)
        self._instances = [i.name for i in config.instances]
        ttl = config.lease_ttl_seconds
        self.timing = LeaseTiming(ttl, config.lease_renew_seconds, SETTLE_TTLS * ttl)
        self._pool: asyncpg.Pool | None = None
        #: Signs and checks the marks of calls between replicas (once the database is open).
        self.marks: Marks | None = None
        self.leases: Leases | None = None
        self.me: Peer | None = None

    async def open(self) -> asyncpg.Pool:
        """The shared pool, opened on first use, and the deployment's secret read (made by the
        first replica to start); raises ``DatabaseError`` (one line)."""
        if self._pool is None:
            pool = await open_pool(self._url, flushed=self._flushed)
            try:
                await migrate(pool, _SECRET_TABLE)
                await pool.execute(_MAKE_SECRET, secrets.token_bytes(32))
                secret = await pool.fetchval("SELECT secret FROM gateway_secret WHERE id = 1")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                await pool.close()
                raise DatabaseError(
                    f"database_url: cannot create the gateway's tables ({type(exc).__name__})"
                ) from None
            self.marks = Marks(bytes(secret), self._replica_id)
            self._pool = pool
        return self._pool

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the cluster's database is not open: call open() first")
        return self._pool

    # -- Ownership -----------------------------------------------------------------------------

    @property
    def replica_id(self) -> str:
        return self._replica_id

    def holds(self, instance: str) -> bool:
        if self.external is not None:
            return self.external.holds(instance)
        return self.leases is not None and self.leases.holds(instance)

    def token(self, instance: str) -> int | None:
        if self.external is not None:
            return self.external.token(instance)
        return self.leases.token(instance) if self.leases is not None else None

    def route(self, instance: str) -> Peer | None:
        if self.external is not None:
            return self.external.route(instance)
        if self.leases is None:
            raise errors.INSTANCE_UNOWNED.error(retry_after=self.timing.renew, instance=instance)
        return self.leases.route(instance)

    async def lookup(self, instance: str) -> Peer | None:
        if self.external is not None:
            return await self.external.lookup(instance)
        if self.leases is None:
            raise errors.INSTANCE_UNOWNED.error(retry_after=self.timing.renew, instance=instance)
        return await self.leases.lookup(instance)

    def healthy(self) -> bool:
        """Whether this replica can serve: it reaches the database (or, before it has joined,
        nothing is asked of it yet)."""
        if self.external is not None or self.leases is None:
            return True
        return self.leases.reaching()

    def owner(self, instance: str) -> str | None:
        """The replica serving ``instance`` as last seen (None: nobody, for now)."""
        return self.leases.owner(instance) if self.leases is not None else None

    # -- joining and leaving -------------------------------------------------------------------

    def advertised(self, grpc_bound: str | None = None, http_bound: str | None = None) -> Peer:
        """Where the others reach this replica: the configured addresses, else the bound ones
        (by default the listen addresses) with the host name in place of a wildcard host."""
        if grpc_bound is None:
            grpc_bound, http_bound = self._listen
        grpc_address, http_address = self._advertise
        return Peer(
            self._replica_id,
            grpc_address or _reachable(grpc_bound),
            http_address or (_reachable(http_bound) if http_bound else None),
        )

    async def join(
        self,
        me: Peer,
        *,
        on_acquired: Acquired,
        on_lost: Lost,
        may_hand_off: Callable[[str], bool],
        events: Callable[[str, int], None] = lambda event, count: None,
    ) -> None:
        """Takes part in the leases: from now on this replica serves what it holds."""
        self.me = me
        if self.external is not None:
            return
        self.leases = Leases(
            self.pool,
            me,
            self._instances,
            self.timing,
            on_acquired=on_acquired,
            on_lost=on_lost,
            may_hand_off=may_hand_off,
            events=events,
        )
        await self.leases.start()
        log.info(
            "replica %s joined at %s; serving %d of %d instance(s)",
            me.replica_id,
            me.grpc_address,
            len(self.leases.held),
            len(self._instances),
        )

    async def leave(self) -> None:
        """Stops serving every instance and gives their leases back (SIGTERM: an immediate
        handoff, rather than one after the TTL)."""
        if self.leases is not None:
            await self.leases.close(release=True)

    async def close(self) -> None:
        """Closes the pool: gracefully for a few seconds, then by force (a connection still
        out, or a database that no longer answers, must not hold the shutdown)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_SECONDS)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()


def _reachable(bound: str) -> str:
    host, _, port = bound.rpartition(":")
    return f"{socket.gethostname()}:{port}" if host in _WILDCARDS else bound
