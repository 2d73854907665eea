"""What WhatsApp says about a connection, and what the instance's state then is.

whatsmeow does not reconnect after StreamReplaced, TemporaryBan, ClientOutdated, ConnectFailure
or LoggedOut (connectionevents.go:48-51, 102-156: ``expectDisconnect``), so the gateway decides:
REPLACED and CLIENT_OUTDATED wait for an operator, BANNED is retried once the ban expires, a
refused connection is retried with backoff. Keepalive failures make the instance DEGRADED until a
ping is answered again. neonize cannot forward StreamReplaced, ClientOutdated or
KeepAliveRestored at all (they serialize to zero bytes and neonize's ``getBytesAndSize`` panics
on them, goneonize/main.go:410-414): the stand-in aborts if they are subscribed to, and the
gateway learns of them from whatsmeow's log lines instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import grpc
import pytest

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.sessions.whatsapp import session as whatsapp_session
from service.sessions.whatsapp.standin import StandInFFI, Timing
from service.settings import Field
from tests.helpers.cli import cli_env
from tests.helpers.processes import CLI
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    DISCONNECTED,
    JID,
    LOGGED_OUT,
    NOT_PAIRED,
    StartWhatsApp,
    WaGateway,
    drain,
    pair_event,
    rpc_error,
)

REPLACED = instance_pb.INSTANCE_STATE_REPLACED
BANNED = instance_pb.INSTANCE_STATE_BANNED
CLIENT_OUTDATED = instance_pb.INSTANCE_STATE_CLIENT_OUTDATED
DEGRADED = instance_pb.INSTANCE_STATE_DEGRADED


def linked() -> StandInFFI:
    ffi = StandInFFI(timing=Timing(latency=0.0, qr_lifetimes=(0.3, 0.1)))
    ffi.link_account("wa", JID)
    return ffi


async def connected(start_whatsapp: StartWhatsApp, ffi: StandInFFI) -> WaGateway:
    wa = await start_whatsapp(ffi, "wa", reconnect_initial_seconds=0.05, reconnect_max_seconds=0.1)
    await wa.wait_state("wa", CONNECTED)
    return wa


async def no_new_dial(ffi: StandInFFI, connects: int, during: float = 0.5) -> None:
    await asyncio.sleep(during)
    assert ffi.connects == connects, "the gateway dialled again"


async def test_another_client_taking_the_session_is_replaced_and_not_redialled(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)
    connects = ffi.connects

    ffi.replace("wa")

    instance = await wa.wait_state("wa", REPLACED)
    assert instance.last_error == (
        "another client connected with this session: stop it, then restart the gateway"
    )
    assert instance.jid == JID
    await no_new_dial(ffi, connects)
    error = await rpc_error(wa.update("wa", last_seen="none"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    _, pairing = await drain(wa.pair("wa"))
    assert pairing is not None
    assert pairing.details() == f"Pairing failed: already paired as {JID}"


async def test_a_temporary_ban_waits_for_its_expiry_then_redials(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)

    banned_at = time.time()
    ffi.ban("wa", code=101, seconds=1.5)

    # whatsmeow logs the ban (connectionevents.go:134) before it dispatches the event, whose
    # reason then replaces the code the log line gave.
    instance = await wa.wait_state(
        "wa", BANNED, error="temporarily banned by WhatsApp (send to too many people) until "
    )
    assert instance.HasField("retry_time")
    # WhatsApp counts the expiry in whole seconds (connectionevents.go:137): 2 s from the ban.
    retry_at = instance.retry_time.seconds + instance.retry_time.nanos / 1e9
    assert banned_at + 1.5 <= retry_at <= banned_at + 2.5
    connects = ffi.connects
    await no_new_dial(ffi, connects, during=0.6)

    await wa.wait_state("wa", CONNECTED, within=5)
    assert ffi.connects == connects + 1
    assert not (await wa.instance("wa")).HasField("retry_time")


async def test_a_ban_code_neonize_cannot_encode_is_still_a_ban(
    start_whatsapp: StartWhatsApp,
) -> None:
    """An unmapped code (105) leaves neonize's required field unset, so its Marshal fails and
    Neonize returns (encoder.go:608-626, main.go:2541-2544); whatsmeow's log line still gives
    the expiry (connectionevents.go:134)."""
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)

    ffi.ban("wa", code=105, seconds=30)

    instance = await wa.wait_state("wa", BANNED)
    assert "(code 105)" in instance.last_error
    assert abs(instance.retry_time.seconds - (time.time() + 30)) < 3


async def test_an_outdated_client_is_not_redialled(start_whatsapp: StartWhatsApp) -> None:
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)

    ffi.outdate("wa")

    instance = await wa.wait_state("wa", CLIENT_OUTDATED)
    assert instance.last_error == "WhatsApp says this client is outdated: upgrade the gateway"
    await no_new_dial(ffi, ffi.connects)


async def test_a_refused_connection_is_redialled_with_backoff(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)
    connects = ffi.connects

    ffi.refuse_connect("wa", 409)  # bad user agent (types/events/events.go:191-211)

    # The socket drops first ("connection lost"), then the redial is refused.
    await wa.wait_state(
        "wa", DISCONNECTED, error="WhatsApp refused the connection (bad user agent)"
    )
    await asyncio.sleep(0.5)
    assert ffi.connects > connects, "a refused connection is retried"
    ffi.device("wa").connect_failure = None
    await wa.wait_state("wa", CONNECTED, within=5)


async def test_keepalive_failures_degrade_the_instance_until_whatsapp_answers_again(
    start_whatsapp: StartWhatsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(whatsapp_session, "KEEPALIVE_QUIET", 0.3)
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)

    ffi.keepalive_fails("wa", count=2)

    instance = await wa.wait_state("wa", DEGRADED)
    assert instance.last_error.startswith("2 keepalive ping(s) unanswered since ")
    # Still connected: a degraded connection may carry stanzas, and an answer is news too.
    response = await wa.update("wa", last_seen="none")
    assert response.settings.visibility.last_seen
    await wa.wait_state("wa", CONNECTED)

    ffi.keepalive_fails("wa")
    await wa.wait_state("wa", DEGRADED)
    # KeepAliveRestored never reaches Python (neonize would panic on it); silence does.
    await wa.wait_state("wa", CONNECTED, within=2)


async def test_keepalives_forced_reconnect_reads_the_settings_again(
    start_whatsapp: StartWhatsApp,
) -> None:
    """After 3 min without an answered ping whatsmeow reconnects with no event but the next
    Connected (keepalive.go:46-51); the gateway reads the settings again after it."""
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)
    await wa.get("wa")
    sent = ffi.stanzas

    ffi.keepalive_fails("wa", count=7)
    await wa.wait_state("wa", DEGRADED)
    ffi.keepalive_forces_reconnect("wa")

    await wa.wait_state("wa", CONNECTED)
    await wa.get("wa")
    # The same whatsmeow client keeps its cache over its own reconnect (privacysettings.go:20-43):
    # the gateway's re-read is served from it.
    assert ffi.stanzas == sent


async def test_a_new_link_reads_the_settings_again_and_sees_what_changed_meanwhile(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)
    assert (await wa.get("wa"))[Field.LAST_SEEN] == "all"
    sent = ffi.stanzas

    # The account changes while the gateway is away, then WhatsApp refuses one login.
    ffi.device("wa").raw_settings["last"] = "contacts"
    ffi.refuse_connect("wa", 409)
    await wa.wait_state(
        "wa", DISCONNECTED, error="WhatsApp refused the connection (bad user agent)"
    )
    ffi.device("wa").connect_failure = None
    await wa.wait_state("wa", CONNECTED, within=5)

    # A new link is a new whatsmeow client with an empty cache (goneonize/main.go:651-654).
    assert (await wa.get("wa"))[Field.LAST_SEEN] == "contacts"
    assert ffi.stanzas == sent + 1


async def test_a_logged_out_device_is_forgotten_and_can_be_paired_again(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)
    connects = ffi.connects

    ffi.log_out("wa")

    instance = await wa.wait_state("wa", LOGGED_OUT)
    assert instance.jid == ""
    await no_new_dial(ffi, connects)

    call = wa.pair("wa")
    message = await asyncio.wait_for(call.read(), 5)
    assert pair_event(message)[0] == "qr_code"
    ffi.scan("wa", JID)
    messages, error = await drain(call)
    assert error is None
    assert pair_event(messages[-1]) == ("jid", JID)
    await wa.wait_state("wa", CONNECTED)


async def test_a_store_that_lost_its_device_is_not_paired(start_whatsapp: StartWhatsApp) -> None:
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)

    ffi.log_out("wa")
    await wa.wait_state("wa", LOGGED_OUT)
    await wa.gateway.close()
    wa2 = await start_whatsapp(ffi, "wa")

    await wa2.wait_state("wa", NOT_PAIRED)
    await no_new_dial(ffi, ffi.connects)


@pytest.mark.parametrize("level", ["warn", "error"])
async def test_a_quiet_whatsapp_log_level_still_sees_the_session_taken_over(
    start_whatsapp: StartWhatsApp, level: str, caplog: pytest.LogCaptureFixture
) -> None:
    """StreamReplaced and ClientOutdated reach the gateway only as whatsmeow's log lines, the
    first at info (connectionevents.go:50, Infof): whatsmeow runs at info at least, and
    ``whatsapp_log_level`` filters only what is logged."""
    ffi = linked()
    wa = await start_whatsapp(
        ffi, "wa", reconnect_initial_seconds=0.05, reconnect_max_seconds=0.1,
        whatsapp_log_level=level,
    )  # fmt: skip
    await wa.wait_state("wa", CONNECTED)
    caplog.set_level(logging.DEBUG, logger="whatsmeow")

    ffi.replace("wa")

    await wa.wait_state("wa", REPLACED)
    assert not [r for r in caplog.records if r.name.startswith("whatsmeow") and r.levelno < 30]


async def test_a_ban_is_listed_with_its_expiry_by_list_instances_and_the_cli(
    start_whatsapp: StartWhatsApp,
) -> None:
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)

    ffi.ban("wa", code=101, seconds=600)
    shown = await wa.wait_state("wa", BANNED, error="temporarily banned by WhatsApp (send to")

    listed = await wa.instances.ListInstances(
        instance_pb.ListInstancesRequest(), metadata=wa.metadata()
    )
    [item] = [i for i in listed.instances if i.name == "wa"]
    assert (item.state, item.last_error, item.retry_time) == (
        BANNED,
        shown.last_error,
        shown.retry_time,
    )
    cli = await asyncio.create_subprocess_exec(
        *CLI, "instances", "--address", wa.address, "--token", wa.token,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(cli.communicate(), timeout=30)
    assert cli.returncode == 0, err
    [row] = [line for line in out.decode().splitlines() if line.startswith("wa ")]
    retry = datetime.fromtimestamp(shown.retry_time.seconds, tz=UTC).astimezone()
    assert row.split()[3] == "BANNED"
    assert row.endswith(f"{shown.last_error} (next attempt {retry:%Y-%m-%d %H:%M:%S})")


async def test_a_session_closed_then_started_again_connects_again(
    start_whatsapp: StartWhatsApp,
) -> None:
    """A replica that loses an instance's lease closes its session, and starts it again when
    it takes the lease back (``service.gateway.running``): the session must dial anew."""
    ffi = linked()
    wa = await connected(start_whatsapp, ffi)
    instance = wa.gateway.instances.get("wa")
    assert instance is not None
    session = instance.session
    connects = ffi.connects

    await session.close()
    await no_new_dial(ffi, connects, during=0.3)
    await session.start()

    await wa.wait_state("wa", CONNECTED)
    assert ffi.connects == connects + 1
    response = await wa.update("wa", last_seen="none")
    assert response.settings.visibility.last_seen
