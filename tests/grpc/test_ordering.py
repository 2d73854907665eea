"""Updates to one instance run one at a time, in arrival order; different instances in parallel.

A caller that goes away, or a deadline that passes, starts no further stanza; a stanza already in
flight finishes (WhatsApp applies it anyway), and the instance is free for the next update.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc import aio

from service.engine import FieldState
from service.grpc.convert import (
    field_from_proto,
    settings_from_proto,
    settings_to_proto,
    state_from_proto,
    value_from_proto,
)
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import DEFAULT_SETTINGS, SentStanza
from service.settings import Field, Settings
from tests.helpers.harness import GatewayFactory, Harness
from tests.helpers.updates import FIVE_CHANGES

StreamCall = aio.UnaryStreamCall[
    pb.StreamUpdatePrivacySettingsRequest, pb.StreamUpdatePrivacySettingsResponse
]


def _instances(*names: str, latency_ms: int) -> list[dict[str, Any]]:
    return [{"name": n, "account": "acme", "latency_ms": latency_ms} for n in names]


def _sets(request: Settings) -> list[SentStanza]:
    """The set stanzas an update of a fresh account to ``request`` sends, in order."""
    return [SentStanza(f.spec.category, v) for f, v in request.items() if DEFAULT_SETTINGS[f] != v]


def _plan_current(message: pb.StreamUpdatePrivacySettingsResponse) -> Settings:
    assert message.WhichOneof("event") == "plan"
    values: dict[Field, str] = {}
    for planned in message.plan.fields:
        field = field_from_proto(planned.field)
        value = value_from_proto(field, planned.current)
        assert value is not None
        values[field] = value
    return Settings(values)


async def _all_messages(call: StreamCall) -> list[pb.StreamUpdatePrivacySettingsResponse]:
    """The rest of a stream (read with ``read()``, so a test may read the first message itself)."""
    messages: list[pb.StreamUpdatePrivacySettingsResponse] = []
    while (message := await call.read()) is not aio.EOF:
        assert isinstance(message, pb.StreamUpdatePrivacySettingsResponse)
        messages.append(message)
    return messages


async def _update_with_timeout(
    harness: Harness, request: Settings, instance: str = "sales"
) -> None:
    """An update that must succeed promptly (it would hang if the instance were still locked)."""
    await harness.stub.UpdatePrivacySettings(
        pb.UpdatePrivacySettingsRequest(instance=instance, settings=settings_to_proto(request)),
        metadata=harness.metadata(),
        timeout=2,
    )


async def test_concurrent_updates_to_one_instance_never_interleave(
    make_gateway: GatewayFactory,
) -> None:
    gateway: Harness = await make_gateway(instances=_instances("sales", latency_ms=50))
    session = gateway.session()
    first = Settings({Field.LAST_SEEN: "none", Field.STATUS: "none", Field.PROFILE: "none"})
    second = Settings(
        {Field.LAST_SEEN: "contacts", Field.PROFILE: "contacts", Field.READ_RECEIPTS: "none"}
    )

    first_call = gateway.stream(settings_to_proto(first))
    first_plan = await first_call.read()
    assert isinstance(first_plan, pb.StreamUpdatePrivacySettingsResponse)
    second_call = gateway.stream(settings_to_proto(second))
    first_rest, second_messages = await asyncio.gather(
        _all_messages(first_call), _all_messages(second_call)
    )

    assert _plan_current(first_plan) == Settings({f: DEFAULT_SETTINGS[f] for f in first})
    # The second update planned against the first one's results.
    assert _plan_current(second_messages[0]) == Settings(
        {Field.LAST_SEEN: "none", Field.PROFILE: "none", Field.READ_RECEIPTS: "all"}
    )
    assert session.sent == [
        SentStanza(None, None),
        *_sets(first),
        SentStanza("last", "contacts"),
        SentStanza("profile", "contacts"),
        SentStanza("readreceipts", "none"),
    ]
    assert settings_from_proto(first_rest[-1].snapshot) == Settings({**DEFAULT_SETTINGS, **first})
    assert settings_from_proto(second_messages[-1].snapshot) == session.server_settings
    assert session.server_settings == Settings({**DEFAULT_SETTINGS, **first, **second})


async def test_queued_updates_run_in_arrival_order(make_gateway: GatewayFactory) -> None:
    gateway: Harness = await make_gateway(instances=_instances("sales", latency_ms=50))
    session = gateway.session()
    requests = [
        Settings({Field.LAST_SEEN: v, Field.STATUS: v}) for v in ("none", "contacts", "all")
    ]

    calls = [gateway.stream(settings_to_proto(requests[0]))]
    await calls[0].read()  # the first holds the instance
    for request in requests[1:]:
        await asyncio.sleep(0.05)  # let the previous call reach the gateway first
        calls.append(gateway.stream(settings_to_proto(request)))
    await asyncio.gather(*(_all_messages(c) for c in calls))

    assert session.sent == [
        SentStanza(None, None),
        *(SentStanza(c, v) for v in ("none", "contacts", "all") for c in ("last", "status")),
    ]
    assert session.server_settings == Settings({**DEFAULT_SETTINGS, **requests[2]})


async def test_updates_to_different_instances_run_in_parallel(
    make_gateway: GatewayFactory,
) -> None:
    latency = 0.1
    names = ("sales", "support", "billing")
    gateway: Harness = await make_gateway(instances=_instances(*names, latency_ms=100))
    request = Settings(
        {Field.LAST_SEEN: "none", Field.ONLINE: "match_last_seen", Field.CALL_ADD: "known"}
    )

    started = time.monotonic()
    await asyncio.gather(*(_update_with_timeout(gateway, request, name) for name in names))
    took = time.monotonic() - started

    stanzas = sum(gateway.session(name).stanzas for name in names)
    assert stanzas == len(names) * (1 + 3)
    serial = stanzas * latency
    assert took < 0.8 * serial, f"{took:.2f}s for {len(names)} instances, serial {serial:.2f}s"
    for name in names:
        assert gateway.session(name).server_settings == Settings({**DEFAULT_SETTINGS, **request})


async def test_cancelled_stream_starts_no_further_stanza(make_gateway: GatewayFactory) -> None:
    latency = 0.1
    gateway: Harness = await make_gateway(instances=_instances("sales", latency_ms=100))
    session = gateway.session()
    call = gateway.stream(settings_to_proto(FIVE_CHANGES))

    async for message in call:
        if message.WhichOneof("event") == "field":
            assert field_from_proto(message.field.field) is Field.LAST_SEEN
            assert state_from_proto(message.field.state) is FieldState.STARTED
            call.cancel()
            break
    await asyncio.sleep(4 * latency)

    assert await call.code() == grpc.StatusCode.CANCELLED
    # The fetch and the stanza in flight, nothing after the cancel.
    assert session.sent == [SentStanza(None, None), SentStanza("last", "none")]
    # The stanza in flight was not abandoned: WhatsApp holds its value.
    assert session.server_settings == DEFAULT_SETTINGS.with_value(Field.LAST_SEEN, "none")
    # The instance is free again.
    await _update_with_timeout(gateway, Settings({Field.GROUP_ADD: "contacts"}))
    assert session.server_settings[Field.GROUP_ADD] == "contacts"
    assert session.sent[-1] == SentStanza("groupadd", "contacts")


async def test_deadline_starts_no_stanza_after_it(make_gateway: GatewayFactory) -> None:
    latency = 0.1
    gateway: Harness = await make_gateway(instances=_instances("sales", latency_ms=100))
    session = gateway.session()
    call = gateway.stub.StreamUpdatePrivacySettings(
        pb.StreamUpdatePrivacySettingsRequest(
            instance="sales", settings=settings_to_proto(FIVE_CHANGES)
        ),
        metadata=gateway.metadata(),
        timeout=0.25,
    )

    with pytest.raises(aio.AioRpcError) as raised:
        await _all_messages(call)
    await asyncio.sleep(5 * latency)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Fetch at 0 ms, sets at 100 and 200 ms; the one due at 300 ms is after the deadline.
    sets = [s for s in session.sent if s.category is not None]
    assert len(sets) <= 3
    assert sets == _sets(FIVE_CHANGES)[: len(sets)]
    sent_fields = list(FIVE_CHANGES)[: len(sets)]
    assert session.server_settings == Settings(
        {**DEFAULT_SETTINGS, **{f: FIVE_CHANGES[f] for f in sent_fields}}
    )
    for field in (Field.ONLINE, Field.READ_RECEIPTS):
        assert session.server_settings[field] == DEFAULT_SETTINGS[field]
    await _update_with_timeout(gateway, Settings({Field.GROUP_ADD: "contacts"}))
    assert session.server_settings[Field.GROUP_ADD] == "contacts"
