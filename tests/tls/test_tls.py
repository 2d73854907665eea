"""TLS on both edges: real servers on loopback, real channels and HTTPS clients.

With ``tls_cert_file`` and ``tls_key_file`` both ports speak TLS only: a caller that trusts the
CA that signed the gateway's certificate is served; a plaintext caller, or one that trusts
another CA, is not.
"""

from __future__ import annotations

import ssl

import aiohttp
import grpc
import pytest
from grpc import aio

from service.grpc.server import bind_server
from service.http.server import HttpServer
from service.listen import ListenError
from tests.helpers.tls_gateway import (
    TlsGateway,
    channel_credentials,
    client_context,
    grpc_get,
    rest_get,
)


async def test_grpc_with_the_right_ca_is_served(tls_gateway: TlsGateway) -> None:
    await grpc_get(tls_gateway.address, channel_credentials(tls_gateway.pki.server_ca.cert_file))


async def test_rest_with_the_right_ca_is_served(tls_gateway: TlsGateway) -> None:
    context = client_context(tls_gateway.pki.server_ca.cert_file)

    assert await rest_get(tls_gateway.https, context) == 200


async def test_the_server_certificate_is_checked_by_host_name_too(
    tls_gateway: TlsGateway,
) -> None:
    # The certificate names localhost as well as the loopback addresses.
    url = tls_gateway.https.replace("127.0.0.1", "localhost")

    assert await rest_get(url, client_context(tls_gateway.pki.server_ca.cert_file)) == 200


async def test_plaintext_grpc_to_the_tls_port_is_unavailable(tls_gateway: TlsGateway) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await grpc_get(tls_gateway.address, None)

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plain_http_to_the_tls_rest_port_gets_no_answer(tls_gateway: TlsGateway) -> None:
    plain = tls_gateway.https.replace("https://", "http://")

    with pytest.raises(aiohttp.ClientError):
        await rest_get(plain, None)


async def test_grpc_client_trusting_another_ca_fails_verification(
    tls_gateway: TlsGateway,
) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await grpc_get(tls_gateway.address, channel_credentials(tls_gateway.pki.other_ca.cert_file))

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in (info.value.details() or "")


async def test_rest_client_trusting_another_ca_fails_verification(
    tls_gateway: TlsGateway,
) -> None:
    context = client_context(tls_gateway.pki.other_ca.cert_file)

    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await rest_get(tls_gateway.https, context)


async def test_without_a_client_ca_no_client_certificate_is_asked_for(
    tls_gateway: TlsGateway,
) -> None:
    # TLS alone: a caller's certificate, from any CA, is neither needed nor checked.
    pki = tls_gateway.pki
    rogue = channel_credentials(pki.server_ca.cert_file, pki.rogue)

    await grpc_get(tls_gateway.address, rogue)
    context = client_context(pki.server_ca.cert_file, pki.rogue)
    assert await rest_get(tls_gateway.https, context) == 200


async def test_rest_takes_tls_1_2_and_nothing_older(tls_gateway: TlsGateway) -> None:
    context = client_context(tls_gateway.pki.server_ca.cert_file)
    context.maximum_version = ssl.TLSVersion.TLSv1_2

    assert await rest_get(tls_gateway.https, context) == 200
    assert tls_gateway.tls.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_a_busy_tls_port_is_still_a_one_line_listen_error(
    tls_gateway: TlsGateway, capfd: pytest.CaptureFixture[str]
) -> None:
    # The TLS ports are bound as the plaintext ones are: exclusively, and a refusal is one line.
    rest_address = f"127.0.0.1:{tls_gateway.http_server.port}"
    second = HttpServer(tls_gateway.gateway, ssl_context=tls_gateway.tls.ssl_context)

    with pytest.raises(ListenError) as grpc_info:
        bind_server(tls_gateway.gateway, tls_gateway.address, tls_gateway.tls)
    with pytest.raises(ListenError) as rest_info:
        await second.start(rest_address)

    assert str(grpc_info.value).startswith(f"gRPC port {tls_gateway.address} is already in use")
    assert str(rest_info.value).startswith(f"REST port {rest_address} is already in use")
    assert capfd.readouterr().err == "", "grpc's own bind failure report is held back"
