"""A running gateway's parts, independent of any transport."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

from service.auth import TokenRegistry
from service.instances import InstanceDirectory
from service.ratelimit import RateLimiter


@dataclass
class Gateway:
    """What every transport serves from: the instances, who may call, and how often."""

    instances: InstanceDirectory
    tokens: TokenRegistry
    limiter: RateLimiter
    #: Runs the blocking WhatsApp calls (stanzas); None when no instance needs one.
    executor: Executor | None = None

    async def start(self) -> None:
        """Starts every session's connection in the background; returns at once."""
        for instance in self.instances:
            await instance.session.start()

    async def close(self) -> None:
        """Disconnects every session (in parallel) and releases the stanza threads."""
        await asyncio.gather(*(i.session.close() for i in self.instances))
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
