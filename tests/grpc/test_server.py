"""The server beside the gateway's own service: reflection, health, and health during shutdown.

Reflection lets a tool (grpcurl, Postman) discover and call the gateway with no .proto at hand;
health answers probes without a token and turns NOT_SERVING as soon as a shutdown begins, so a
load balancer stops sending calls while in-flight ones finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from tests.helpers.harness import Harness, visibility

PRIVACY_SERVICE = "wagateway.privacy.v1.PrivacyService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextmanager
def reflection_pool(address: str) -> Iterator[tuple[ProtoReflectionDescriptorDatabase, Any]]:
    """A descriptor database fed only by the server's reflection, and a fresh pool over it."""
    channel = grpc.insecure_channel(address)
    try:
        database = ProtoReflectionDescriptorDatabase(channel)
        yield database, descriptor_pool.DescriptorPool(database)
    finally:
        channel.close()


def health_stub(harness: Harness) -> Any:
    # The published stubs for grpc_health leave HealthStub's methods out.
    stub: Any = health_pb2_grpc.HealthStub(harness.channel)
    return stub


async def health_status(harness: Harness, service: str) -> int:
    """The status health reports for ``service``, asked with no token at all."""
    response = await health_stub(harness).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    status: int = response.status
    return status


# -- reflection ---------------------------------------------------------------------------------


async def test_reflection_lists_the_gateway_health_and_reflection_services(
    gateway: Harness,
) -> None:
    def services() -> list[str]:
        with reflection_pool(gateway.address) as (database, _):
            return list(database.get_services())

    listed = await asyncio.wait_for(asyncio.to_thread(services), timeout=10)

    instance_service = "wagateway.privacy.v1.InstanceService"
    assert {PRIVACY_SERVICE, instance_service, HEALTH_SERVICE, REFLECTION_SERVICE} <= set(listed)


async def test_reflection_describes_the_privacy_service(gateway: Harness) -> None:
    def describe() -> dict[str, tuple[str, str, bool, bool]]:
        with reflection_pool(gateway.address) as (_, pool):
            assert pool is not descriptor_pool.Default()
            service = pool.FindServiceByName(PRIVACY_SERVICE)
            return {
                method.name: (
                    method.input_type.full_name,
                    method.output_type.full_name,
                    method.client_streaming,
                    method.server_streaming,
                )
                for method in service.methods
            }

    methods = await asyncio.wait_for(asyncio.to_thread(describe), timeout=10)

    package = "wagateway.privacy.v1"
    assert methods == {
        "GetPrivacySettings": (
            f"{package}.GetPrivacySettingsRequest",
            f"{package}.GetPrivacySettingsResponse",
            False,
            False,
        ),
        "UpdatePrivacySettings": (
            f"{package}.UpdatePrivacySettingsRequest",
            f"{package}.UpdatePrivacySettingsResponse",
            False,
            False,
        ),
        "StreamUpdatePrivacySettings": (
            f"{package}.StreamUpdatePrivacySettingsRequest",
            f"{package}.StreamUpdatePrivacySettingsResponse",
            False,
            True,
        ),
        "GetUpdateOperation": (
            f"{package}.GetUpdateOperationRequest",
            f"{package}.GetUpdateOperationResponse",
            False,
            False,
        ),
        "ListUpdateOperations": (
            f"{package}.ListUpdateOperationsRequest",
            f"{package}.ListUpdateOperationsResponse",
            False,
            False,
        ),
        "WatchPrivacySettings": (
            f"{package}.WatchPrivacySettingsRequest",
            f"{package}.WatchPrivacySettingsResponse",
            False,
            True,
        ),
    }


async def test_reflection_resolves_the_visibility_enum(gateway: Harness) -> None:
    def values() -> list[tuple[str, int]]:
        with reflection_pool(gateway.address) as (_, pool):
            enum = pool.FindEnumTypeByName("wagateway.privacy.v1.VisibilityValue")
            return [(value.name, value.number) for value in enum.values]

    resolved = await asyncio.wait_for(asyncio.to_thread(values), timeout=10)

    assert resolved == [
        ("VISIBILITY_VALUE_UNSPECIFIED", 0),
        ("VISIBILITY_VALUE_ALL", 1),
        ("VISIBILITY_VALUE_CONTACTS", 2),
        ("VISIBILITY_VALUE_CONTACT_BLACKLIST", 3),
        ("VISIBILITY_VALUE_NONE", 4),
    ]


async def test_reflection_serves_the_same_descriptors_the_gateway_was_built_from(
    gateway: Harness,
) -> None:
    def served_file() -> bytes:
        with reflection_pool(gateway.address) as (database, _):
            proto = database.FindFileContainingSymbol(PRIVACY_SERVICE)
            serialized: bytes = proto.SerializeToString()
            return serialized

    served = await asyncio.wait_for(asyncio.to_thread(served_file), timeout=10)

    assert served == pb.DESCRIPTOR.serialized_pb


# -- health -------------------------------------------------------------------------------------


async def test_health_is_serving_for_the_server_and_the_gateway_without_a_token(
    gateway: Harness,
) -> None:
    assert await health_status(gateway, "") == SERVING
    assert await health_status(gateway, PRIVACY_SERVICE) == SERVING


async def test_health_does_not_know_other_services(gateway: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health_status(gateway, "wagateway.privacy.v1.NoSuchService")

    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_turns_not_serving_when_graceful_shutdown_begins(gateway: Harness) -> None:
    await gateway.server.health.enter_graceful_shutdown()

    assert await health_status(gateway, "") == NOT_SERVING
    assert await health_status(gateway, PRIVACY_SERVICE) == NOT_SERVING


async def test_stopping_the_server_tells_a_watching_probe_not_serving_at_once(
    gateway: Harness,
) -> None:
    watch = health_stub(gateway).Watch(
        health_pb2.HealthCheckRequest(service=PRIVACY_SERVICE), timeout=15
    )
    # A slow update keeps a call in flight, so the server stays in its grace period.
    gateway.session().latency = 1.0
    update = gateway.stream(visibility(last_seen=spb.VISIBILITY_VALUE_NONE))
    first = await asyncio.wait_for(watch.read(), timeout=5)
    assert first.status == SERVING
    await asyncio.wait_for(update.read(), timeout=5)  # the plan: the update is under way

    stopping = asyncio.create_task(gateway.server.stop(grace=10))
    try:
        during = await asyncio.wait_for(watch.read(), timeout=5)
        assert during.status == NOT_SERVING
        assert not stopping.done(), "the in-flight update holds the grace period open"
    finally:
        watch.cancel()
        update.cancel()
        await asyncio.wait_for(stopping, timeout=15)
