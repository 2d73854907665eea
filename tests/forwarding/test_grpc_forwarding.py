"""gRPC through a replica that does not own the instance: ``b`` relays ``sales`` to ``a``.

What the caller gets must be what ``a`` gives directly (messages, statuses, rich details); what
``b`` can judge alone (the token, the instance) never reaches ``a``; the caller's deadline and
cancel reach ``a``'s update; and ``a`` going away is OWNER_UNREACHABLE, never a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from grpc import aio
from grpc_status import rpc_status

from service.cluster.forwarding import MARKER
from service.engine import FieldState
from service.grpc.convert import settings_to_proto, state_from_proto
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.settings import Field, Settings
from tests.helpers.harness import GLOBEX_TOKEN, SALES_TOKEN, visibility
from tests.helpers.in_process_replicas import Replica, timeless, timeless_status
from tests.helpers.observability import GET, UPDATE
from tests.helpers.rich_status import error_info
from tests.helpers.updates import EVERY_FIELD_CHANGED, FIVE_CHANGES

StreamCall = aio.UnaryStreamCall[
    pb.StreamUpdatePrivacySettingsRequest, pb.StreamUpdatePrivacySettingsResponse
]


async def _failure(call: Awaitable[Any] | StreamCall) -> aio.AioRpcError:
    """The error ``call`` ends with (a stream: after all its messages)."""
    with pytest.raises(aio.AioRpcError) as raised:
        await _drained(call)
    return raised.value


async def _drained(call: Awaitable[Any] | StreamCall) -> None:
    if isinstance(call, aio.UnaryStreamCall):
        async for _ in call:
            pass
    else:
        await call


def _status(error: aio.AioRpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    return status


async def _journaled_state(owner: Replica, instance: str = "sales") -> int:
    """The state of ``instance``'s latest operation once it has ended, from the owner's journal."""
    deadline = time.monotonic() + 5
    while True:
        page = await owner.harness.stub.ListUpdateOperations(
            pb.ListUpdateOperationsRequest(instance=instance), metadata=owner.harness.metadata()
        )
        state = page.operations[0].state
        if state != pb.OPERATION_STATE_RUNNING:
            return state
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_unary_calls_are_served_by_the_owner(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]

    assert await b.harness.get("sales") == await a.harness.get("sales")
    response = await b.harness.update(visibility(last_seen=3), "sales")

    assert [u.state for u in response.fields] == [pb.FIELD_STATE_APPLIED]
    assert (
        a.harness.session("sales").server_settings[Field.LAST_SEEN]
        != (b.harness.session("sales").server_settings[Field.LAST_SEEN])
    )
    assert a.calls(GET) == 2
    assert a.calls(UPDATE) == 1
    assert b.calls(UPDATE) == 1  # recorded where it was taken too
    # The operation is the owner's, with the caller's name.
    record = await a.harness.stub.GetUpdateOperation(
        pb.GetUpdateOperationRequest(instance="sales", operation_id=response.operation_id),
        metadata=a.harness.metadata(),
    )
    assert record.operation.requested_by.startswith("account:acme")


async def test_a_stream_relays_the_owners_messages_in_order(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    request = settings_to_proto(EVERY_FIELD_CHANGED)

    direct = [m async for m in a.harness.stream(request, "support")]
    forwarded = [m async for m in b.harness.stream(request, "sales")]

    assert len(forwarded) == len(direct) == 16  # plan, started and applied each, snapshot
    assert [timeless(m) for m in forwarded] == [timeless(m) for m in direct]
    assert a.harness.session("sales").server_settings == Settings(
        {**a.harness.session("support").server_settings}
    )
    assert b.harness.session("sales").stanzas == 0


async def test_a_failed_update_carries_the_owners_rich_status(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    a.harness.session("sales").fail_field(Field.LAST_SEEN, "not-allowed")
    request = visibility(last_seen=3)

    direct = await _failure(a.harness.update(request, "sales"))
    forwarded = await _failure(b.harness.update(request, "sales"))

    assert forwarded.code() == direct.code()
    assert forwarded.details() == direct.details()
    direct_status, forwarded_status = _status(direct), _status(forwarded)
    assert error_info(forwarded_status).reason == error_info(direct_status).reason
    # What the owner sent, bar what differs between two calls (the operation, round trips).
    assert timeless_status(forwarded_status) == timeless_status(direct_status)


async def test_what_the_caller_cannot_do_is_answered_without_the_owner(
    pair: dict[str, Replica],
) -> None:
    a, b = pair["a"], pair["b"]
    cases = [("wrong-token", "sales"), (GLOBEX_TOKEN, "sales"), (SALES_TOKEN, "support")]
    cases += [(pair["a"].harness.token, "nowhere"), (pair["a"].harness.token, "")]
    for token, instance in cases:
        before = a.all_calls()
        direct = await _failure(a.harness.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=instance), metadata=(("token", token),)
        ))  # fmt: skip
        seen = await a.counted(before + 1)
        local = await _failure(b.harness.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=instance), metadata=(("token", token),)
        ))  # fmt: skip
        assert (local.code(), local.details()) == (direct.code(), direct.details())
        assert _status(local) == _status(direct)
        await asyncio.sleep(0.2)  # time for a forwarded call, had there been one, to be counted
        assert a.all_calls() == seen, (token, instance)


async def test_the_rate_limit_counts_a_forwarded_call_once(limited: dict[str, Replica]) -> None:
    a, b = limited["a"], limited["b"]
    for _ in range(3):
        await b.harness.get("sales")  # forwarded: counted by a only
    await b.harness.get("support")  # b's own: b had counted nothing for this token

    refused = await _failure(b.harness.stub.GetPrivacySettings(
        pb.GetPrivacySettingsRequest(instance="sales"), metadata=b.harness.metadata()
    ))  # fmt: skip

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(_status(refused)).reason == "RATE_LIMITED"
    assert a.calls(GET, "RESOURCE_EXHAUSTED") == 1


async def test_the_callers_deadline_stops_the_owners_update(slow: dict[str, Replica]) -> None:
    a, b = slow["a"], slow["b"]
    session = a.harness.session("sales")
    call = b.harness.stub.StreamUpdatePrivacySettings(
        pb.StreamUpdatePrivacySettingsRequest(
            instance="sales", settings=settings_to_proto(FIVE_CHANGES)
        ),
        metadata=b.harness.metadata(),
        timeout=0.25,
    )

    failure = await _failure(call)
    sent = len(session.sent)
    await asyncio.sleep(0.5)

    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The fetch and at most the stanzas due before the deadline; none after it.
    assert len(session.sent) == sent <= 4
    assert await _journaled_state(a) == pb.OPERATION_STATE_DEADLINE_EXCEEDED


async def test_a_caller_cancelling_cancels_the_owners_update(slow: dict[str, Replica]) -> None:
    a, b = slow["a"], slow["b"]
    session = a.harness.session("sales")
    call = b.harness.stream(settings_to_proto(FIVE_CHANGES), "sales")

    async for message in call:
        if message.WhichOneof("event") == "field":
            assert state_from_proto(message.field.state) is FieldState.STARTED
            call.cancel()
            break
    await asyncio.sleep(0.4)

    assert await call.code() == grpc.StatusCode.CANCELLED
    assert len(session.sent) == 2  # the fetch, and the stanza in flight
    assert await _journaled_state(a) == pb.OPERATION_STATE_CANCELLED


async def test_the_owner_dying_mid_stream_is_owner_unreachable(slow: dict[str, Replica]) -> None:
    a, b = slow["a"], slow["b"]
    call = b.harness.stream(settings_to_proto(FIVE_CHANGES), "sales")
    async for message in call:
        if message.WhichOneof("event") == "field":
            break

    await a.stop()
    failure = await asyncio.wait_for(_failure(call), 5)

    assert failure.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(_status(failure))
    assert info.reason == "OWNER_UNREACHABLE"
    assert dict(info.metadata) == {"instance": "sales", "replica": "a"}
    assert failure.details().startswith(
        "Instance sales is served by replica a, which could not be reached: "
    )


async def test_an_owner_that_is_gone_is_owner_unreachable(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    await a.stop()

    failure = await _failure(b.harness.stub.GetPrivacySettings(
        pb.GetPrivacySettingsRequest(instance="sales"), metadata=b.harness.metadata()
    ))  # fmt: skip

    assert failure.code() == grpc.StatusCode.UNAVAILABLE
    # The detail is the channel's own (its text varies with how the connection failed).
    assert failure.details().startswith(
        "Instance sales is served by replica a, which could not be reached: "
    )
    assert error_info(_status(failure)).reason == "OWNER_UNREACHABLE"


async def test_a_marked_call_is_never_forwarded_again(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    seen = a.all_calls()

    failure = await _failure(b.harness.stub.StreamUpdatePrivacySettings(
        pb.StreamUpdatePrivacySettingsRequest(
            instance="sales", settings=settings_to_proto(FIVE_CHANGES)
        ),
        metadata=(*b.harness.metadata(), (MARKER, "somewhere")),
    ))  # fmt: skip

    assert failure.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.details() == (
        "No replica serves instance sales right now: its lease is moving to another replica"
    )
    assert error_info(_status(failure)).reason == "INSTANCE_UNOWNED"
    assert a.all_calls() == seen
    # The mark bypasses nothing: a marked call to the owner is admitted as any other.
    bad = await _failure(a.harness.stub.GetPrivacySettings(
        pb.GetPrivacySettingsRequest(instance="sales"), metadata=(("token", "x"), (MARKER, "b"))
    ))  # fmt: skip
    assert bad.code() == grpc.StatusCode.UNAUTHENTICATED
    await a.harness.stub.GetPrivacySettings(
        pb.GetPrivacySettingsRequest(instance="sales"),
        metadata=(*a.harness.metadata(), (MARKER, "b")),
    )


async def test_the_request_id_reaches_the_owner_unchanged(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    request_id = "6f1c1d0e-6a47-4d2b-9a59-1c1d8f4b7e21"
    first = await b.harness.stub.UpdatePrivacySettings(
        pb.UpdatePrivacySettingsRequest(
            instance="sales", settings=visibility(last_seen=3), request_id=request_id
        ),
        metadata=b.harness.metadata(),
    )
    retried = await a.harness.stub.UpdatePrivacySettings(
        pb.UpdatePrivacySettingsRequest(
            instance="sales", settings=visibility(last_seen=3), request_id=request_id
        ),
        metadata=a.harness.metadata(),
    )

    assert retried.operation_id == first.operation_id
    assert a.harness.session("sales").stanzas == 2  # one fetch, one stanza: not sent twice


async def test_a_watch_is_relayed_and_ends_cleanly_at_shutdown(pair: dict[str, Replica]) -> None:
    a, b = pair["a"], pair["b"]
    call = b.harness.stub.WatchPrivacySettings(
        pb.WatchPrivacySettingsRequest(instance="sales"), metadata=b.harness.metadata()
    )
    messages = aiter(call)
    initial = await anext(messages)
    assert list(initial.changed) == []
    a.harness.session("sales").change_on_phone(Field.LAST_SEEN, "none")
    change = await asyncio.wait_for(anext(messages), 5)
    assert len(change.changed) == 1

    started = time.monotonic()
    await b.server.stop(5)

    assert await call.code() == grpc.StatusCode.OK
    assert time.monotonic() - started < 2  # ended at once, not at the end of the grace
