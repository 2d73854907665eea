"""neonize's unlocked maps are guarded, and the guard never holds one instance up for another.

The stand-in aborts, as Go does, on a map read that overlaps a write (``standin.gomaps``), so
every test through it checks that the guard is there. These check that it is not in the way: a
stanza that waits 75 s for WhatsApp does not hold up another instance's stop, nor, through it,
a third instance's stanzas, for more than the guard's read window.
"""

from __future__ import annotations

import asyncio
import time

from service.sessions.whatsapp.ffi import EMPTY_EVENT_CODES, SUBSCRIPTIONS
from service.sessions.whatsapp.guard import READ_WINDOW
from service.sessions.whatsapp.standin import Fault, StandInFFI, Timing
from tests.helpers.whatsapp_harness import CONNECTED, JID, LOGGED_OUT, StartWhatsApp


def test_no_event_neonize_cannot_forward_is_subscribed_to() -> None:
    """KeepAliveRestored, StreamReplaced and ClientOutdated are empty messages; neonize's
    getBytesAndSize panics on them (goneonize/main.go:410-414)."""
    assert not set(SUBSCRIPTIONS) & EMPTY_EVENT_CODES


async def test_a_stop_waits_for_a_hanging_stanza_only_for_the_read_window(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = StandInFFI(timing=Timing(latency=0.0))
    for name in ("slow", "leaving", "busy"):
        ffi.link_account(name, JID)
    wa = await start_whatsapp(ffi, "slow", "leaving", "busy", stanza_timeout_seconds=4)
    for name in ("slow", "leaving", "busy"):
        await wa.wait_state(name, CONNECTED)
        await wa.get(name)
    # "slow"'s next stanza gets no answer: its Go call blocks for whatsmeow's 75 s.
    ffi.arrange("slow", Fault("timeout", category="last", applied=False))
    hanging = asyncio.ensure_future(wa.update("slow", last_seen="none"))
    await asyncio.sleep(0.1)

    ffi.log_out("leaving")  # its link is stopped: neonize's Stop writes the maps
    await wa.wait_state("leaving", LOGGED_OUT)
    started = time.monotonic()
    await wa.update("busy", last_seen="none")
    await wa.update("busy", status="none")
    elapsed = time.monotonic() - started

    assert elapsed < READ_WINDOW + 1.0, f"busy waited {elapsed:.2f} s behind a stop"
    assert not hanging.done(), "the slow stanza is still waiting for WhatsApp"
    hanging.cancel()
