"""The guard around neonize's unlocked Go maps (``guard.MapGuard``) and a ``Neonize`` call's
hold on it (``guard.Registration``), in pure Python: no Go library is loaded.

Every wait here is on a thread of its own, and every check of order is made with Events, never
with a sleep that has to be long enough: a call that must wait is shown to wait for ``NOT_YET``
(longer than the guard's read window) and then to go ahead once what held it is gone. Timeouts
for what must happen are generous (``SOON``); the file runs in well under two seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from service.sessions.whatsapp.guard import MapGuard, Registration

#: The read window of every guard here (the gateway's is 1 s).
WINDOW = 0.05
#: How long a call is watched to see that it waits (twice the window: an expiring reader is gone).
NOT_YET = 0.1
#: How long a call that must go ahead may take.
SOON = 2.0
#: Timers may fire a little early by the clock's resolution; a window is measured against this.
WINDOW_AT_LEAST = WINDOW * 0.9


class OnThread:
    """``call()`` on a daemon thread of its own; ``done`` is set once it returned."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.at = 0.0

        def run() -> None:
            self.result = call()
            self.at = time.monotonic()
            self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def returns(self, within: float = SOON) -> bool:
        return self.done.wait(within)

    def waits(self, watched: float = NOT_YET) -> bool:
        return not self.done.wait(watched)


def writers_waiting(guard: MapGuard, count: int = 1) -> None:
    """Returns once ``count`` writers wait on ``guard`` (its one private counter, read only:
    nothing public says a thread has got as far as waiting)."""
    deadline = time.monotonic() + SOON
    while guard._writers_waiting < count:
        assert time.monotonic() < deadline, "the writer never got to wait"
        time.sleep(0.001)


def writer(guard: MapGuard) -> OnThread:
    """A writer taking the guard alone; its ``result`` is the release, once it has it."""
    return OnThread(guard.acquire_exclusive)


def reader(guard: MapGuard) -> OnThread:
    """A reader counting itself in; its ``result`` is the ticket, once it is in."""
    return OnThread(guard.enter_reader)


# -- MapGuard -----------------------------------------------------------------------------------


def test_a_writer_waits_for_a_reader_only_within_the_read_window() -> None:
    guard = MapGuard(read_window=WINDOW)
    entered = time.monotonic()
    guard.enter_reader()  # and never leaves: a stanza waiting for WhatsApp's answer

    waiting = writer(guard)
    assert waiting.returns(), "the writer waited for the reader past its window"
    assert waiting.at - entered >= WINDOW_AT_LEAST, "the writer did not wait for the reader"
    waiting.result()


def test_a_reader_that_leaves_lets_the_writer_go_at_once() -> None:
    guard = MapGuard(read_window=30.0)
    ticket = guard.enter_reader()
    waiting = writer(guard)
    writers_waiting(guard)
    assert waiting.waits(0.02), "the writer went ahead of a live reader"

    left = time.monotonic()
    guard.leave_reader(ticket)
    assert waiting.returns()
    assert waiting.at - left < 1.0, "the writer sat out the window of a reader that had left"
    waiting.result()


def test_readers_wait_for_a_waiting_writer() -> None:
    guard = MapGuard(read_window=30.0)
    first = guard.enter_reader()
    waiting_writer = writer(guard)
    writers_waiting(guard)

    late = reader(guard)
    assert late.waits(), "a reader went ahead of a waiting writer"
    guard.leave_reader(first)
    assert waiting_writer.returns()
    assert late.waits(0.02), "a reader went in while the writer held the guard"

    waiting_writer.result()
    assert late.returns(), "the reader still waits after the writer is done"
    assert waiting_writer.at <= late.at
    guard.leave_reader(late.result)


def test_a_held_reader_blocks_writers_until_it_leaves_but_not_readers() -> None:
    guard = MapGuard(read_window=WINDOW)
    held = guard.enter_reader(until_left=True)
    waiting_writer = writer(guard)
    writers_waiting(guard)
    assert waiting_writer.waits(), "a held reader stopped counting after the read window"

    # Other readers go ahead, even past the waiting writer: it could not go ahead anyway.
    other = reader(guard)
    assert other.returns(), "a held reader (and a waiting writer) kept another reader out"
    guard.leave_reader(other.result)
    assert waiting_writer.waits(0.02)

    left = time.monotonic()
    guard.leave_reader(held)
    assert waiting_writer.returns(), "the writer still waits after the held reader left"
    assert waiting_writer.at >= left
    waiting_writer.result()


def test_a_reader_taken_while_exclusive_leaves_no_gap_for_a_writer() -> None:
    guard = MapGuard(read_window=WINDOW)
    release = guard.acquire_exclusive()
    waiting_writer = writer(guard)
    writers_waiting(guard)

    ticket = guard.enter_reader_while_exclusive()  # does not wait for itself
    release()
    assert waiting_writer.waits(), "a writer slipped in between the release and the reader"
    # It is a held reader: readers go ahead of the waiting writer.
    other = reader(guard)
    assert other.returns()
    guard.leave_reader(other.result)

    guard.leave_reader(ticket)
    assert waiting_writer.returns()
    waiting_writer.result()


def test_an_expiring_reader_taken_while_exclusive_counts_for_the_window() -> None:
    guard = MapGuard(read_window=WINDOW)
    release = guard.acquire_exclusive()
    waiting_writer = writer(guard)
    writers_waiting(guard)

    entered = time.monotonic()
    guard.enter_reader_while_exclusive(expiring=True)
    release()
    assert waiting_writer.returns(), "an expiring reader held the writer past its window"
    assert waiting_writer.at - entered >= WINDOW_AT_LEAST, "the writer slipped in"
    waiting_writer.result()


def test_a_release_called_twice_does_not_release_the_next_writer() -> None:
    guard = MapGuard(read_window=WINDOW)
    release = guard.acquire_exclusive()
    release()
    second = guard.acquire_exclusive()
    release()  # again: the second writer still holds the guard
    third = writer(guard)
    assert third.waits(0.03), "a stale release let a second writer in beside the first"
    second()
    assert third.returns()
    third.result()


# -- Registration: one Neonize call's hold --------------------------------------------------------


def registration(guard: MapGuard, patience: float = 30.0) -> Registration:
    started = Registration(guard, patience=patience)
    started.start()
    return started


def test_a_registration_is_exclusive_until_done() -> None:
    guard = MapGuard(read_window=WINDOW)
    held = registration(guard)

    stanza = reader(guard)
    assert stanza.waits(), "a stanza read the maps while neonize was writing them"
    other = writer(guard)  # another registration, or a Stop
    writers_waiting(guard)

    held.done()
    # The writer was waiting, so it goes first; then the stanza.
    assert other.returns(), "done() did not give the guard up"
    assert stanza.waits(0.02), "a stanza went in beside the next writer"
    other.result()
    assert stanza.returns()
    assert other.at <= stanza.at
    guard.leave_reader(stanza.result)


@pytest.mark.parametrize("ending", ["done", "ended"])
def test_dialing_turns_a_registration_into_a_held_reader(ending: str) -> None:
    guard = MapGuard(read_window=WINDOW)
    held = registration(guard)
    waiting_writer = writer(guard)
    writers_waiting(guard)

    held.dialing()
    stanza = reader(guard)
    assert stanza.returns(), "a dialing registration held stanzas back"
    guard.leave_reader(stanza.result)
    # Past the read window, the writer still waits: the call's last map reads are to come.
    assert waiting_writer.waits(), "a writer went in while a registration was dialing"

    getattr(held, ending)()
    assert waiting_writer.returns(), f"{ending}() did not give the reader's place up"
    waiting_writer.result()


def test_a_registration_past_its_patience_downgrades_by_itself() -> None:
    guard = MapGuard(read_window=WINDOW)
    started = time.monotonic()
    held = registration(guard, patience=0.1)
    stanza = reader(guard)
    waiting_writer = writer(guard)

    assert stanza.returns(), "the registration never let stanzas go on"
    assert stanza.at - started >= 0.09, "stanzas went on before the patience ran out"
    guard.leave_reader(stanza.result)
    assert waiting_writer.waits(), "the registration gave its reader's place up by itself"

    held.ended()
    assert waiting_writer.returns()
    waiting_writer.result()


@pytest.mark.parametrize("dialing", [False, True], ids=["from-exclusive", "from-dialing"])
def test_done_with_reads_following_keeps_a_reader_for_the_window(dialing: bool) -> None:
    guard = MapGuard(read_window=WINDOW)
    held = registration(guard)
    if dialing:
        held.dialing()

    done = time.monotonic()
    held.done(reads_follow=True)
    stanza = reader(guard)
    assert stanza.returns(), "a stanza was held back after done()"
    guard.leave_reader(stanza.result)

    waiting_writer = writer(guard)
    assert waiting_writer.returns(), "the read window never ended"
    assert waiting_writer.at - done >= WINDOW_AT_LEAST, "a writer went in before Go's last reads"
    waiting_writer.result()


def test_a_finished_registration_lets_go_only_of_its_own_hold() -> None:
    guard = MapGuard(read_window=WINDOW)
    held = registration(guard)
    held.done()
    release = guard.acquire_exclusive()  # someone else's hold now

    held.ended()  # the call returns: nothing of the registration is left to give up
    held.done()
    late = writer(guard)
    assert late.waits(0.03), "a finished registration released another caller's hold"
    release()
    assert late.returns()
    late.result()
