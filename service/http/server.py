"""Assembles the REST server: the contract's aiohttp app, its port, and graceful shutdown.

The REST counterpart of ``service.grpc.server``: the port is bound without ``SO_REUSEPORT``, so
that a second gateway cannot share it, and a port that cannot be bound is a one-line
``ListenError`` naming it and ``--http-listen``. Connections are handled by
``service.http.protocol``'s ``GatewayRunner``, so that what aiohttp's parser refuses (a header
with a control character, a request line or a header too long, Content-Length with
Transfer-Encoding...) is answered in the contract's envelope too, and logged without the
request's text.
"""

from __future__ import annotations

import ssl

from aiohttp import web

from service.cluster.forwarding.http import HttpForwarder
from service.config import DEFAULT_SHUTDOWN_GRACE_SECONDS
from service.gateway import Gateway
from service.http.app import create_app
from service.http.protocol import GatewayRunner, quiet_aiohttp_server_log, server_limits
from service.listen import host_and_port, listen_error


class HttpServer:
    """The REST surface on ``host:port``, in the running event loop."""

    def __init__(
        self,
        gateway: Gateway,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_GRACE_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
        *,
        metrics: bool = True,
        forwarder: HttpForwarder | None = None,
    ) -> None:
        """``ssl_context`` (``service.tls.ServerTls``'s) makes the port speak HTTPS only;
        ``metrics``: serve ``/metrics`` on this port too (off when it has one of its own);
        ``forwarder``: how a gateway with ``ownership`` reaches the other replicas' REST ports
        (by default a plain-HTTP one made here and closed on ``stop``)."""
        # ``handler_cancellation``: a client that hangs up cancels its handler, so that an update
        # it started stops as a gRPC caller's does (aiohttp lets handlers run on by default).
        quiet_aiohttp_server_log()
        self._runner: web.AppRunner = GatewayRunner(
            create_app(gateway, metrics=metrics, forwarder=forwarder),
            access_log=None,
            shutdown_timeout=shutdown_timeout,
            handler_cancellation=True,
            **server_limits(),
        )
        self._ssl_context = ssl_context
        self.port = 0

    async def start(self, address: str) -> None:
        """Binds ``address`` (port 0 picks a free one) and serves; ``ListenError`` if taken.

        ``reuse_port`` stays off, so that a second gateway cannot share the port (the kernel
        would split the connections between the two).
        """
        host, port = host_and_port(address)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, host, port, reuse_port=False, ssl_context=self._ssl_context
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise listen_error("REST", address, "--http-listen", exc) from exc
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()
