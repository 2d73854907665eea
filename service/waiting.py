"""Waiting for an event for at most a while, in a loop that is stopped by cancelling it.

Written with ``asyncio.timeout`` rather than ``asyncio.wait_for``: on Python 3.11 a task
cancelled while it waited in ``wait_for(event.wait(), t)`` was seen still pending, marked
cancelling, more than 8 s later (a replica's lease renewal at shutdown, so its close never
ended). ``asyncio.timeout`` tells its own cancellation from the caller's (``Task.uncancel``),
and needs no second task to wait in.
"""

from __future__ import annotations

import asyncio


async def woken_within(event: asyncio.Event, seconds: float | None) -> bool:
    """Whether ``event`` is set within ``seconds`` (None: no limit)."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
