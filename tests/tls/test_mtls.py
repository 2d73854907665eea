"""Mutual TLS on both edges: with ``tls_client_ca_file`` a caller must present a certificate that
CA signed, or the handshake fails before any call (or HTTP request) reaches the gateway.
"""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from grpc import aio

from tests.helpers.certificates import Issued
from tests.helpers.tls_gateway import (
    TlsGateway,
    channel_credentials,
    client_context,
    grpc_get,
    rest_get,
)


async def test_grpc_with_a_certificate_from_the_client_ca_is_served(
    mtls_gateway: TlsGateway,
) -> None:
    pki = mtls_gateway.pki

    await grpc_get(mtls_gateway.address, channel_credentials(pki.server_ca.cert_file, pki.client))


async def test_rest_with_a_certificate_from_the_client_ca_is_served(
    mtls_gateway: TlsGateway,
) -> None:
    pki = mtls_gateway.pki
    context = client_context(pki.server_ca.cert_file, pki.client)

    assert await rest_get(mtls_gateway.https, context) == 200


async def test_grpc_without_a_client_certificate_is_refused(mtls_gateway: TlsGateway) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await grpc_get(
            mtls_gateway.address, channel_credentials(mtls_gateway.pki.server_ca.cert_file)
        )

    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rest_without_a_client_certificate_is_refused(mtls_gateway: TlsGateway) -> None:
    context = client_context(mtls_gateway.pki.server_ca.cert_file)

    # Under TLS 1.3 the client's side of the handshake ends before the server has checked the
    # certificate, so the refusal arrives as the connection's end rather than a connect error.
    with pytest.raises(aiohttp.ClientConnectionError):
        await rest_get(mtls_gateway.https, context)


def _signed_elsewhere(gateway: TlsGateway) -> list[Issued]:
    """Client certificates the client CA did not sign: another CA's, and one of the CA that
    signed the gateway's own certificate (trusted for the server, not for callers)."""
    return [gateway.pki.rogue, gateway.pki.server_ca.issue_client("not-a-caller")]


async def test_grpc_with_a_certificate_from_another_ca_is_refused(
    mtls_gateway: TlsGateway,
) -> None:
    for client in _signed_elsewhere(mtls_gateway):
        credentials = channel_credentials(mtls_gateway.pki.server_ca.cert_file, client)

        with pytest.raises(aio.AioRpcError) as info:
            await grpc_get(mtls_gateway.address, credentials)

        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, client.cert_file


async def test_rest_with_a_certificate_from_another_ca_is_refused(
    mtls_gateway: TlsGateway,
) -> None:
    for client in _signed_elsewhere(mtls_gateway):
        context = client_context(mtls_gateway.pki.server_ca.cert_file, client)

        with pytest.raises(aiohttp.ClientConnectionError):
            await rest_get(mtls_gateway.https, context)
