"""WatchPrivacySettings: the settings now, then every change, whoever made it.

The first message is the settings as they are (source INITIAL, nothing changed); after it, one
message per change the session learns of: each field an update applies (source GATEWAY) and each
change WhatsApp notifies from the phone (source PHONE). A set that changes nothing is no change.
The simulated kind is driven through ``conftest``'s gateway; the WhatsApp kind through the
stand-in, whose phone changes arrive as neonize's PrivacySettings event.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc import aio

from service.grpc import convert
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import Field, Settings
from tests.helpers.harness import SALES_TOKEN, Harness, visibility
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    DISCONNECTED,
    TIMEOUT,
    StartWhatsApp,
    paired,
    rpc_error,
)

WatchCall = aio.UnaryStreamCall[pb.WatchPrivacySettingsRequest, pb.WatchPrivacySettingsResponse]

INITIAL = pb.CHANGE_SOURCE_INITIAL
GATEWAY = pb.CHANGE_SOURCE_GATEWAY
PHONE = pb.CHANGE_SOURCE_PHONE


def field_number(field: Field) -> int:
    return spb.PrivacyField.Value(f"PRIVACY_FIELD_{field.name}")


def watch(harness: Harness, instance: str = "sales", token: str | None = None) -> WatchCall:
    return harness.stub.WatchPrivacySettings(
        pb.WatchPrivacySettingsRequest(instance=instance), metadata=harness.metadata(token)
    )


async def next_message(call: WatchCall) -> pb.WatchPrivacySettingsResponse:
    message = await asyncio.wait_for(call.read(), TIMEOUT)
    assert message is not aio.EOF, "the watch ended"
    assert isinstance(message, pb.WatchPrivacySettingsResponse)
    return message


def described(
    message: pb.WatchPrivacySettingsResponse,
) -> tuple[int, list[Field], Settings]:
    """(source, changed fields, settings) of a message."""
    changed = [convert.field_from_proto(number) for number in message.changed]
    return message.source, changed, convert.settings_from_proto(message.settings)


def defaults_with(**values: str) -> Settings:
    return Settings({**DEFAULT_SETTINGS, **{Field(f): v for f, v in values.items()}})


async def watch_error(call: WatchCall) -> aio.AioRpcError:
    try:
        async with asyncio.timeout(TIMEOUT):
            while (message := await call.read()) is not aio.EOF:
                pytest.fail(f"the watch sent {message} before failing")
    except aio.AioRpcError as error:
        return error
    pytest.fail("the watch ended without an error")


# -- the simulated kind -----------------------------------------------------------------------


async def test_the_first_message_is_the_current_settings(gateway: Harness) -> None:
    gateway.session("sales").server_settings = defaults_with(profile="contacts")
    call = watch(gateway)

    first = await next_message(call)

    assert described(first) == (INITIAL, [], defaults_with(profile="contacts"))
    call.cancel()


async def test_an_update_through_the_gateway_is_one_message_per_changed_field(
    gateway: Harness,
) -> None:
    call = watch(gateway)
    await next_message(call)

    await gateway.update(
        spb.PrivacySettings(
            visibility=spb.Visibility(
                last_seen=spb.VISIBILITY_VALUE_NONE, status=spb.VISIBILITY_VALUE_CONTACTS
            ),
            privacy=spb.Privacy(read_receipts=spb.READ_RECEIPTS_VALUE_NONE),
        )
    )

    # status is already `contacts`: no stanza, no change, no message.
    assert described(await next_message(call)) == (
        GATEWAY,
        [Field.LAST_SEEN],
        defaults_with(last_seen="none"),
    )
    assert described(await next_message(call)) == (
        GATEWAY,
        [Field.READ_RECEIPTS],
        defaults_with(last_seen="none", read_receipts="none"),
    )
    call.cancel()


async def test_an_update_that_changes_nothing_is_not_reported(gateway: Harness) -> None:
    request = visibility(last_seen=spb.VISIBILITY_VALUE_NONE)
    await gateway.update(request)
    call = watch(gateway)
    await next_message(call)

    await gateway.update(request)
    gateway.session("sales").change_on_phone(Field.PROFILE, "none")

    # The next message is the phone's change: the repeat delivered nothing before it.
    assert described(await next_message(call)) == (
        PHONE,
        [Field.PROFILE],
        defaults_with(last_seen="none", profile="none"),
    )
    call.cancel()


async def test_a_change_on_the_phone_is_reported_with_source_phone(gateway: Harness) -> None:
    call = watch(gateway)
    await next_message(call)

    gateway.session("sales").change_on_phone(Field.CALL_ADD, "known")

    assert described(await next_message(call)) == (
        PHONE,
        [Field.CALL_ADD],
        defaults_with(call_add="known"),
    )
    call.cancel()


async def test_every_watcher_receives_every_change(gateway: Harness) -> None:
    first = watch(gateway)
    second = watch(gateway, token=SALES_TOKEN)
    await next_message(first)
    await next_message(second)

    await gateway.update(visibility(online=spb.ONLINE_VALUE_MATCH_LAST_SEEN))
    gateway.session("sales").change_on_phone(Field.GROUP_ADD, "contacts")

    expected = [
        (GATEWAY, [Field.ONLINE], defaults_with(online="match_last_seen")),
        (
            PHONE,
            [Field.GROUP_ADD],
            defaults_with(online="match_last_seen", group_add="contacts"),
        ),
    ]
    for call in (first, second):
        assert [described(await next_message(call)) for _ in expected] == expected
        call.cancel()


async def test_a_watch_sees_only_its_own_instance(gateway: Harness) -> None:
    sales = watch(gateway)
    await next_message(sales)

    await gateway.update(visibility(last_seen=spb.VISIBILITY_VALUE_NONE), instance="support")
    await gateway.update(visibility(profile=spb.VISIBILITY_VALUE_NONE))

    assert described(await next_message(sales)) == (
        GATEWAY,
        [Field.PROFILE],
        defaults_with(profile="none"),
    )
    sales.cancel()


@pytest.mark.parametrize(
    ("instance", "token"),
    [("other", None), ("support", SALES_TOKEN)],
    ids=["another-accounts-instance", "instance-token-on-a-sibling"],
)
async def test_watching_an_instance_the_token_may_not_act_on_is_permission_denied(
    gateway: Harness, instance: str, token: str | None
) -> None:
    error = await watch_error(watch(gateway, instance, token))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"This token may not act on instance {instance}"


async def test_watching_an_instance_that_is_not_connected_is_failed_precondition(
    gateway: Harness,
) -> None:
    gateway.session("sales").disconnect()

    error = await watch_error(watch(gateway))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Instance is not connected to WhatsApp"


async def test_stopping_the_server_ends_watches_cleanly_and_promptly(gateway: Harness) -> None:
    calls = [watch(gateway), watch(gateway, instance="support")]
    for call in calls:
        await next_message(call)
    grace = 10.0

    started = time.monotonic()
    stopping = asyncio.create_task(gateway.server.stop(grace))
    ends = [await asyncio.wait_for(call.read(), TIMEOUT) for call in calls]
    ended = time.monotonic() - started
    await asyncio.wait_for(stopping, TIMEOUT)
    stopped = time.monotonic() - started

    assert ends == [aio.EOF, aio.EOF]
    assert [await call.code() for call in calls] == [grpc.StatusCode.OK, grpc.StatusCode.OK]
    assert ended < 1.0, f"the watches ended {ended:.2f} s after the stop began"
    assert stopped < 2.0, f"stopping took {stopped:.2f} s of its {grace} s grace"


# -- the WhatsApp kind ------------------------------------------------------------------------


async def test_whatsapp_a_change_on_the_phone_is_reported_with_the_new_settings(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", latency=0.0), "wa")
    await wa.wait_state("wa", CONNECTED)
    call = wa.privacy.WatchPrivacySettings(
        pb.WatchPrivacySettingsRequest(instance="wa"), metadata=wa.metadata()
    )
    assert described(await next_message(call)) == (INITIAL, [], DEFAULT_SETTINGS)
    sent = wa.ffi.stanzas

    wa.ffi.change_on_phone("wa", Field.LAST_SEEN, "contacts")

    assert described(await next_message(call)) == (
        PHONE,
        [Field.LAST_SEEN],
        defaults_with(last_seen="contacts"),
    )
    assert wa.ffi.stanzas == sent, "whatsmeow's cache answers the re-read: no stanza"
    # The session's own cache took the phone's value: the gateway reads it back as is.
    assert await wa.get("wa") == defaults_with(last_seen="contacts")

    await wa.update("wa", last_seen="contacts", read_receipts="none")

    assert described(await next_message(call)) == (
        GATEWAY,
        [Field.READ_RECEIPTS],
        defaults_with(last_seen="contacts", read_receipts="none"),
    )
    call.cancel()


async def test_whatsapp_watching_a_dropped_instance_is_failed_precondition(
    start_whatsapp: StartWhatsApp,
) -> None:
    wa = await start_whatsapp(paired("wa", latency=0.0), "wa")
    await wa.wait_state("wa", CONNECTED)
    wa.ffi.drop("wa")  # and it stays down
    await wa.wait_state("wa", DISCONNECTED)

    call = wa.privacy.WatchPrivacySettings(
        pb.WatchPrivacySettingsRequest(instance="wa"), metadata=wa.metadata()
    )
    error = await rpc_error(call.read())

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Instance is not connected to WhatsApp"
