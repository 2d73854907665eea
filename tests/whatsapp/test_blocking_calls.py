"""The threads that carry neonize's blocking calls: every answer reaches its caller, threads start
only as calls need them and never beyond the limit, and a caller that stops waiting does not
stop the call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.sessions.whatsapp.threads import BlockingCalls

TIMEOUT = 10


async def test_answers_and_errors_reach_their_callers() -> None:
    calls = BlockingCalls(4)

    def fails() -> None:
        raise ValueError("WhatsApp said no")

    try:
        assert await calls.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="WhatsApp said no"):
            await calls.run(fails)
    finally:
        calls.shutdown()


async def test_threads_start_only_as_calls_need_them() -> None:
    calls = BlockingCalls(8)
    release = threading.Event()
    try:
        for n in range(5):
            assert await calls.run(lambda n=n: n) == n
        assert calls.threads == 1, "calls one after another share one thread"

        waiting = [asyncio.ensure_future(calls.run(release.wait, TIMEOUT)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert calls.threads == 5, "five calls at once need five threads"
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*waiting), TIMEOUT) == [True] * 5
    finally:
        release.set()
        calls.shutdown()


async def test_calls_beyond_the_limit_wait_for_a_thread() -> None:
    calls = BlockingCalls(2)
    try:
        started = time.monotonic()
        answers = await asyncio.wait_for(
            asyncio.gather(*(calls.run(lambda i=i: time.sleep(0.1) or i) for i in range(4))),
            TIMEOUT,
        )
        elapsed = time.monotonic() - started
    finally:
        calls.shutdown()

    assert answers == [0, 1, 2, 3]
    assert calls.threads == 2
    assert elapsed >= 0.19, f"4 calls of 100 ms on 2 threads took {elapsed:.3f} s"


async def test_a_burst_of_answers_each_reaches_its_own_caller() -> None:
    """Hundreds of answers arriving together are delivered in groups, never mixed up."""
    calls = BlockingCalls(300)
    try:
        answers = await asyncio.wait_for(
            asyncio.gather(*(calls.run(lambda i=i: time.sleep(0.02) or i * i) for i in range(300))),
            TIMEOUT,
        )
        later = await calls.run(lambda: "quiet again")
    finally:
        calls.shutdown()

    assert answers == [i * i for i in range(300)]
    assert later == "quiet again", "after a burst, a lone answer still wakes its caller"


async def test_a_caller_that_stops_waiting_does_not_stop_the_call() -> None:
    calls = BlockingCalls(1)
    release, finished = threading.Event(), threading.Event()

    def stanza() -> str:
        release.wait(TIMEOUT)
        finished.set()
        return "applied"

    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(calls.run(stanza), 0.05)
        release.set()
        assert await asyncio.wait_for(calls.run(lambda: "next"), TIMEOUT) == "next"
    finally:
        release.set()
        calls.shutdown()

    assert finished.is_set(), "the abandoned call still ran to its end"


async def test_no_call_is_taken_after_shutdown() -> None:
    calls = BlockingCalls(1)
    assert await calls.run(lambda: 1) == 1
    calls.shutdown()

    with pytest.raises(RuntimeError, match="shut down"):
        await calls.run(lambda: 2)


def test_a_pool_needs_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BlockingCalls(0)
