"""The limits a caller meets: how many calls are served at once, how large a message may be.

``CallLimiter`` counts the calls being served, ``max_concurrent_calls`` of them gRPC and REST
together; ``TransportLimits`` holds the configuration's limits that the servers apply themselves
(``service.grpc.server`` turns them into grpc's options). Defaults are ``service.config``'s.

A call holds a place from the moment its edge takes it until its answer is sent (a stream until
it ends), and one that finds no place is refused at once with RESOURCE_EXHAUSTED TOO_MANY_CALLS
and a retry hint, before any other work (even authentication) is done for it. Nothing waits for
a place: under a burst the excess is told to come back, rather than queued behind calls that may
take long (an update behind its instance's lock, a watch that never ends), which is what a
caller cannot tell from the gateway being stuck.

The count lives on the event loop both edges run on, so a plain integer is enough.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service import config, errors

if TYPE_CHECKING:
    from service.config import GatewayConfig

#: The retry hint a refused call gets: places free up as calls end, which is usually sooner.
RETRY_AFTER_SECONDS = 1.0


class CallLimiter:
    """At most ``limit`` calls at once; 0 turns the limit off."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("max_concurrent_calls cannot be negative")
        self.limit = limit
        self.in_progress = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        """A place for the duration of the block; raises TOO_MANY_CALLS when there is none."""
        if self.limit and self.in_progress >= self.limit:
            raise errors.TOO_MANY_CALLS.error(retry_after=RETRY_AFTER_SECONDS, limit=self.limit)
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """What the servers enforce before a call reaches the gateway (see ``service.config``)."""

    max_pending_calls: int = config.DEFAULT_MAX_PENDING_CALLS
    max_message_bytes: int = config.DEFAULT_MAX_MESSAGE_BYTES
    keepalive_min_ping_interval_seconds: float = config.DEFAULT_KEEPALIVE_MIN_PING_INTERVAL_SECONDS
    keepalive_permit_without_calls: bool = config.DEFAULT_KEEPALIVE_PERMIT_WITHOUT_CALLS
    keepalive_max_ping_strikes: int = config.DEFAULT_KEEPALIVE_MAX_PING_STRIKES

    @classmethod
    def of(cls, configured: GatewayConfig) -> TransportLimits:
        return cls(
            max_pending_calls=configured.max_pending_calls,
            max_message_bytes=configured.max_message_bytes,
            keepalive_min_ping_interval_seconds=configured.keepalive_min_ping_interval_seconds,
            keepalive_permit_without_calls=configured.keepalive_permit_without_calls,
            keepalive_max_ping_strikes=configured.keepalive_max_ping_strikes,
        )
