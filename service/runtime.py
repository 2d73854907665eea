"""Runs the gateway: gRPC and REST in one event loop, until SIGTERM or SIGINT.

Shutdown drains rather than drops: health turns NOT_SERVING, watch streams end cleanly, both
servers stop taking calls and give in-flight ones the grace period, and only then are the
WhatsApp sessions disconnected.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from service.gateway import Gateway
from service.grpc.server import RunningServer, bind_server
from service.http.metrics import MetricsServer
from service.http.server import HttpServer

log = logging.getLogger(__name__)


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
    metrics_address: str | None = None,
) -> None:
    """``metrics_address``: ``/metrics`` on a port of its own; None: on the REST port."""
    # gRPC serves only once REST (and metrics) are bound too, and the journal and the sessions
    # start only after them all: a port that is taken (ListenError) leaves nothing running.
    grpc_server: RunningServer = bind_server(gateway, grpc_address)
    http_server: HttpServer | None = None
    metrics_server: MetricsServer | None = None
    try:
        if http_address:
            http_server = HttpServer(
                gateway, shutdown_timeout=grace, metrics=metrics_address is None
            )
            await http_server.start(http_address)
        if metrics_address:
            metrics_server = MetricsServer(gateway.metrics)
            await metrics_server.start(metrics_address)
    except BaseException:
        if http_server is not None and http_server.port:
            await http_server.stop()
        await grpc_server.stop(None)
        raise
    await grpc_server.start()
    await gateway.start()
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
    log.info("shutting down: in-flight calls have %.1f s to finish", grace)
    await asyncio.gather(grpc_server.stop(grace), *([http_server.stop()] if http_server else []))
    await gateway.close()
    if metrics_server is not None:
        await metrics_server.stop()
    log.info("stopped")
