"""Requests per minute per token (the REST contract's global limit: 100 a minute).

A moving window, so a caller cannot burst twice the limit across a minute boundary. The limiter
here is in memory: the limit is per gateway process, which is what a single-process gateway
serves. Replicas share one limit per token in their database instead
(``service.cluster.ratelimit.PostgresRateLimiter``); admission only knows ``RateLimit``.
"""

from __future__ import annotations

import time
from typing import Protocol

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from service import errors


class RateLimit(Protocol):
    """What admission asks of a rate limit, whether it lives in this process or is shared.

    A protocol rather than a base class, so that a limit kept elsewhere (the replicas' database)
    owes nothing to the in-memory one and a test can stand in with anything of this shape."""

    @property
    def per_minute(self) -> int:
        """Requests a minute each key may make; 0 when the limit is off."""
        ...

    async def check(self, key: str) -> None:
        """Counts one request for ``key`` (a token's SHA-256 digest, never the token); raises
        ``RATE_LIMITED`` (with its retry_after) when ``key`` is over the limit."""
        ...


class RateLimiter:
    """``per_minute`` requests a minute for each key; 0 turns the limit off.

    The gateway's default is ``rate_limit_per_minute``'s (``service.config``).
    """

    def __init__(self, per_minute: int) -> None:
        if per_minute < 0:
            raise ValueError("rate_limit_per_minute cannot be negative")
        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(per_minute) if per_minute else None
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, key: str) -> None:
        """Counts one request for ``key``; raises RESOURCE_EXHAUSTED when over the limit.

        A coroutine because a limit shared by replicas is a database round trip; this one, in
        memory, never waits."""
        if self._item is None or self._limiter.hit(self._item, key):
            return
        reset_at = self._limiter.get_window_stats(self._item, key).reset_time
        retry_after = max(0.0, reset_at - time.time())
        raise errors.RATE_LIMITED.error(retry_after=retry_after, limit_per_minute=self.per_minute)
