"""A running gateway: its parts, who may call, and the start and stop of it all."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service import errors
from service.auth import Principal, TokenRegistry
from service.cluster.ownership import Ownership, Peer
from service.config import DEFAULT_MAX_CONCURRENT_CALLS
from service.engine import LEASE_LOST
from service.errors import GatewayError
from service.gateway.caller import Caller
from service.gateway.rules import WireNames
from service.instances import InstanceDirectory
from service.limits import CallLimiter, TransportLimits
from service.observability import Metrics
from service.operations import Operations, OperationState
from service.ratelimit import RateLimit
from service.sessions.base import SettingsChange
from service.sessions.whatsapp.threads import BlockingCalls

if TYPE_CHECKING:
    from service.cluster.replica import Cluster

log = logging.getLogger(__name__)

#: The retry hint of a forwarded call's INSTANCE_UNOWNED: its lease is moving, soon settled.
UNOWNED_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Forward:
    """Admission's other answer: the call names an instance another replica serves, so the edge
    relays it there (``service.cluster.forwarding``) instead of serving it.

    The caller was authenticated and authorized for ``instance`` here, so a bad token or a
    forbidden or unknown instance never costs the owner a call; the rate limit was not counted:
    the owner counts the call when it admits it, with the same token.
    """

    peer: Peer
    instance: str
    principal: Principal


@dataclass
class Gateway:
    """What every edge serves from: the instances, who may call, and how often."""

    instances: InstanceDirectory
    tokens: TokenRegistry
    #: In memory for one process; shared in the database for replicas.
    limiter: RateLimit
    operations: Operations
    #: Runs the blocking WhatsApp calls (stanzas); None when no instance needs one.
    blocking: BlockingCalls | None = None
    #: The open watch streams' queues, ended (``None``) when the gateway stops.
    watches: set[asyncio.Queue[SettingsChange | None]] = field(default_factory=set)
    #: The calls being served, both edges together (``max_concurrent_calls``); an edge holds a
    #: place for each call (``calls.held()``) before it admits the caller.
    calls: CallLimiter = field(default_factory=lambda: CallLimiter(DEFAULT_MAX_CONCURRENT_CALLS))
    #: What the servers enforce themselves (message sizes, keepalive, grpc's queue).
    limits: TransportLimits = field(default_factory=TransportLimits)
    #: What ``/metrics`` shows of this gateway (``service.observability``).
    metrics: Metrics = field(default_factory=Metrics)
    #: Who serves which instance when the gateway runs as replicas; None: one process serves
    #: every instance, and admission is exactly ``admit``.
    ownership: Ownership | None = None
    #: This replica among the others on ``database_url`` (its ``ownership`` too); None: one
    #: process serves everything.
    cluster: Cluster | None = None

    async def admit(
        self, token: str | None, names: WireNames, *, mark: str | None = None
    ) -> Caller:
        """The caller holding ``token``, counted against its rate limit unless the call
        carries another replica's signed ``mark`` (a ListInstances it fans out: counted there,
        once, and vouched for); raises the UNAUTHENTICATED or RESOURCE_EXHAUSTED it is refused
        with."""
        principal = self.tokens.authenticate(token)
        if mark is not None and self.vouched(mark):
            return Caller(self, principal, names)
        await self._count(principal)
        return Caller(self, principal, names)

    async def admit_to(
        self, token: str | None, names: WireNames, instance: str, *, marked: bool = False
    ) -> Caller | Forward:
        """Admission for a call served by ``instance``'s owner: the one rule both edges follow.

        One process (no ``ownership``): exactly ``admit``. Replicas: the token and the instance
        are judged here first (every replica has the same configuration, so the answer is the
        owner's), then the call is this replica's to serve (a ``Caller``, counted against the
        rate limit here) or its owner's (a ``Forward``, counted there). ``marked``: the call was
        already forwarded once (the edge saw the forwarding marker), so it is never forwarded
        again: a replica that does not hold the instance answers INSTANCE_UNOWNED, and two
        replicas that disagree about an owner cannot pass a call back and forth.
        """
        ownership = self.ownership
        if ownership is None:
            return await self.admit(token, names)
        principal = self.tokens.authenticate(token)
        self.instances.authorize(principal, instance)
        try:
            peer = ownership.route(instance)
        except GatewayError:  # nobody, as of the last view: the lease may just have moved
            peer = await ownership.lookup(instance)
        if peer is not None:
            if marked:
                raise errors.INSTANCE_UNOWNED.error(
                    instance=instance, retry_after=UNOWNED_RETRY_SECONDS
                )
            return Forward(peer, instance, principal)
        await self._count(principal)
        return Caller(self, principal, names)

    async def _count(self, principal: Principal) -> None:
        """Counts a call against ``principal``'s rate limit; raises (and counts in the metrics)
        RATE_LIMITED once it is spent."""
        try:
            await self.limiter.check(principal.token_sha256)
        except GatewayError:
            self.metrics.rate_limited()
            raise

    def healthy(self) -> bool:
        """What the health checks report: always, for one process; for a replica, whether it
        reaches the shared database (cut off, it serves nothing and forwards nowhere)."""
        return self.cluster is None or self.cluster.healthy()

    @property
    def mark(self) -> str | None:
        """The signed mark this replica's forwarded calls carry (None: one process, or a
        replica whose database is not open yet)."""
        marks = self.cluster.marks if self.cluster is not None else None
        return marks.mine if marks is not None else None

    def vouched(self, mark: str | None) -> bool:
        """Whether ``mark`` is another replica's signed mark (its call was counted there)."""
        marks = self.cluster.marks if self.cluster is not None else None
        return marks is not None and marks.genuine(mark)

    @property
    def replica_id(self) -> str:
        """This replica's name; empty when the gateway runs as one process."""
        return "" if self.ownership is None else self.ownership.replica_id

    async def start(self) -> None:
        """Opens the journal, then starts every session's connection in the background; a
        replica joins the others at its configured addresses (``serve`` joins once its ports
        are bound, at the addresses they were bound to)."""
        await self.open()
        await self.start_sessions()
        if self.cluster is not None and self.cluster.external is None:
            me = self.cluster.advertised()
            await self.join(me.grpc_address, me.http_address)

    async def open(self) -> None:
        """Opens the shared database (replicas) and the journal; raises ``JournalError`` or
        ``DatabaseError`` (one line) when either cannot be used."""
        if self.cluster is not None:
            from service.cluster.ratelimit import open_rate_limiter  # noqa: PLC0415

            pool = await self.cluster.open()
            # One limit per token for the whole deployment, counted in the shared database.
            self.limiter = await open_rate_limiter(pool, self.limiter.per_minute)
        await self.operations.start_up()

    async def start_sessions(self) -> None:
        """Starts every session's connection in the background (one process); a replica's
        sessions start as it takes their leases (``join``)."""
        if self.cluster is not None and self.cluster.external is None:
            return
        for instance in self.instances:
            await instance.session.start()

    async def join(self, grpc_bound: str, http_bound: str | None) -> None:
        """A replica takes its part of the instances, once its ports are bound and the others
        can reach it there; nothing for one process."""
        if self.cluster is None:
            return
        me = self.cluster.advertised(grpc_bound, http_bound)
        await self.cluster.join(
            me,
            on_acquired=self._acquired,
            on_lost=self._lost,
            may_hand_off=self._idle,
            events=self.metrics.lease_event,
        )
        leases = self.cluster.leases
        assert leases is not None
        self.metrics.count_leases(lambda: len(leases.held))

    async def _acquired(self, name: str, token: int) -> None:
        """Marks what the previous owner left running INTERRUPTED (it died or stalled mid
        update), then connects the session."""
        instance = self.instances.get(name)
        if instance is None:
            return
        try:
            adopted = await self.operations.adopt(name)
        except Exception as exc:  # a replay reads a RUNNING record as INTERRUPTED anyway
            log.warning("%s: its previous owner's updates could not be marked: %s", name, exc)
        else:
            if adopted:
                log.warning("%s: %d update(s) its previous owner left running", name, adopted)
                self.metrics.update_ended(OperationState.INTERRUPTED, adopted)
        await instance.session.start()

    async def _lost(self, name: str) -> None:
        """No further stanza; the update in flight ends and is journaled while the lease still
        fences its writes, then the session disconnects."""
        instance = self.instances.get(name)
        if instance is None:
            return
        await self.operations.stop_instance(name, LEASE_LOST)
        await instance.session.close()

    def _idle(self, name: str) -> bool:
        """An instance is handed to another replica only between updates."""
        instance = self.instances.get(name)
        return instance is not None and not instance.lock.locked()

    def end_watches(self) -> None:
        """Ends every watch stream cleanly (the gateway is shutting down)."""
        for queue in self.watches:
            queue.put_nowait(None)

    async def close(self) -> None:
        """Lets running updates end and journals them, then disconnects every session; a
        replica first gives its leases back, so the others take over at once."""
        if self.cluster is not None:
            await self.cluster.leave()
        await self.operations.close()
        await asyncio.gather(*(i.session.close() for i in self.instances))
        if self.blocking is not None:
            self.blocking.shutdown()
        if self.cluster is not None:
            await self.cluster.close()
