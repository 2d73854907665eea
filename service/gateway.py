"""A running gateway's parts, independent of any transport."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.auth import TokenRegistry
from service.instances import InstanceDirectory
from service.operations import Operations
from service.ratelimit import RateLimiter
from service.sessions.whatsapp.threads import BlockingCalls


@dataclass
class Gateway:
    """What every transport serves from: the instances, who may call, and how often."""

    instances: InstanceDirectory
    tokens: TokenRegistry
    limiter: RateLimiter
    operations: Operations
    #: Runs the blocking WhatsApp calls (stanzas); None when no instance needs one.
    blocking: BlockingCalls | None = None

    async def start(self) -> None:
        """Opens the journal, then starts every session's connection in the background."""
        await self.operations.start_up()
        for instance in self.instances:
            await instance.session.start()

    async def close(self) -> None:
        """Lets running updates end and journals them, then disconnects every session."""
        await self.operations.close()
        await asyncio.gather(*(i.session.close() for i in self.instances))
        if self.blocking is not None:
            self.blocking.shutdown()
