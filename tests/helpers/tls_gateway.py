"""What the TLS tests (``tests/tls``) share with their fixtures: a gateway serving gRPC and REST
over TLS in the test's event loop, the callers of each edge, and the configuration file that
``privacy-gateway serve`` reads in the CLI tests.
"""

from __future__ import annotations

import json
import ssl
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from grpc import aio

from service.auth import hash_token
from service.gateway import Gateway
from service.grpc.server import RunningServer
from service.http.server import HttpServer
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.tls import ServerTls
from tests.helpers.certificates import Issued, Pki
from tests.helpers.harness import ACME_TOKEN
from tests.helpers.processes import TIMEOUT

#: The token of the ``demo`` account in ``write_config``'s file.
CLI_TOKEN = "tls-test-token"
REST_PATH = "/api/profile/privacy/sales"


@dataclass
class TlsGateway:
    """A gateway serving TLS on both edges (mutual TLS with ``mutual``), and its PKI."""

    gateway: Gateway
    grpc_server: RunningServer
    http_server: HttpServer
    tls: ServerTls
    pki: Pki

    @property
    def mutual(self) -> bool:
        return self.tls.mutual

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_server.port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.http_server.port}"


ServeTls = Callable[..., Awaitable[TlsGateway]]


def channel_credentials(ca: Path, client: Issued | None = None) -> grpc.ChannelCredentials:
    """Trust ``ca``; present ``client``'s certificate, if given."""
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )


async def grpc_get(address: str, credentials: grpc.ChannelCredentials | None) -> None:
    """``GetPrivacySettings`` of ``sales``, over TLS with ``credentials`` or plaintext without;
    raises ``grpc.aio.AioRpcError`` when the call fails."""
    channel = (
        aio.insecure_channel(address)
        if credentials is None
        else aio.secure_channel(address, credentials)
    )
    async with channel:
        stub = pb_grpc.PrivacyServiceStub(channel)
        response = await stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance="sales"),
            metadata=(("token", ACME_TOKEN),),
            timeout=TIMEOUT,
        )
        assert response.settings is not None


def client_context(ca: Path, client: Issued | None = None) -> ssl.SSLContext:
    """An HTTPS client's: trust ``ca`` (checking the host name), present ``client``, if given."""
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


async def rest_get(url: str, context: ssl.SSLContext | None) -> int:
    """The status of a GET of ``sales``'s settings at ``url``, with ``context`` for
    ``https://``; raises ``aiohttp.ClientError`` when no answer comes."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(
            url + REST_PATH, headers={"token": ACME_TOKEN}, ssl=True if context is None else context
        ) as response,
    ):
        await response.read()
        return response.status


def write_config(directory: Path, pki: Pki, *, mutual: bool, **files: str) -> Path:
    """A configuration file serving the ``demo`` instance over TLS (mutual TLS with ``mutual``);
    ``files`` replaces any of the ``tls_*`` keys (an empty string leaves the key out)."""
    keys = {
        "tls_cert_file": str(pki.server.cert_file),
        "tls_key_file": str(pki.server.key_file),
    }
    if mutual:
        keys["tls_client_ca_file"] = str(pki.client_ca.cert_file)
    keys.update(files)
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in keys.items() if value)
    path = directory / "gateway.toml"
    path.write_text(
        'listen = "127.0.0.1:0"\n'
        f"{lines}\n"
        + textwrap.dedent(f"""
            [[accounts]]
            name = "demo"
            token_sha256 = "{hash_token(CLI_TOKEN)}"

            [[instances]]
            name = "demo"
            account = "demo"
            """)
    )
    return path
