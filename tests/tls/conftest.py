"""The tls area's fixtures: certificates made for the test, gateways serving TLS (in the test's
event loop, or as ``privacy-gateway serve`` processes), each stopped at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.assembly import build_gateway
from service.config import from_mapping, server_tls
from service.grpc.server import start_server
from service.http.server import HttpServer
from tests.helpers.certificates import Pki
from tests.helpers.harness import gateway_config
from tests.helpers.processes import StartServe, started_gateways, stripped_env
from tests.helpers.tls_gateway import ServeTls, TlsGateway


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """CAs and certificates made now, under the test's directory (no key is ever committed)."""
    return Pki.make(tmp_path / "pki")


@pytest.fixture
async def serve_tls(tmp_path: Path, pki: Pki) -> AsyncIterator[ServeTls]:
    """Starts the ``gateway`` fixture's instances behind gRPC and REST over TLS, on free
    loopback ports: ``await serve_tls(mutual=True)`` requires client certificates signed by
    ``pki.client_ca``."""
    started: list[TlsGateway] = []

    async def serve(*, mutual: bool) -> TlsGateway:
        keys = {
            "tls_cert_file": str(pki.server.cert_file),
            "tls_key_file": str(pki.server.key_file),
        }
        if mutual:
            keys["tls_client_ca_file"] = str(pki.client_ca.cert_file)
        data_dir = str(tmp_path / f"gateway-{len(started)}")
        config = from_mapping(gateway_config(data_dir=data_dir, **keys), env={})
        tls = server_tls(config)
        assert tls is not None
        gateway = build_gateway(config)
        await gateway.start()
        grpc_server = await start_server(gateway, "127.0.0.1:0", tls)
        http_server = HttpServer(gateway, ssl_context=tls.ssl_context)
        await http_server.start("127.0.0.1:0")
        started.append(TlsGateway(gateway, grpc_server, http_server, tls, pki))
        return started[-1]

    yield serve
    for served in started:
        await served.http_server.stop()
        await served.grpc_server.stop(None)
        await served.gateway.close()


@pytest.fixture
async def tls_gateway(serve_tls: ServeTls) -> TlsGateway:
    """TLS on both edges; any caller that trusts ``pki.server_ca``."""
    return await serve_tls(mutual=False)


@pytest.fixture
async def mtls_gateway(serve_tls: ServeTls) -> TlsGateway:
    """Mutual TLS on both edges: callers present a certificate ``pki.client_ca`` signed."""
    return await serve_tls(mutual=True)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of the CLI processes: none of the developer's ``PRIVACY_GATEWAY_*``, REST
    on a free port and the journal in a fresh directory."""
    env = stripped_env()
    env["PRIVACY_GATEWAY_HTTP_LISTEN"] = "127.0.0.1:0"
    env["PRIVACY_GATEWAY_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[StartServe]:
    """Starts ``privacy-gateway serve ARGS`` and returns once it printed its gRPC address."""
    with started_gateways(tmp_path) as start:
        yield start
