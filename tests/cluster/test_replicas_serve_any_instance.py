"""Any replica serves any instance: calls to a replica that does not own the instance are
forwarded to the one that does (real processes, gRPC and REST), with the same events and errors
as a call to the owner; the journal reads the same from every replica; a retry with the same
request id after the owner died mid-update is safe."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import aiohttp
import grpc
import pytest
from grpc import aio
from grpc_status import rpc_status

from service.grpc.convert import settings_to_proto
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import DEFAULT_SETTINGS
from service.sessions.simulator.server import SimulatorServer
from service.settings import Field
from tests.helpers.in_process_replicas import ndjson, timeless, timeless_line, timeless_status
from tests.helpers.replicas import INSTANCES, METADATA, TOKEN, TTL_SECONDS, Replica, ReplicaSet
from tests.helpers.rich_status import error_info
from tests.helpers.updates import EVERY_FIELD_CHANGED

EVERY_FIELD = settings_to_proto(EVERY_FIELD_CHANGED)
REST_BODY = b'{"visibility": {"lastSeen": "none"}, "privacy": {"readReceipts": "none"}}'


async def two_replicas(replicas: ReplicaSet) -> tuple[Replica, Replica]:
    """``a`` owning every instance, ``b`` owning none (it has not settled)."""
    a = await replicas.start("a")
    b = await replicas.start("b")
    assert await replicas.owners() == dict.fromkeys(INSTANCES, "a")
    return a, b


async def reset(whatsapp: SimulatorServer, replica: Replica, instance: str) -> None:
    """The account back to WhatsApp's defaults, changed on the phone, and seen by the gateway."""
    for field, value in DEFAULT_SETTINGS.items():
        whatsapp.change_on_phone(instance, field, value)
    expected = settings_to_proto(DEFAULT_SETTINGS)
    for _ in range(200):
        got = await replica.privacy.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=instance), metadata=METADATA, timeout=5
        )
        if got.settings == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the phone's change did not reach the gateway")


async def streamed(replica: Replica, instance: str) -> list[bytes]:
    call = replica.privacy.StreamUpdatePrivacySettings(
        pb.StreamUpdatePrivacySettingsRequest(instance=instance, settings=EVERY_FIELD),
        metadata=METADATA,
        timeout=10,
    )
    return [timeless(message) async for message in call]


async def test_a_streamed_update_through_a_non_owner_is_the_owners_stream(
    replicas: ReplicaSet, whatsapp: SimulatorServer
) -> None:
    a, b = await two_replicas(replicas)
    instance = INSTANCES[0]
    await reset(whatsapp, a, instance)

    direct = await streamed(a, instance)
    await reset(whatsapp, a, instance)
    forwarded = await streamed(b, instance)

    assert len(direct) == 2 + 2 * len(EVERY_FIELD_CHANGED)  # plan, started/applied each, end
    assert forwarded == direct
    assert {s.client for s in whatsapp.stanzas_of(instance)} == {"a"}  # b sent nothing


async def test_a_failed_update_through_a_non_owner_fails_as_on_the_owner(
    replicas: ReplicaSet, whatsapp: SimulatorServer
) -> None:
    a, b = await two_replicas(replicas)
    instance = INSTANCES[1]
    whatsapp.fail_field(instance, Field.LAST_SEEN, "info query returned status 500: internal")
    request = pb.UpdatePrivacySettingsRequest(instance=instance, settings=EVERY_FIELD)

    errors = []
    for replica in (a, b):
        with pytest.raises(aio.AioRpcError) as failed:
            await replica.privacy.UpdatePrivacySettings(request, metadata=METADATA, timeout=10)
        errors.append(failed.value)
        whatsapp.clear_faults(instance)
        await reset(whatsapp, a, instance)
        whatsapp.fail_field(instance, Field.LAST_SEEN, "info query returned status 500: internal")

    direct, forwarded = errors
    assert forwarded.code() == direct.code()
    assert forwarded.details() == direct.details()
    direct_status = rpc_status.from_call(direct)
    forwarded_status = rpc_status.from_call(forwarded)
    assert direct_status is not None
    assert forwarded_status is not None
    assert timeless_status(forwarded_status) == timeless_status(direct_status)


async def test_rest_through_a_non_owner_is_the_owners_rest(
    replicas: ReplicaSet, whatsapp: SimulatorServer
) -> None:
    a, b = await two_replicas(replicas)
    instance = INSTANCES[2]
    async with aiohttp.ClientSession() as client:
        await reset(whatsapp, a, instance)
        path = f"/api/profile/privacy/{instance}"
        direct = await ndjson(client, a.http + path, REST_BODY, TOKEN)
        await reset(whatsapp, a, instance)
        forwarded = await ndjson(client, b.http + path, REST_BODY, TOKEN)
        async with client.get(b.http + path) as refused:
            body = await refused.json()  # no token: answered by b itself, in the envelope

    assert [timeless_line(line) for line in forwarded] == [timeless_line(x) for x in direct]
    assert refused.status == 401
    assert body["success"] is False


async def test_the_journal_reads_the_same_from_every_replica(replicas: ReplicaSet) -> None:
    a, b = await two_replicas(replicas)
    instance = INSTANCES[3]
    request_id = str(uuid.uuid4())
    done = await b.privacy.UpdatePrivacySettings(
        pb.UpdatePrivacySettingsRequest(
            instance=instance, settings=EVERY_FIELD, request_id=request_id
        ),
        metadata=METADATA,
        timeout=10,
    )

    read = [
        await r.privacy.GetUpdateOperation(
            pb.GetUpdateOperationRequest(instance=instance, operation_id=done.operation_id),
            metadata=METADATA,
            timeout=5,
        )
        for r in (a, b)
    ]
    listed = [
        await r.privacy.ListUpdateOperations(
            pb.ListUpdateOperationsRequest(instance=instance), metadata=METADATA, timeout=5
        )
        for r in (a, b)
    ]

    assert read[0] == read[1]
    assert read[0].operation.request_id == request_id
    assert read[0].operation.state == pb.OPERATION_STATE_COMPLETED
    assert listed[0] == listed[1]
    assert [o.id for o in listed[0].operations] == [done.operation_id]


async def kill_after_two_fields(
    call: aio.UnaryStreamCall[
        pb.StreamUpdatePrivacySettingsRequest, pb.StreamUpdatePrivacySettingsResponse
    ],
    owner: Replica,
) -> None:
    """Follows ``call`` and kills ``owner`` once two fields are applied (the third stanza due)."""
    applied = 0
    async for message in call:
        if message.HasField("field") and message.field.state == pb.FIELD_STATE_APPLIED:
            applied += 1
            if applied == 2:
                owner.signal(signal.SIGKILL)


async def test_a_retry_after_the_owner_died_mid_update_is_safe(
    replicas: ReplicaSet, whatsapp: SimulatorServer
) -> None:
    a, b = await two_replicas(replicas)
    instance = INSTANCES[4]
    whatsapp.set_latency(0.3, instance)
    request = pb.StreamUpdatePrivacySettingsRequest(
        instance=instance, settings=EVERY_FIELD, request_id=str(uuid.uuid4())
    )
    call = b.privacy.StreamUpdatePrivacySettings(request, metadata=METADATA, timeout=30)
    with pytest.raises(aio.AioRpcError) as cut:
        await kill_after_two_fields(call, a)
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(rpc_status.from_call(cut.value)).reason == "OWNER_UNREACHABLE"  # type: ignore[arg-type]
    sent_before = len([s for s in whatsapp.stanzas_of(instance) if s.kind == "set"])

    # Once b has taken the lease, the same request again: nothing is sent twice; the journal
    # says what the dead owner applied (it was marked INTERRUPTED when b took over).
    deadline = time.monotonic() + TTL_SECONDS + 5
    while True:
        retry = b.privacy.StreamUpdatePrivacySettings(request, metadata=METADATA, timeout=10)
        try:
            messages = [m async for m in retry]
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                reason = error_info(rpc_status.from_call(error)).reason  # type: ignore[arg-type]
                if reason in ("INSTANCE_UNOWNED", "OWNER_UNREACHABLE", "INSTANCE_NOT_CONNECTED"):
                    await asyncio.sleep(0.1)
                    continue
            final = error
            break
        else:
            raise AssertionError(f"the retry ran the update again: {messages}")
    assert error_info(rpc_status.from_call(final)).reason == "INTERRUPTED"  # type: ignore[arg-type]
    sets = [s for s in whatsapp.stanzas_of(instance) if s.kind == "set"]
    assert len(sets) == sent_before, "the retry sent a stanza"
    assert {s.client for s in sets} == {"a"}
    record = (
        await b.privacy.ListUpdateOperations(
            pb.ListUpdateOperationsRequest(instance=instance), metadata=METADATA, timeout=5
        )
    ).operations[0]
    assert record.state == pb.OPERATION_STATE_INTERRUPTED
    live = [f.field for f in record.fields if f.state == pb.FIELD_STATE_APPLIED]
    assert len(live) >= 2
    held = whatsapp.settings(instance)
    assert sum(held[f] != DEFAULT_SETTINGS[f] for f in Field) == len(sets)
