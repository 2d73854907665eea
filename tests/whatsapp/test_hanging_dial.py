"""A dial that never ends (a proxy that accepts and never answers: whatsmeow sets no deadline
on its websocket dial, socket/framesocket.go, and neonize's Stop would wait for it, client.go:
519-535) holds neonize's maps for the instance it registers, but not the other instances'
stanzas: past ``REGISTRATION_PATIENCE`` the registration keeps only a reader's place, so
stanzas go on while other registrations and stops wait for it (guard.py)."""

from __future__ import annotations

import asyncio
import threading

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.whatsapp.guard import REGISTRATION_PATIENCE
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    JID,
    StartWhatsApp,
    paired,
)


async def test_a_dial_that_hangs_does_not_hold_up_other_instances_stanzas(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = paired("linked")
    wa = await start_whatsapp(ffi, "linked", "fresh")
    await wa.wait_state("linked", CONNECTED)
    hang = threading.Event()
    ffi.hang_dial = hang
    pairing = wa.pair("fresh")  # a new device: neonize registers it, then dials, and hangs
    try:
        await asyncio.sleep(REGISTRATION_PATIENCE + 0.5)
        reply = await asyncio.wait_for(wa.update("linked", last_seen="none"), timeout=5)
        assert [f.state for f in reply.fields] == [pb.FIELD_STATE_APPLIED]
        assert ffi.device("linked").raw_settings["last"] == "none"
        assert (await wa.instance("linked")).jid == JID
    finally:
        hang.set()
        pairing.cancel()
