"""Assembles the gRPC server: the gateway's services, health, reflection, and graceful shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.gateway import Gateway
from service.grpc.instance_servicer import InstanceServicer
from service.grpc.interceptors import GuardInterceptor
from service.grpc.privacy_servicer import PrivacyServicer
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["PrivacyService"].full_name,
    instance_pb.DESCRIPTOR.services_by_name["InstanceService"].full_name,
)


@dataclass
class RunningServer:
    server: aio.Server
    port: int
    health: health.aio.HealthServicer
    privacy: PrivacyServicer

    async def stop(self, grace: float | None) -> None:
        """Stops taking calls; in-flight calls may run for ``grace`` seconds more.

        Watch streams never end on their own, so they are ended first, cleanly, rather than
        holding shutdown for the whole grace period.
        """
        await self.health.enter_graceful_shutdown()
        self.privacy.end_watches()
        await self.server.stop(grace)


async def start_server(gateway: Gateway, address: str) -> RunningServer:
    """Binds ``address`` (port 0 picks a free one) and starts serving."""
    server = aio.server(interceptors=[GuardInterceptor(gateway.tokens, gateway.limiter)])
    privacy = PrivacyServicer(gateway)
    pb_grpc.add_PrivacyServiceServicer_to_server(privacy, server)
    instance_grpc.add_InstanceServiceServicer_to_server(InstanceServicer(gateway.instances), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in (*SERVICE_NAMES, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, privacy)
