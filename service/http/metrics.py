"""``/metrics`` on a port of its own (``metrics_listen``), for operators who keep the Prometheus
scrape off the REST port (``service.http.app`` serves it there otherwise).

Unauthenticated, as scrapers call it; it shows counts, and no instance's name.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from service.http.app import METRICS_PATH
from service.listen import host_and_port, listen_error
from service.observability import Metrics


class MetricsServer:
    """``/metrics`` alone on ``host:port``, in the running event loop."""

    def __init__(self, metrics: Metrics) -> None:
        app = web.Application()
        app.router.add_get(METRICS_PATH, make_aiohttp_handler(metrics.registry))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self.port = 0

    async def start(self, address: str) -> None:
        """Binds ``address`` (port 0 picks a free one); ``ListenError`` if it is taken."""
        host, port = host_and_port(address)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise listen_error("metrics", address, "metrics_listen", exc) from exc
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()
