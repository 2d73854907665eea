"""``woken_within``: the wait the renewal loop and the sessions' supervisors are stopped in."""

from __future__ import annotations

import asyncio

from service.waiting import woken_within


async def test_an_event_set_meanwhile_wakes_the_wait() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await woken_within(event, 5) is True


async def test_an_event_not_set_in_time_is_a_timeout() -> None:
    assert await woken_within(asyncio.Event(), 0.01) is False


async def test_a_cancelled_wait_ends_even_as_its_timeout_fires() -> None:
    """The replica's close cancels its renewal loop at any moment, also as its timeout fires."""
    for _ in range(200):
        waiting = asyncio.ensure_future(woken_within(asyncio.Event(), 0.001))
        await asyncio.sleep(0.001)
        waiting.cancel()
        done, _ = await asyncio.wait({waiting}, timeout=1)
        assert done, "a cancelled wait went on"
