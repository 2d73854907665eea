"""Assembles the gRPC server: the gateway's services, health, reflection, and graceful shutdown."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.cluster.forwarding.grpc import GrpcForwarder
from service.gateway import Gateway
from service.grpc.instance_servicer import InstanceServicer
from service.grpc.interceptors import GuardInterceptor
from service.grpc.privacy_servicer import PrivacyServicer
from service.limits import TransportLimits
from service.listen import bind_error, listen_error
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.tls import ServerTls

log = logging.getLogger(__name__)

#: grpc turns ``SO_REUSEPORT`` on by default, which lets a second server bind the same port and
#: have the kernel split new connections between the two: a second gateway would start without
#: a word and take calls for instances whose WhatsApp sessions the first one holds.
EXCLUSIVE_PORT = ("grpc.so_reuseport", 0)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["PrivacyService"].full_name,
    instance_pb.DESCRIPTOR.services_by_name["InstanceService"].full_name,
)


@dataclass
class RunningServer:
    """The gateway's gRPC server: its port bound (``bind_server``), serving once started."""

    server: aio.Server
    port: int
    health: health.aio.HealthServicer
    privacy: PrivacyServicer
    #: How calls reach their owners (None: one process); closed on ``stop`` if ``bind_server``
    #: made it itself (``owns_forwarder``).
    forwarder: GrpcForwarder | None = None
    owns_forwarder: bool = False

    async def start(self) -> None:
        """Starts taking calls on the port ``bind_server`` bound, and reports SERVING."""
        await self.server.start()
        for name in (*SERVICE_NAMES, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def serving(self, serving: bool) -> None:
        """Reports SERVING or NOT_SERVING (a replica cut off from its database)."""
        status = health_pb2.HealthCheckResponse
        for name in (*SERVICE_NAMES, ""):
            await self.health.set(name, status.SERVING if serving else status.NOT_SERVING)

    async def stop(self, grace: float | None) -> None:
        """Stops taking calls; in-flight calls may run for ``grace`` seconds more.

        Watch streams never end on their own, so they are ended first, cleanly, rather than
        holding shutdown for the whole grace period.
        """
        await self.health.enter_graceful_shutdown()
        self.privacy.end_watches()
        if self.forwarder is not None:
            self.forwarder.end_watches()
        await self.server.stop(grace)
        if self.forwarder is not None and self.owns_forwarder:
            await self.forwarder.close()


async def start_server(
    gateway: Gateway,
    address: str,
    tls: ServerTls | None = None,
    *,
    forwarder: GrpcForwarder | None = None,
) -> RunningServer:
    """Binds ``address`` (port 0 picks a free one) and starts serving."""
    server = bind_server(gateway, address, tls, forwarder=forwarder)
    await server.start()
    return server


def bind_server(
    gateway: Gateway,
    address: str,
    tls: ServerTls | None = None,
    *,
    forwarder: GrpcForwarder | None = None,
) -> RunningServer:
    """The server, its port bound but not yet serving: ``start`` it once the rest is bound too.

    With ``tls`` the port speaks TLS only (and, with a client CA, takes only callers whose
    certificate it signed). Raises ``ListenError`` (one line, naming the port) when ``address``
    is taken.

    A gateway with ``ownership`` relays other replicas' instances' calls through ``forwarder``;
    without one it makes its own (plaintext channels to the peers), closed when it stops.
    """
    owns_forwarder = gateway.ownership is not None and forwarder is None
    if gateway.ownership is not None and forwarder is None:
        forwarder = GrpcForwarder(gateway.ownership.replica_id, mark=gateway.mark)
    server = aio.server(
        interceptors=[GuardInterceptor(gateway, forwarder)],
        options=[EXCLUSIVE_PORT, *grpc_options(gateway.limits)],
    )
    privacy = PrivacyServicer(gateway)
    pb_grpc.add_PrivacyServiceServicer_to_server(privacy, server)
    instances = InstanceServicer(gateway, forwarder)
    instance_grpc.add_InstanceServiceServicer_to_server(instances, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    credentials = None if tls is None else server_credentials(tls)
    port = _add_port(server, address, credentials)
    return RunningServer(server, port, health_servicer, privacy, forwarder, owns_forwarder)


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """grpc's TLS for the port: a client certificate is required exactly when there is a CA."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.mutual,
    )


def grpc_options(limits: TransportLimits) -> list[tuple[str, int]]:
    """The configuration's limits as grpc's server options (``service.config`` says each one).

    - ``grpc.max_receive_message_length``: a larger request message is refused by grpc itself,
      RESOURCE_EXHAUSTED "Received message larger than max", before the gateway sees it.
    - ``grpc.server.max_pending_requests`` and its ``_hard_limit``: how many calls grpc holds
      that have arrived but that the gateway's loop has not yet picked up (grpc's aio server asks
      core for one call per method at a time, so a burst waits there). grpc's defaults, 1,000 and
      3,000 (``pending_backlog_protector_``, a RandomEarlyDetection, in grpc's
      src/core/server/server.h), drop calls at random past 1,000 and all past 3,000, and a
      dropped call ends CANCELLED, which its caller cannot tell from its own cancel (3,000 calls
      at once: about 700 CANCELLED). With both at ``max_pending_calls`` the burst reaches the
      gateway, whose ``max_concurrent_calls`` answers the excess at once with TOO_MANY_CALLS and
      a retry hint, so the queue drains as fast as it fills.
    - keepalive enforcement: ``grpc.http2.min_ping_interval_without_data_ms``,
      ``grpc.keepalive_permit_without_calls`` and ``grpc.http2.max_ping_strikes``; a client that
      pings more often than allowed is sent GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings") after
      that many strikes.
    """
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.server.max_pending_requests", limits.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", limits.max_pending_calls),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            round(limits.keepalive_min_ping_interval_seconds * 1000),
        ),
        ("grpc.keepalive_permit_without_calls", int(limits.keepalive_permit_without_calls)),
        ("grpc.http2.max_ping_strikes", limits.keepalive_max_ping_strikes),
    ]


def _add_port(server: aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Binds ``address``; a failure is a ``ListenError`` instead of grpc's own report.

    grpc's core writes a failed bind to the process's stderr itself, as a log line of its own,
    before raising a ``RuntimeError`` that says only "Failed to bind": the line is held back, so
    that the error an operator sees is the gateway's single line, and kept in the debug log.
    """
    with _stderr_held() as held:
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError:
            port = 0
    if port == 0:
        log.debug("grpc could not bind %s: %s", address, held.decode(errors="replace").strip())
        raise listen_error("gRPC", address, "--listen", bind_error(address))
    if held:
        os.write(2, held)
    return port


@contextlib.contextmanager
def _stderr_held() -> Iterator[bytearray]:
    """Sends what is written to file descriptor 2 (C code's writes too) aside meanwhile.

    Once the block ends, the yielded buffer holds what was written, for the caller to show or not.
    """
    sys.stderr.flush()
    held = bytearray()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as aside:
        os.dup2(aside.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            aside.seek(0)
            held += aside.read()
