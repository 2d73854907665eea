"""A real gateway whose instances live in the simulator: what it reads and writes is what the
simulator holds, each costs exactly the stanzas whatsmeow would send, and what the simulator
does (a phone change, a refusal, a lost answer) reaches callers as it would from WhatsApp."""

from __future__ import annotations

import asyncio

import grpc
from grpc_status import rpc_status

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.simulated import DEFAULT_SETTINGS
from service.sessions.simulator.server import SimulatorServer
from service.settings import Field, Settings
from tests.helpers.rich_status import update_response
from tests.helpers.simulator import (
    TIMEOUT,
    OnSimulator,
    reason_of,
    rpc_error,
    simulator_session,
    wait_until,
)

NONE = spb.VISIBILITY_VALUE_NONE


def last_seen_and_receipts_off() -> spb.PrivacySettings:
    return spb.PrivacySettings(
        visibility=spb.Visibility(last_seen=NONE),
        privacy=spb.Privacy(read_receipts=spb.READ_RECEIPTS_VALUE_NONE),
    )


async def test_reads_and_updates_reach_the_simulator_with_one_fetch_then_one_stanza_per_field(
    on_simulator: OnSimulator, simulator: SimulatorServer
) -> None:
    gateway = await on_simulator("r1")

    assert await gateway.get("sales") == DEFAULT_SETTINGS
    response = await gateway.update(last_seen_and_receipts_off())
    assert [f.state for f in response.fields] == [pb.FIELD_STATE_APPLIED] * 2

    expected = Settings({**DEFAULT_SETTINGS, Field.LAST_SEEN: "none", Field.READ_RECEIPTS: "none"})
    assert simulator.settings("sales") == expected
    assert await gateway.get("sales") == expected
    sent = [(s.client, s.kind, s.field, s.value) for s in simulator.stanzas_of("sales")]
    assert sent == [
        ("r1", "fetch", None, None),
        ("r1", "set", Field.LAST_SEEN, "none"),
        ("r1", "set", Field.READ_RECEIPTS, "none"),
    ]
    # Another instance is another account: untouched, and read once.
    assert simulator.settings("support") == DEFAULT_SETTINGS
    assert [s.kind for s in simulator.stanzas_of("support")] == ["fetch"]
    # A value already held costs no stanza.
    again = await gateway.update(last_seen_and_receipts_off())
    assert [f.state for f in again.fields] == [pb.FIELD_STATE_UNCHANGED] * 2
    assert len(simulator.stanzas_of("sales")) == 3


async def test_an_account_the_simulator_does_not_know_starts_from_the_configured_settings(
    on_simulator: OnSimulator, simulator: SimulatorServer
) -> None:
    simulator.add_account("support", {Field.PROFILE: "contacts"})
    instances = [
        {"name": "sales", "account": "acme", "simulator": simulator.address,
         "settings": {"last_seen": "contacts"}},
        {"name": "support", "account": "acme", "simulator": simulator.address,
         "settings": {"last_seen": "contacts"}},
        {"name": "other", "account": "globex", "simulator": simulator.address},
    ]  # fmt: skip
    gateway = await on_simulator("r1", instances=instances)

    assert (await gateway.get("sales"))[Field.LAST_SEEN] == "contacts"
    # An account the simulator already holds keeps what it holds.
    support = await gateway.get("support")
    assert (support[Field.LAST_SEEN], support[Field.PROFILE]) == ("all", "contacts")


async def test_a_change_on_the_phone_reaches_a_watch_stream(
    on_simulator: OnSimulator, simulator: SimulatorServer
) -> None:
    gateway = await on_simulator("r1")
    call = gateway.stub.WatchPrivacySettings(
        pb.WatchPrivacySettingsRequest(instance="sales"), metadata=gateway.metadata()
    )
    first = await asyncio.wait_for(call.read(), TIMEOUT)
    assert isinstance(first, pb.WatchPrivacySettingsResponse)
    assert first.source == pb.CHANGE_SOURCE_INITIAL

    simulator.change_on_phone("sales", Field.LAST_SEEN, "contacts")

    change = await asyncio.wait_for(call.read(), TIMEOUT)
    assert isinstance(change, pb.WatchPrivacySettingsResponse)
    assert change.source == pb.CHANGE_SOURCE_PHONE
    assert list(change.changed) == [spb.PRIVACY_FIELD_LAST_SEEN]
    assert change.settings.visibility.last_seen == spb.VISIBILITY_VALUE_CONTACTS
    # The notification carried the value: no stanza was needed to learn it.
    assert [s.kind for s in simulator.stanzas_of("sales")] == ["fetch"]
    assert (await gateway.get("sales"))[Field.LAST_SEEN] == "contacts"
    call.cancel()


async def test_a_field_whatsapp_refuses_fails_the_update_with_whatsmeows_own_error(
    on_simulator: OnSimulator, simulator: SimulatorServer
) -> None:
    gateway = await on_simulator("r1")
    simulator.fail_field("sales", Field.LAST_SEEN, "info query returned status 503: unavailable")

    error = await rpc_error(gateway.update(last_seen_and_receipts_off()))

    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert reason_of(error) == "WHATSAPP_UNAVAILABLE"
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    states = [f.state for f in update_response(status).fields]
    assert states == [pb.FIELD_STATE_FAILED, pb.FIELD_STATE_NOT_ATTEMPTED]
    assert simulator.settings("sales") == DEFAULT_SETTINGS
    assert [s.error for s in simulator.stanzas_of("sales") if s.kind == "set"] == [
        "info query returned status 503: unavailable"
    ]


async def test_a_connection_dropped_before_the_answer_leaves_the_field_unconfirmed(
    on_simulator: OnSimulator, simulator: SimulatorServer
) -> None:
    gateway = await on_simulator("r1")
    simulator.set_latency(0.5, "sales")
    update = asyncio.ensure_future(
        gateway.update(spb.PrivacySettings(visibility=spb.Visibility(last_seen=NONE)))
    )
    await wait_until(lambda: any(s.kind == "set" for s in simulator.stanzas_of("sales")), "the set")

    simulator.drop("sales")
    error = await rpc_error(update)

    assert reason_of(error) == "STANZA_UNCONFIRMED"
    assert "websocket disconnected before info query returned response" in error.details()
    # WhatsApp applied it on arrival; only the answer was lost.
    assert simulator.settings("sales")[Field.LAST_SEEN] == "none"
    session = simulator_session(gateway)
    await wait_until(lambda: session.connected, "the redial")
    simulator.set_latency(0.0, "sales")
    assert (await gateway.get("sales"))[Field.LAST_SEEN] == "none"
