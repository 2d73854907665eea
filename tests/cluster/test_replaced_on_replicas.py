"""A WhatsApp session taken over while this replica holds its lease is dialled once more.

The other client may be the instance's previous replica, resumed after a stall longer than the
lease: whatsmeow reconnects from inside Go (its autoReconnect, client.go:623-656; the keepalive's
forced reconnect, keepalive.go:48-50), which no lease can gate, before that replica's watchdog
stops the session. So the owner waits one lease TTL (by then the stale replica has stopped) and
dials again; WhatsApp then replaces the stale connection, which whatsmeow does not redial
(connectionevents.go:48-51). A second takeover is another client: it waits for an operator.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.sessions.whatsapp.standin import StandInFFI, Timing
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    JID,
    StartWhatsApp,
    whatsapp_instance,
)

REPLACED = instance_pb.INSTANCE_STATE_REPLACED
TTL = 1.2


async def test_a_takeover_on_a_replica_is_dialled_once_more_then_left_to_an_operator(
    start_whatsapp: StartWhatsApp, database_url: str, tmp_path: Path
) -> None:
    store = str(tmp_path / "own" / "wa.db")
    ffi = StandInFFI(timing=Timing(latency=0.0, qr_lifetimes=(0.3, 0.1)))
    ffi.link_account("wa", JID, store=store)
    wa = await start_whatsapp(
        ffi, instances=[whatsapp_instance("wa", store=store)], database_url=database_url,
        lease_ttl_seconds=TTL, lease_renew_seconds=0.3,
        reconnect_initial_seconds=0.05, reconnect_max_seconds=0.1,
    )  # fmt: skip
    await wa.wait_state("wa", CONNECTED, within=10)
    connects = ffi.connects

    replaced_at = time.time()
    ffi.replace("wa")

    first = await wa.wait_state(
        "wa", REPLACED, error="another client connected with this session ("
    )
    assert first.last_error == (
        "another client connected with this session (perhaps this instance's previous replica): "
        "dialling once more"
    )
    retry_at = first.retry_time.seconds + first.retry_time.nanos / 1e9
    assert replaced_at + TTL - 0.1 <= retry_at <= replaced_at + TTL + 1
    await wa.wait_state("wa", CONNECTED, within=TTL + 5)
    assert ffi.connects == connects + 1

    ffi.replace("wa")

    second = await wa.wait_state(
        "wa", REPLACED, error="another client connected with this session:"
    )
    assert second.last_error == (
        "another client connected with this session: stop it, then restart the gateway"
    )
    assert not second.HasField("retry_time")
    before = ffi.connects
    await asyncio.sleep(TTL + 0.5)
    assert ffi.connects == before, "a second takeover was dialled again"
