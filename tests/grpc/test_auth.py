"""Who may act on which instance, and how tokens are kept secret.

The contract: every call carries a `token` metadata entry; an account token may act on all of its
account's instances, an instance token only on its own instance. Tokens are configured as SHA-256
hashes, and neither a token nor its full hash is ever logged. Health and reflection are for probes
and tools, which call them without a token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.assembly import build_gateway
from service.auth import Principal, Scope, TokenRegistry, hash_token
from service.config import from_mapping
from service.errors import Code, GatewayError
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.settings import Field
from tests.helpers.harness import (
    ACME_TOKEN,
    GLOBEX_TOKEN,
    SALES_TOKEN,
    GatewayFactory,
    Harness,
    gateway_config,
    visibility,
)

PRIVACY_SERVICE = "wagateway.privacy.v1.PrivacyService"
WRONG_TOKEN = "a-token-nobody-was-given"
LAST_SEEN_NONE = visibility(last_seen=spb.VISIBILITY_VALUE_NONE)
GROUP_ADD_CONTACTS = spb.PrivacySettings(
    permissions=spb.Permissions(group_add=spb.GROUP_ADD_VALUE_CONTACTS)
)


async def streamed_snapshot(
    harness: Harness, settings: spb.PrivacySettings, instance: str, token: str
) -> spb.PrivacySettings:
    """Runs a streamed update to the end and returns its last message, the snapshot."""
    messages = [m async for m in harness.stream(settings, instance=instance, token=token)]
    assert messages, "the stream sent nothing"
    assert messages[-1].WhichOneof("event") == "snapshot"
    return messages[-1].snapshot


async def refused_code(harness: Harness, instance: str, token: str) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as caught:
        await harness.update(LAST_SEEN_NONE, instance=instance, token=token)
    return caught.value.code()


# -- scopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("instance", ["sales", "support"])
async def test_account_token_acts_on_every_instance_of_its_account(
    gateway: Harness, instance: str
) -> None:
    session = gateway.session(instance)

    await gateway.get(instance, token=ACME_TOKEN)
    response = await gateway.update(LAST_SEEN_NONE, instance=instance, token=ACME_TOKEN)
    snapshot = await streamed_snapshot(gateway, GROUP_ADD_CONTACTS, instance, ACME_TOKEN)

    assert response.settings.visibility.last_seen == spb.VISIBILITY_VALUE_NONE
    assert snapshot.permissions.group_add == spb.GROUP_ADD_VALUE_CONTACTS
    assert session.server_settings[Field.LAST_SEEN] == "none"
    assert session.server_settings[Field.GROUP_ADD] == "contacts"


async def test_account_token_acts_only_on_its_own_accounts_instances(gateway: Harness) -> None:
    await gateway.update(LAST_SEEN_NONE, instance="other", token=GLOBEX_TOKEN)

    assert gateway.session("other").server_settings[Field.LAST_SEEN] == "none"
    assert await refused_code(gateway, "other", ACME_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
    assert await refused_code(gateway, "sales", GLOBEX_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
    assert await refused_code(gateway, "support", GLOBEX_TOKEN) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert gateway.session("sales").server_settings[Field.LAST_SEEN] == "all"
    assert gateway.session("support").server_settings[Field.LAST_SEEN] == "all"


async def test_instance_token_acts_on_its_own_instance(gateway: Harness) -> None:
    session = gateway.session("sales")

    await gateway.get("sales", token=SALES_TOKEN)
    response = await gateway.update(LAST_SEEN_NONE, instance="sales", token=SALES_TOKEN)
    snapshot = await streamed_snapshot(gateway, GROUP_ADD_CONTACTS, "sales", SALES_TOKEN)

    assert response.settings.visibility.last_seen == spb.VISIBILITY_VALUE_NONE
    assert snapshot.permissions.group_add == spb.GROUP_ADD_VALUE_CONTACTS
    assert session.server_settings[Field.LAST_SEEN] == "none"
    assert session.server_settings[Field.GROUP_ADD] == "contacts"


@pytest.mark.parametrize("instance", ["support", "other", "nope"])
async def test_instance_token_acts_on_no_other_instance(gateway: Harness, instance: str) -> None:
    """Refused alike for a sibling, another account's instance and an unknown name."""
    assert await refused_code(gateway, instance, SALES_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
    for name in ("sales", "support", "other"):
        assert gateway.session(name).stanzas == 0


# -- secrecy --------------------------------------------------------------------------------


async def test_tokens_and_their_hashes_never_reach_the_logs(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    harness: Harness = await make_gateway(rate_limit_per_minute=6)
    caplog.set_level(logging.DEBUG)

    # Successful calls with every kind of token.
    await harness.get("sales", token=ACME_TOKEN)
    await harness.update(LAST_SEEN_NONE, instance="support", token=ACME_TOKEN)
    await streamed_snapshot(harness, GROUP_ADD_CONTACTS, "sales", SALES_TOKEN)
    await harness.get("other", token=GLOBEX_TOKEN)
    # Failed calls: unknown token, forbidden, not found, invalid value, not connected, rate limit.
    failures: list[Callable[[], Awaitable[object]]] = [
        partial(harness.get, "sales", token=WRONG_TOKEN),
        partial(harness.get, "support", token=SALES_TOKEN),
        partial(harness.get, "sales", token=GLOBEX_TOKEN),
        partial(harness.get, "nope", token=ACME_TOKEN),
        partial(harness.update, visibility(last_seen=9), instance="sales", token=ACME_TOKEN),
    ]
    harness.session("other").disconnect()
    # GLOBEX has made 2 calls; its 5th on the disconnected `other` is its 7th: over the limit.
    failures += [partial(harness.get, "other", token=GLOBEX_TOKEN)] * 5
    codes = set()
    for failing in failures:
        with pytest.raises(aio.AioRpcError) as caught:
            await failing()
        codes.add(caught.value.code())
    assert codes == {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }

    secrets = [ACME_TOKEN, SALES_TOKEN, GLOBEX_TOKEN, WRONG_TOKEN]
    secrets += [hash_token(token) for token in secrets]
    gateway_records = [r for r in caplog.records if r.name.startswith("service.")]
    assert gateway_records, "the failed calls were not logged, so this test would check nothing"
    for record in caplog.records:
        logged = f"{record.getMessage()} {record.msg} {record.args!r} {record.exc_text or ''}"
        for secret in secrets:
            assert secret not in logged, f"{record.name} logged a secret: {logged}"
    for secret in secrets:
        assert secret not in caplog.text


def test_registry_refuses_two_principals_sharing_a_token() -> None:
    shared = hash_token("one-token-for-two")
    principals = [
        Principal(Scope.ACCOUNT, "acme", "acme", shared),
        Principal(Scope.INSTANCE, "sales", "acme", shared),
    ]

    with pytest.raises(ValueError, match="share a token") as caught:
        TokenRegistry(principals)

    assert shared not in str(caught.value)


def test_configuration_giving_an_instance_its_accounts_token_is_refused() -> None:
    config = from_mapping(
        gateway_config(
            instances=[{"name": "sales", "account": "acme", "token_sha256": hash_token(ACME_TOKEN)}]
        ),
        env={},
    )

    with pytest.raises(ValueError, match="share a token"):
        build_gateway(config)


def test_registry_knows_each_principal_by_its_own_token_only() -> None:
    acme = Principal(Scope.ACCOUNT, "acme", "acme", hash_token(ACME_TOKEN))
    sales = Principal(Scope.INSTANCE, "sales", "acme", hash_token(SALES_TOKEN))
    registry = TokenRegistry([acme, sales])

    assert registry.authenticate(ACME_TOKEN) is acme
    assert registry.authenticate(SALES_TOKEN) is sales
    with pytest.raises(GatewayError) as caught:
        registry.authenticate(hash_token(ACME_TOKEN))  # the hash is not the token
    assert (caught.value.code, caught.value.reason) == (Code.UNAUTHENTICATED, "TOKEN_INVALID")


# -- services that need no token ------------------------------------------------------------


@pytest.mark.parametrize("service", ["", PRIVACY_SERVICE])
async def test_health_needs_no_token(gateway: Harness, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(gateway.channel)

    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_needs_no_token(gateway: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )

    responses = [response async for response in call]

    assert len(responses) == 1
    services = {s.name for s in responses[0].list_services_response.service}
    assert {PRIVACY_SERVICE, "grpc.health.v1.Health"} <= services


async def test_the_privacy_service_itself_needs_a_token(gateway: Harness) -> None:
    """The counterpart of the two above: the gateway's own service is not left open."""
    with pytest.raises(aio.AioRpcError) as caught:
        await gateway.stub.GetPrivacySettings(pb.GetPrivacySettingsRequest(instance="sales"))

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
