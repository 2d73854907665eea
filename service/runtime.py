"""Runs the gateway: gRPC and REST in one event loop, until SIGTERM or SIGINT.

Start-up opens the journal before any port is bound, so a journal that cannot be used stops
the gateway with one line and nothing listening. Shutdown drains rather than drops: health turns
NOT_SERVING, watch streams end cleanly, both servers stop taking calls and give in-flight ones
the grace period; an update still running shortly before the grace ends is halted as the
gateway's own doing (SHUTTING_DOWN, journaled as such), so its caller still hears what was
applied before the servers cut the call; only then are the WhatsApp sessions disconnected.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.engine import SHUTTING_DOWN
from service.gateway import Gateway
from service.grpc.server import RunningServer, bind_server
from service.http.metrics import MetricsServer
from service.http.server import HttpServer
from service.tls import ServerTls

log = logging.getLogger(__name__)

#: How long before the grace period ends running updates are halted: the stanza in flight then
#: has this long to finish, so that its caller hears the outcome before the call is cut.
HALT_BEFORE_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class Endpoints:
    """Where the gateway ended up listening (port 0 in the configuration picks a free one)."""

    grpc_port: int
    http_port: int | None
    #: ``/metrics``'s own port (``metrics_listen``); None when it is on the REST port or off.
    metrics_port: int | None = None


async def serve_until_signalled(
    gateway: Gateway,
    grpc_address: str,
    http_address: str | None,
    grace: float,
    on_ready: Callable[[Endpoints], None] | None = None,
    *,
    tls: ServerTls | None = None,
    metrics_address: str | None = None,
) -> None:
    """``metrics_address``: ``/metrics`` on a port of its own; None: on the REST port."""
    # The journal first (JournalError: nothing is bound), then the ports; gRPC serves only once
    # REST (and metrics) are bound too, and the sessions start only after them all: a port that
    # is taken (ListenError) leaves nothing running behind it.
    await gateway.open()
    grpc_server: RunningServer | None = None
    http_server: HttpServer | None = None
    metrics_server: MetricsServer | None = None
    try:
        grpc_server = bind_server(gateway, grpc_address, tls)
        if http_address:
            ssl_context = tls.ssl_context if tls is not None else None
            http_server = HttpServer(
                gateway,
                shutdown_timeout=grace,
                ssl_context=ssl_context,
                metrics=metrics_address is None,
            )
            await http_server.start(http_address)
        if metrics_address:
            metrics_server = MetricsServer(gateway.metrics)
            await metrics_server.start(metrics_address)
    except BaseException:
        if http_server is not None and http_server.port:
            await http_server.stop()
        if grpc_server is not None:
            await grpc_server.stop(None)
        await gateway.close()
        raise
    await grpc_server.start()
    await gateway.start_sessions()
    following = asyncio.create_task(_follow_health(gateway, grpc_server), name="health")
    await gateway.join(
        _bound(grpc_address, grpc_server.port),
        _bound(http_address, http_server.port) if http_address and http_server else None,
    )
    # What is alive once started (modules, descriptors, the configuration, the instances) lives
    # as long as the process: frozen, the collector stops walking it on every collection.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if on_ready is not None:
        on_ready(
            Endpoints(
                grpc_server.port,
                http_server.port if http_server else None,
                metrics_server.port if metrics_server else None,
            )
        )
    await stop.wait()
    following.cancel()
    log.info("shutting down: in-flight calls have %.1f s to finish", grace)
    stopping = asyncio.gather(
        grpc_server.stop(grace), *([http_server.stop()] if http_server else [])
    )
    await _halt_before_grace_ends(gateway, stopping, grace)
    await stopping
    await gateway.close()
    if metrics_server is not None:
        await metrics_server.stop()
    log.info("stopped")


#: How often a replica's gRPC health is brought in line with whether it reaches its database.
HEALTH_SECONDS = 0.5


async def _follow_health(gateway: Gateway, server: RunningServer) -> None:
    """gRPC health follows ``gateway.healthy()`` (a replica cut off from its database reports
    NOT_SERVING, so that a load balancer sends its calls elsewhere); nothing for one process."""
    if gateway.cluster is None:
        return
    serving = True
    while True:
        await asyncio.sleep(HEALTH_SECONDS)
        if gateway.healthy() != serving:
            serving = not serving
            log.warning("health: %s", "SERVING again" if serving else "NOT_SERVING (database)")
            await server.serving(serving)


def _bound(address: str, port: int | None) -> str:
    """``address`` with the port it was bound to (a configured port 0 picks one)."""
    host = address.rpartition(":")[0]
    return f"{host}:{port}"


async def _halt_before_grace_ends(
    gateway: Gateway, stopping: asyncio.Future[Any], grace: float
) -> None:
    """Halts the updates still running a little before ``grace`` ends (or at once for a grace
    too short to share), as the gateway's shutdown rather than as their callers' cancel."""
    margin = min(HALT_BEFORE_GRACE_SECONDS, grace / 2)
    try:
        await asyncio.wait_for(asyncio.shield(stopping), grace - margin)
    except TimeoutError:
        halted = gateway.operations.halt_running(SHUTTING_DOWN)
        if halted:
            log.warning("shutting down: %d update(s) halted before their end", halted)
