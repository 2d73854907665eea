"""Instance leases: each instance served by exactly one replica, moved within seconds when that
replica dies, stalls or is cut off.

Every ``renew`` seconds a replica, in a few statements: records itself alive (``gateway_replicas``,
its ``expires_at`` a TTL ahead by the database's clock), renews every lease it holds in one
``UPDATE``, reads who is alive and who holds what, takes the leases that rendezvous hashing
gives it among the live replicas and that nobody holds (absent or expired), and hands back those
it holds but another settled replica should own. Each taking draws a new fencing token from one
sequence, so a replica that lost a lease can never write with the token it had.

A replica trusts a lease only until ``sent + ttl - renew`` by its own monotonic clock, ``sent``
being when it sent the statement that last renewed it: the database's expiry is at least
``sent + ttl``, so a replica that cannot renew (the database is gone, the network is cut, the
process was stopped) stops serving the instance (``on_lost``) at least one renewal before
anyone else may take it. ``holds`` checks that deadline itself, so a replica resumed after a
stop refuses to dial or send at once, before any task of its own has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service import errors
from service.cluster.database import migrate
from service.cluster.ownership import LEASE_TABLES, Peer
from service.cluster.rendezvous import owner_for
from service.waiting import woken_within

log = logging.getLogger(__name__)

#: Told when this replica starts serving an instance (its name and the lease's token), and when
#: it stops (it lost the lease, handed it off, or is shutting down).
Acquired = Callable[[str, int], Awaitable[None]]
Lost = Callable[[str], Awaitable[None]]

_HEARTBEAT = """
INSERT INTO gateway_replicas (replica_id, grpc_address, http_address, expires_at, instances)
VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5::text[])
ON CONFLICT (replica_id) DO UPDATE SET
    grpc_address = EXCLUDED.grpc_address,
    http_address = EXCLUDED.http_address,
    instances = EXCLUDED.instances,
    -- A replica back after its row expired (a stop, a cut) is new again: it must settle before
    -- instances are handed to it.
    started_at = CASE WHEN gateway_replicas.expires_at <= now() THEN now()
                      ELSE gateway_replicas.started_at END,
    expires_at = EXCLUDED.expires_at
"""
_RENEW = """
UPDATE gateway_leases SET expires_at = now() + make_interval(secs => $3)
WHERE owner = $1 AND token = ANY($2::bigint[]) AND expires_at > now()
RETURNING instance, token
"""
_STATE = """
SELECT r.replica_id, r.grpc_address, r.http_address, r.instances,
       r.started_at <= now() - make_interval(secs => $1) AS settled
FROM gateway_replicas r WHERE r.expires_at > now()
"""
_HOLDERS = "SELECT instance, owner, token FROM gateway_leases WHERE expires_at > now()"
_ACQUIRE = """
INSERT INTO gateway_leases (instance, owner, token, expires_at)
SELECT name, $2, nextval('gateway_lease_tokens'), now() + make_interval(secs => $3)
FROM unnest($1::text[]) AS name
ON CONFLICT (instance) DO UPDATE SET
    owner = EXCLUDED.owner, token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
WHERE gateway_leases.expires_at <= now()
RETURNING instance, token
"""
_OWNER = """
SELECT r.replica_id, r.grpc_address, r.http_address
FROM gateway_leases l JOIN gateway_replicas r ON r.replica_id = l.owner
WHERE l.instance = $1 AND l.expires_at > now() AND r.expires_at > now()
"""
_RELEASE = "DELETE FROM gateway_leases WHERE instance = ANY($1::text[]) AND owner = $2"
_LEAVE = "DELETE FROM gateway_replicas WHERE replica_id = $1"
#: Told on release and on taking, so that the others take the leases at once (rather than at
#: their next round) and route to the new owner at once.
_CHANNEL = "gateway_leases_released"


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    ttl: float
    renew: float
    #: How long a replica must have been alive before instances are handed to it: a replica
    #: that flaps, or one just resumed after a stop, does not pull instances back and forth.
    settle: float

    @property
    def trust(self) -> float:
        """How long after sending a renewal this replica trusts the lease it renewed."""
        return self.ttl - self.renew


@dataclass(slots=True)
class _Held:
    token: int
    #: ``time.monotonic()`` past which this replica no longer trusts the lease.
    trusted_until: float
    #: Being given up (``_lose``): no new dial or stanza, but the updates still ending write
    #: their outcomes with its token, and it is renewed until they have.
    releasing: bool = False


class Leases:
    """This replica's leases; the ``Ownership`` that routing, sessions and the journal ask."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        me: Peer,
        instances: Sequence[str],
        timing: LeaseTiming,
        *,
        on_acquired: Acquired,
        on_lost: Lost,
        may_hand_off: Callable[[str], bool] = lambda name: True,
        clock: Callable[[], float] = time.monotonic,
        events: Callable[[str, int], None] = lambda event, count: None,
    ) -> None:
        """``events(event, count)`` is told each change (``service.observability.metrics``)."""
        self._events = events
        self._pool = pool
        self._me = me
        self._instances = list(instances)
        self._timing = timing
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._may_hand_off = may_hand_off
        self._clock = clock
        self._held: dict[str, _Held] = {}
        #: Who held each instance at the last round, and the live replicas then.
        self._owners: dict[str, str] = {}
        self._peers: dict[str, Peer] = {}
        #: The instances each live replica's configuration has, as of the last round.
        self._serves: dict[str, frozenset[str]] = {}
        #: When this replica first saw each instance held by nobody (``_wanted``).
        self._unheld_since: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._listener: PoolConnectionProxy | None = None
        self._closed = False
        #: ``clock()`` when the last round that reached the database began (None: none yet).
        self._reached: float | None = None
        #: Serializes rounds and the watchdog's expiries (each may call the callbacks).
        self._lock = asyncio.Lock()

    # -- Ownership -----------------------------------------------------------------------------

    @property
    def replica_id(self) -> str:
        return self._me.replica_id

    def holds(self, instance: str) -> bool:
        held = self._held.get(instance)
        return held is not None and not held.releasing and self._clock() < held.trusted_until

    def token(self, instance: str) -> int | None:
        held = self._held.get(instance)
        return held.token if held is not None and self._clock() < held.trusted_until else None

    def route(self, instance: str) -> Peer | None:
        if self.holds(instance):
            return None
        owner = self._owners.get(instance)
        peer = self._peers.get(owner) if owner is not None else None
        if peer is None or owner == self.replica_id:
            raise errors.INSTANCE_UNOWNED.error(retry_after=self._timing.renew, instance=instance)
        return peer

    async def lookup(self, instance: str) -> Peer | None:
        """``route`` asked of the database itself, for a call that found no owner in the last
        round's view (a lease that moved since): the owner now, or INSTANCE_UNOWNED."""
        if self.holds(instance):
            return None
        try:
            row = await self._pool.fetchrow(_OWNER, instance)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            row = None
        if row is None or row["replica_id"] == self.replica_id:
            raise errors.INSTANCE_UNOWNED.error(retry_after=self._timing.renew, instance=instance)
        peer = Peer(row["replica_id"], row["grpc_address"], row["http_address"])
        self._peers[peer.replica_id] = peer
        self._owners[instance] = peer.replica_id
        return peer

    def owner(self, instance: str) -> str | None:
        """The replica that held ``instance`` at the last round (None: nobody)."""
        if self.holds(instance):
            return self.replica_id
        return self._owners.get(instance)

    def reaching(self) -> bool:
        """Whether this replica reached the database recently enough to trust what it holds:
        when it cannot, it serves nothing, and its health says so (a load balancer then sends
        its calls elsewhere)."""
        reached = self._reached
        return reached is not None and self._clock() - reached < self._timing.trust

    @property
    def held(self) -> list[str]:
        return [name for name in self._instances if self.holds(name)]

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Creates the tables, joins, takes this replica's first leases, then keeps them."""
        await migrate(self._pool, LEASE_TABLES)
        await self._round()
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            listener = await self._pool.acquire()
            await listener.add_listener(_CHANNEL, self._released_elsewhere)
            self._listener = listener
        self._tasks = [
            asyncio.create_task(self._keep(), name="leases-renew"),
            asyncio.create_task(self._watch(), name="leases-watchdog"),
        ]

    async def close(self, *, release: bool = True) -> None:
        """Stops serving every instance, then (``release``) gives the leases back and leaves,
        so that the other replicas take them at once instead of after the TTL."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a stuck round must not keep the replica from giving its leases back.
            await asyncio.wait(self._tasks, timeout=self._timing.renew * 2)
        async with self._lock:
            held = list(self._held)
            await self._lose(held)
        if held:
            self._events("released", len(held))
        if self._listener is not None:
            with contextlib.suppress(Exception):
                listener = self._listener
                await asyncio.wait_for(
                    listener.remove_listener(_CHANNEL, self._released_elsewhere), 1.0
                )
                await asyncio.wait_for(self._pool.release(listener), 1.0)
        if not release:
            return
        try:
            await asyncio.wait_for(self._leave(held), self._timing.renew * 2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("leases: could not release (they expire on their own): %s", exc)
        else:
            if held:
                log.info("leases: released %d instance(s) for the other replicas", len(held))

    async def _leave(self, held: list[str]) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(_RELEASE, held, self.replica_id)
            await connection.execute(_LEAVE, self.replica_id)
            await connection.execute(f"NOTIFY {_CHANNEL}")

    def _released_elsewhere(self, *_: object) -> None:
        self._wake.set()

    async def _keep(self) -> None:
        while True:
            await woken_within(self._wake, self._timing.renew)
            self._wake.clear()
            try:
                await self._round()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The watchdog stops the instances once their leases can no longer be trusted.
                log.warning("leases: renewal failed: %s", exc)
            except Exception:  # a fault of ours must not end the renewals for good
                log.exception("leases: a renewal round failed")

    async def _watch(self) -> None:
        """Stops serving each instance whose lease this replica can no longer trust, even while
        a round is stuck on an unanswering database."""
        while True:
            await asyncio.sleep(self._timing.renew / 4)
            overdue = [n for n, h in self._held.items() if self._clock() >= h.trusted_until]
            if overdue:
                log.warning("leases: %s not renewed in time: no longer served", ", ".join(overdue))
                self._events("untrusted", len(overdue))
                await self._lose(overdue)

    async def _round(self) -> None:
        timing, me = self._timing, self._me
        async with self._pool.acquire() as connection:
            sent = self._clock()
            await connection.execute(
                _HEARTBEAT,
                me.replica_id,
                me.grpc_address,
                me.http_address,
                timing.ttl,
                self._instances,
            )
            renewed = await connection.fetch(
                _RENEW, me.replica_id, [h.token for h in self._held.values()], timing.ttl
            )
            replicas = await connection.fetch(_STATE, timing.settle)
            holders = await connection.fetch(_HOLDERS)
            self._reached = sent
            async with self._lock:
                await self._renewed(renewed, sent)
                self._peers = {
                    r["replica_id"]: Peer(r["replica_id"], r["grpc_address"], r["http_address"])
                    for r in replicas
                }
                self._owners = {h["instance"]: h["owner"] for h in holders}
                settled = [r["replica_id"] for r in replicas if r["settled"]]
                self._serves = {r["replica_id"]: frozenset(r["instances"]) for r in replicas}
                # Leases go to settled replicas; to any live one only when none has settled (a
                # cluster starting). A replica resumed after a stop is unsettled again, so it
                # does not pull back what was taken over while it was away.
                candidates = settled or list(self._peers)
                wanted = self._wanted(candidates)
                if wanted:
                    sent = self._clock()
                    taken = await connection.fetch(_ACQUIRE, wanted, me.replica_id, timing.ttl)
                    if taken:
                        await connection.execute(f"NOTIFY {_CHANNEL}")
                    await self._taken(taken, sent)
                await self._hand_off(connection, settled)

    def _owner_among(self, name: str, replicas: list[str]) -> str | None:
        """Who of ``replicas`` should own ``name``: rendezvous hashing over those whose
        configuration has it (replicas need not all have the same instances)."""
        return owner_for(name, [r for r in replicas if name in self._serves.get(r, ())])

    def _wanted(self, candidates: list[str]) -> list[str]:
        """The unheld instances this replica should take: those rendezvous hashing gives it
        among the replicas that have them, and any left unheld for a whole TTL (the replica it
        was given to is failing), so that every instance is served."""
        now = self._clock()
        wanted = []
        for name in self._instances:
            if name in self._owners:
                self._unheld_since.pop(name, None)
                continue
            since = self._unheld_since.setdefault(name, now)
            # Among the candidates that have it; failing them, among every live replica.
            owner = self._owner_among(name, candidates) or self._owner_among(
                name, list(self._peers)
            )
            mine = owner == self.replica_id
            if mine or now - since >= self._timing.ttl:
                wanted.append(name)
        return wanted

    async def _renewed(self, rows: Iterable[asyncpg.Record], sent: float) -> None:
        kept = {row["instance"] for row in rows}
        for name in kept:
            if name in self._held:
                self._held[name].trusted_until = sent + self._timing.trust
        lost = [name for name in self._held if name not in kept]
        if lost:
            log.warning("leases: %s taken by another replica: no longer served", ", ".join(lost))
            self._events("lost", len(lost))
            await self._lose(lost)

    async def _taken(self, rows: Sequence[asyncpg.Record], sent: float) -> None:
        if rows:
            self._events("acquired", len(rows))
        for row in rows:
            name, token = row["instance"], row["token"]
            self._held[name] = _Held(token, sent + self._timing.trust)
            self._owners[name] = self.replica_id
            log.info("leases: serving %s (token %d)", name, token)
            try:
                await self._on_acquired(name, token)
            except Exception:  # one instance's failed start must not stop the others
                log.exception("leases: starting %s failed", name)

    async def _hand_off(self, connection: PoolConnectionProxy, settled: list[str]) -> None:
        """Gives back the instances a settled replica should own (it joined), once idle."""
        if not settled or self.replica_id not in settled:
            return
        leaving = [
            name
            for name in self._held
            if self.holds(name)
            and self._owner_among(name, settled) not in (None, self.replica_id)
            and self._may_hand_off(name)
        ]
        if not leaving:
            return
        self._events("handed_off", len(leaving))
        await self._lose(leaving)
        await connection.execute(_RELEASE, leaving, self.replica_id)
        await connection.execute(f"NOTIFY {_CHANNEL}")
        for name in leaving:
            self._owners.pop(name, None)
        log.info("leases: handed %s to the replicas that now own them", ", ".join(leaving))

    async def _lose(self, names: Iterable[str]) -> None:
        """Stops serving ``names``; each lease is forgotten only once its updates have ended
        (``on_lost`` waits for them), so that their last writes still carry its token: a lease
        given back (shutdown, hand-off) is still this replica's until then, and the database's
        fence refuses those writes anyway where it was not (taken, or expired)."""
        for name in list(names):
            held = self._held.get(name)
            if held is None or held.releasing:
                continue
            held.releasing = True
            self._owners.pop(name, None)
            try:
                await self._on_lost(name)
            except Exception:
                log.exception("leases: stopping %s failed", name)
            finally:
                self._held.pop(name, None)
