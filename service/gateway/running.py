"""A running gateway: its parts, who may call, and the start and stop of it all."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.auth import TokenRegistry
from service.config import DEFAULT_MAX_CONCURRENT_CALLS
from service.errors import GatewayError
from service.gateway.caller import Caller
from service.gateway.rules import WireNames
from service.instances import InstanceDirectory
from service.limits import CallLimiter, TransportLimits
from service.observability import Metrics
from service.operations import Operations
from service.ratelimit import RateLimit
from service.sessions.base import SettingsChange
from service.sessions.whatsapp.threads import BlockingCalls


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

    async def admit(self, token: str | None, names: WireNames) -> Caller:
        """The caller holding ``token``, counted against its rate limit; raises the
        UNAUTHENTICATED or RESOURCE_EXHAUSTED it is refused with."""
        principal = self.tokens.authenticate(token)
        try:
            await self.limiter.check(principal.token_sha256)
        except GatewayError:
            self.metrics.rate_limited()
            raise
        return Caller(self, principal, names)

    async def start(self) -> None:
        """Opens the journal, then starts every session's connection in the background."""
        await self.open()
        await self.start_sessions()

    async def open(self) -> None:
        """Opens the journal; raises ``JournalError`` (one line) when it cannot be used."""
        await self.operations.start_up()

    async def start_sessions(self) -> None:
        """Starts every session's connection in the background."""
        for instance in self.instances:
            await instance.session.start()

    def end_watches(self) -> None:
        """Ends every watch stream cleanly (the gateway is shutting down)."""
        for queue in self.watches:
            queue.put_nowait(None)

    async def close(self) -> None:
        """Lets running updates end and journals them, then disconnects every session."""
        await self.operations.close()
        await asyncio.gather(*(i.session.close() for i in self.instances))
        if self.blocking is not None:
            self.blocking.shutdown()
