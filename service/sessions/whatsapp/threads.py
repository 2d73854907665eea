"""Threads for neonize's blocking calls, with answers handed back to the event loop in groups.

Each WhatsApp stanza is a Go call that holds its thread for the whole round trip, so hundreds of
instances updating at once need hundreds of threads. ``loop.run_in_executor`` would do, but per
call it builds a ``concurrent.futures.Future`` (a Condition and an RLock), chains it to an asyncio
future through two callbacks, and wakes the loop once per answer; with 500 instances that, not
WhatsApp, is what a burst of updates waits for. Here a call is one put on a ``SimpleQueue``, an
answer one append to a deque, and the loop is woken once for however many answers arrived
meanwhile. Threads start as calls need them, up to ``max_threads``, and stay for the next ones.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
#: How long answers may gather before the next delivery while they keep coming (see ``_deliver``).
DELIVERY_WINDOW = 0.0005
T = TypeVar("T")

_Call = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]
_Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]


class BlockingCalls:
    """Runs blocking calls on threads of their own; ``run`` awaits one.

    Must be used from one event loop. Calls beyond ``max_threads`` at once wait for a thread.
    """

    def __init__(self, max_threads: int, name: str = "stanza") -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._answers: deque[_Answer] = deque()
        self._threads: list[threading.Thread] = []
        # Only the loop's thread changes this: calls handed out and not yet answered.
        self._in_flight = 0
        self._wakeup_pending = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: (loop time, future) of the waits that end with TimeoutError, soonest first.
        self._deadlines: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def threads(self) -> int:
        """How many threads have been started."""
        return len(self._threads)

    async def run(self, call: Callable[..., T], *args: Any, wait_at_most: float | None = None) -> T:
        """``call(*args)`` on a thread; cancelling the wait does not stop the call.

        With ``wait_at_most``, the wait ends with ``TimeoutError`` after that many seconds while the
        call goes on (its answer, when it comes, is dropped): a Go call cannot be interrupted.
        """
        if self._closed:
            raise RuntimeError("blocking calls are shut down")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = self._loop.create_future()
        self._in_flight += 1
        self._calls.put((future, call, args))
        if self._in_flight > len(self._threads) and len(self._threads) < self.max_threads:
            self._start_thread()
        if wait_at_most is not None:
            self._expire_later(future, wait_at_most)
        return await future

    def _expire_later(self, future: asyncio.Future[Any], after: float) -> None:
        """Ends ``future``'s wait with ``TimeoutError`` ``after`` seconds from now.

        One timer for all of them rather than one per call (a timer handle per stanza showed in
        the 500-instance profile). Every stanza waits the same ``stanza_timeout``, so deadlines
        arrive in order and each is an append; one that does not is sorted in.
        """
        assert self._loop is not None
        deadline = self._loop.time() + after
        if self._deadlines and self._deadlines[-1][0] > deadline:
            self._deadlines = deque(sorted([*self._deadlines, (deadline, future)], key=_first))
        else:
            self._deadlines.append((deadline, future))
        if self._sweep is None:
            self._sweep = self._loop.call_at(self._deadlines[0][0], self._expire_due)

    def _expire_due(self) -> None:
        assert self._loop is not None
        self._sweep = None
        now = self._loop.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            _expire(self._deadlines.popleft()[1])
        if self._deadlines:
            self._sweep = self._loop.call_at(self._deadlines[0][0], self._expire_due)

    def shutdown(self) -> None:
        """Lets every thread end once its current call returns (they are daemons: a call stuck
        in Go does not hold up the process's exit)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._calls.put(None)

    def _start_thread(self) -> None:
        name = f"{self._name}_{len(self._threads)}"
        thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call, args = item
            try:
                answer: _Answer = (future, call(*args), None)
            except BaseException as exc:  # handed to the caller, whatever it is
                answer = (future, None, exc)
            self._answers.append(answer)
            if not self._wakeup_pending:
                self._wakeup_pending = True
                try:
                    future.get_loop().call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return

    def _deliver(self) -> None:
        """Hands the answers that arrived to their callers.

        Under load, answers keep arriving: rather than let each wake the loop, the next delivery
        is made ``DELIVERY_WINDOW`` later, with every answer that came meanwhile (workers do not
        wake the loop while one is due). Each wake-up makes the loop give up the GIL and wait to
        get it back from hundreds of threads; a WhatsApp round trip is tens of milliseconds, so
        the window costs an answer about 1% of its wait at most.
        """
        if not self._answers:
            # Quiet again: the next answer wakes the loop at once. Cleared before the check
            # below, so an answer appended meanwhile is either seen there or schedules a wake-up.
            self._wakeup_pending = False
            if not self._answers:
                return
            self._wakeup_pending = True
        while self._answers:
            future, result, error = self._answers.popleft()
            self._in_flight -= 1
            if future.done():  # its waiter went away; the call ran anyway
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        assert self._loop is not None
        self._loop.call_later(DELIVERY_WINDOW, self._deliver)


def _first(item: tuple[float, asyncio.Future[Any]]) -> float:
    return item[0]


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
