"""Every error a caller can cause, as the contract's table in privacy_service.proto states it.

Each test checks the status code, the exact message, the ``google.rpc.ErrorInfo`` (reason and
domain ``privacy-gateway``) and, where the contract promises one, the ``BadRequest`` or
``RetryInfo``; and that a rejected call changed nothing: no instance's settings moved and no
stanza was sent (not even the first fetch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.settings import Field, Settings
from tests.helpers.harness import (
    ACME_TOKEN,
    GLOBEX_TOKEN,
    SALES_TOKEN,
    GatewayFactory,
    Harness,
    visibility,
)

DOMAIN = "privacy-gateway"
T = TypeVar("T", bound=Message)
Metadata = tuple[tuple[str, str], ...]
Rpc = Literal["get", "update", "stream"]
UPDATES: list[Rpc] = ["update", "stream"]
ALL_RPCS: list[Rpc] = ["get", "update", "stream"]

#: A request that would change `sales` (its default last seen is `all`) if it were applied.
CHANGING = visibility(last_seen=spb.VISIBILITY_VALUE_NONE)


# -- reading the rich status ----------------------------------------------------------------


def status_details(error: aio.AioRpcError) -> list[Any]:
    """The ``google.rpc.Status`` details of ``error``, unpacked (ErrorInfo, BadRequest, ...)."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no grpc-status-details-bin trailer"
    unpacked: list[Message] = []
    for packed in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            pb.UpdatePrivacySettingsResponse,
        ):
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                unpacked.append(message)
                break
        else:
            raise AssertionError(f"unexpected detail {packed.type_url}")
    return unpacked


def only_detail(error: aio.AioRpcError, kind: type[T]) -> T:
    """The one detail of type ``kind`` (fails when there is none or more than one)."""
    found = [d for d in status_details(error) if isinstance(d, kind)]
    assert len(found) == 1, f"expected one {kind.DESCRIPTOR.full_name}, got {found}"
    return found[0]


def error_reason(error: aio.AioRpcError) -> str:
    """The ErrorInfo reason, after checking that its domain is the gateway's."""
    info = only_detail(error, error_details_pb2.ErrorInfo)
    assert info.domain == DOMAIN
    return info.reason


def violations(error: aio.AioRpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations as (field, description) pairs."""
    bad_request = only_detail(error, error_details_pb2.BadRequest)
    return [(v.field, v.description) for v in bad_request.field_violations]


def assert_error(error: aio.AioRpcError, code: grpc.StatusCode, message: str, reason: str) -> None:
    assert error.code() == code
    assert error.details() == message
    assert error_reason(error) == reason


# -- calling and watching -------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """What every simulated WhatsApp holds and how many stanzas each session has sent."""

    settings: dict[str, Settings]
    stanzas: dict[str, int]


def world(harness: Harness) -> World:
    names = [instance.name for instance in harness.gateway.instances]
    return World(
        {name: harness.session(name).server_settings for name in names},
        {name: harness.session(name).stanzas for name in names},
    )


def with_token(token: str) -> Metadata:
    return (("token", token),)


ACME = with_token(ACME_TOKEN)


async def call(
    harness: Harness,
    rpc: Rpc,
    *,
    instance: str,
    settings: spb.PrivacySettings,
    metadata: Metadata,
    received: list[Message],
) -> None:
    """Makes one call; a stream's messages are appended to ``received`` as they arrive."""
    stub = harness.stub
    if rpc == "get":
        await stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=instance), metadata=metadata
        )
    elif rpc == "update":
        await stub.UpdatePrivacySettings(
            pb.UpdatePrivacySettingsRequest(instance=instance, settings=settings),
            metadata=metadata,
        )
    else:
        stream = stub.StreamUpdatePrivacySettings(
            pb.StreamUpdatePrivacySettingsRequest(instance=instance, settings=settings),
            metadata=metadata,
        )
        async for message in stream:
            received.append(message)


async def rejected(
    harness: Harness,
    rpc: Rpc,
    *,
    instance: str = "sales",
    settings: spb.PrivacySettings = CHANGING,
    metadata: Metadata = ACME,
) -> aio.AioRpcError:
    """Makes the call, expects it to fail, and returns the error.

    A rejected stream must fail before its first message: not even the plan is sent.
    """
    received: list[Message] = []
    with pytest.raises(aio.AioRpcError) as caught:
        await call(
            harness, rpc, instance=instance, settings=settings, metadata=metadata, received=received
        )
    assert received == [], "a rejected stream sent messages before its error"
    return caught.value


async def rejected_without_change(harness: Harness, rpc: Rpc, **options: Any) -> aio.AioRpcError:
    """``rejected``, also checking that no settings moved and no stanza was sent anywhere."""
    before = world(harness)
    error = await rejected(harness, rpc, **options)
    assert world(harness) == before
    return error


# -- no field set -------------------------------------------------------------------------

NO_SETTINGS_REQUESTS = [
    pytest.param(spb.PrivacySettings(), id="empty"),
    pytest.param(
        spb.PrivacySettings(
            visibility=spb.Visibility(), privacy=spb.Privacy(), permissions=spb.Permissions()
        ),
        id="sections-present-all-unspecified",
    ),
    pytest.param(
        spb.PrivacySettings(
            visibility=spb.Visibility(
                last_seen=spb.VISIBILITY_VALUE_UNSPECIFIED,
                status=spb.VISIBILITY_VALUE_UNSPECIFIED,
                profile=spb.VISIBILITY_VALUE_UNSPECIFIED,
                online=spb.ONLINE_VALUE_UNSPECIFIED,
            ),
            privacy=spb.Privacy(read_receipts=spb.READ_RECEIPTS_VALUE_UNSPECIFIED),
            permissions=spb.Permissions(
                call_add=spb.CALL_ADD_VALUE_UNSPECIFIED,
                group_add=spb.GROUP_ADD_VALUE_UNSPECIFIED,
            ),
        ),
        id="every-field-explicitly-unspecified",
    ),
]


@pytest.mark.parametrize("rpc", UPDATES)
@pytest.mark.parametrize("settings", NO_SETTINGS_REQUESTS)
async def test_no_field_set_is_no_settings(
    gateway: Harness, rpc: Rpc, settings: spb.PrivacySettings
) -> None:
    error = await rejected_without_change(gateway, rpc, settings=settings)

    assert_error(
        error,
        grpc.StatusCode.INVALID_ARGUMENT,
        "At least one privacy setting must be provided",
        "NO_SETTINGS",
    )


@pytest.mark.parametrize("rpc", UPDATES)
async def test_no_settings_carries_a_bad_request_naming_settings(
    gateway: Harness, rpc: Rpc
) -> None:
    """The contract: invalid arguments carry a ``google.rpc.BadRequest``."""
    error = await rejected(gateway, rpc, settings=spb.PrivacySettings())

    assert [field for field, _ in violations(error)] == ["settings"]


# -- enum numbers outside a field's value set ------------------------------------------------

VISIBILITY_VALUES = (
    "VISIBILITY_VALUE_ALL, VISIBILITY_VALUE_CONTACTS, "
    "VISIBILITY_VALUE_CONTACT_BLACKLIST, VISIBILITY_VALUE_NONE"
)
ONLINE_VALUES = "ONLINE_VALUE_ALL, ONLINE_VALUE_MATCH_LAST_SEEN"
READ_RECEIPTS_VALUES = "READ_RECEIPTS_VALUE_ALL, READ_RECEIPTS_VALUE_NONE"
CALL_ADD_VALUES = "CALL_ADD_VALUE_ALL, CALL_ADD_VALUE_KNOWN"
GROUP_ADD_VALUES = (
    "GROUP_ADD_VALUE_ALL, GROUP_ADD_VALUE_CONTACTS, GROUP_ADD_VALUE_CONTACT_BLACKLIST"
)

INVALID_VALUES = [
    pytest.param(
        spb.PrivacySettings(visibility=spb.Visibility(last_seen=9)),
        "settings.visibility.last_seen",
        f"Invalid settings.visibility.last_seen value: 9. Valid values: {VISIBILITY_VALUES}",
        id="last_seen=9",
    ),
    pytest.param(
        spb.PrivacySettings(visibility=spb.Visibility(status=5)),
        "settings.visibility.status",
        f"Invalid settings.visibility.status value: 5. Valid values: {VISIBILITY_VALUES}",
        id="status=5",
    ),
    pytest.param(
        spb.PrivacySettings(visibility=spb.Visibility(profile=-1)),
        "settings.visibility.profile",
        f"Invalid settings.visibility.profile value: -1. Valid values: {VISIBILITY_VALUES}",
        id="profile=-1",
    ),
    pytest.param(
        spb.PrivacySettings(visibility=spb.Visibility(online=3)),
        "settings.visibility.online",
        f"Invalid settings.visibility.online value: 3. Valid values: {ONLINE_VALUES}",
        id="online=3",
    ),
    pytest.param(
        spb.PrivacySettings(privacy=spb.Privacy(read_receipts=3)),
        "settings.privacy.read_receipts",
        f"Invalid settings.privacy.read_receipts value: 3. Valid values: {READ_RECEIPTS_VALUES}",
        id="read_receipts=3",
    ),
    pytest.param(
        spb.PrivacySettings(permissions=spb.Permissions(call_add=3)),
        "settings.permissions.call_add",
        f"Invalid settings.permissions.call_add value: 3. Valid values: {CALL_ADD_VALUES}",
        id="call_add=3",
    ),
    pytest.param(
        spb.PrivacySettings(permissions=spb.Permissions(group_add=4)),
        "settings.permissions.group_add",
        f"Invalid settings.permissions.group_add value: 4. Valid values: {GROUP_ADD_VALUES}",
        id="group_add=4",
    ),
]


@pytest.mark.parametrize("rpc", UPDATES)
@pytest.mark.parametrize(("settings", "field", "message"), INVALID_VALUES)
async def test_value_outside_the_fields_set_is_invalid_value(
    gateway: Harness, rpc: Rpc, settings: spb.PrivacySettings, field: str, message: str
) -> None:
    error = await rejected_without_change(gateway, rpc, settings=settings)

    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_VALUE")
    assert violations(error) == [(field, message)]


@pytest.mark.parametrize("rpc", UPDATES)
async def test_one_valid_and_one_invalid_field_applies_nothing(gateway: Harness, rpc: Rpc) -> None:
    await gateway.get()  # the first read's fetch stanza is paid before measuring
    settings = spb.PrivacySettings(
        visibility=spb.Visibility(last_seen=spb.VISIBILITY_VALUE_NONE),
        permissions=spb.Permissions(group_add=4),
    )

    error = await rejected_without_change(gateway, rpc, settings=settings)

    message = f"Invalid settings.permissions.group_add value: 4. Valid values: {GROUP_ADD_VALUES}"
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_VALUE")
    assert violations(error) == [("settings.permissions.group_add", message)]


@pytest.mark.parametrize("rpc", UPDATES)
async def test_two_invalid_fields_give_two_violations_and_name_the_first(
    gateway: Harness, rpc: Rpc
) -> None:
    """Every invalid field is a violation; the message names the first in canonical order."""
    settings = spb.PrivacySettings(
        visibility=spb.Visibility(last_seen=9), privacy=spb.Privacy(read_receipts=7)
    )

    error = await rejected_without_change(gateway, rpc, settings=settings)

    last_seen = f"Invalid settings.visibility.last_seen value: 9. Valid values: {VISIBILITY_VALUES}"
    read_receipts = (
        f"Invalid settings.privacy.read_receipts value: 7. Valid values: {READ_RECEIPTS_VALUES}"
    )
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, last_seen, "INVALID_VALUE")
    assert violations(error) == [
        ("settings.visibility.last_seen", last_seen),
        ("settings.privacy.read_receipts", read_receipts),
    ]


# -- the instance ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", [ACME_TOKEN, SALES_TOKEN])
@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_empty_instance_is_instance_required(gateway: Harness, rpc: Rpc, token: str) -> None:
    error = await rejected_without_change(gateway, rpc, instance="", metadata=with_token(token))

    assert_error(
        error, grpc.StatusCode.INVALID_ARGUMENT, "instance is required", "INSTANCE_REQUIRED"
    )
    assert [field for field, _ in violations(error)] == ["instance"]


@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_unknown_instance_with_an_account_token_is_not_found(
    gateway: Harness, rpc: Rpc
) -> None:
    error = await rejected_without_change(gateway, rpc, instance="nope")

    assert_error(error, grpc.StatusCode.NOT_FOUND, "Instance not found: nope", "INSTANCE_NOT_FOUND")


# -- authentication -------------------------------------------------------------------------

MISSING_TOKEN = "Missing token: send it as `token` (gRPC metadata, or an HTTP header)"


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-metadata"),
        pytest.param((("token", ""),), id="empty-token"),
        pytest.param((("authorization", ACME_TOKEN),), id="token-under-another-key"),
    ],
)
@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_missing_token_is_token_missing(
    gateway: Harness, rpc: Rpc, metadata: Metadata
) -> None:
    error = await rejected_without_change(gateway, rpc, metadata=metadata)

    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN, "TOKEN_MISSING")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-token-the-gateway-knows", id="unknown"),
        pytest.param(ACME_TOKEN + " ", id="known-token-with-a-trailing-space"),
        pytest.param(ACME_TOKEN.upper(), id="known-token-in-another-case"),
    ],
)
@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_unknown_token_is_token_invalid(gateway: Harness, rpc: Rpc, token: str) -> None:
    error = await rejected_without_change(gateway, rpc, metadata=with_token(token))

    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "Invalid token", "TOKEN_INVALID")


# -- authorization --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "instance"),
    [
        pytest.param(SALES_TOKEN, "support", id="instance-token-on-a-sibling"),
        pytest.param(SALES_TOKEN, "other", id="instance-token-on-another-account"),
        pytest.param(GLOBEX_TOKEN, "sales", id="account-token-on-another-account"),
        pytest.param(ACME_TOKEN, "other", id="acme-token-on-globex"),
        pytest.param(SALES_TOKEN, "nope", id="instance-token-on-an-unknown-name"),
    ],
)
@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_token_outside_its_scope_is_instance_forbidden(
    gateway: Harness, rpc: Rpc, token: str, instance: str
) -> None:
    """An instance token is refused for every other name, existing or not, so it cannot learn
    which instances exist."""
    error = await rejected_without_change(
        gateway, rpc, instance=instance, metadata=with_token(token)
    )

    assert_error(
        error,
        grpc.StatusCode.PERMISSION_DENIED,
        f"This token may not act on instance {instance}",
        "INSTANCE_FORBIDDEN",
    )


# -- the session ----------------------------------------------------------------------------


@pytest.mark.parametrize("warm", [False, True], ids=["never-read", "settings-cached"])
@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_disconnected_instance_is_not_connected(
    gateway: Harness, rpc: Rpc, warm: bool
) -> None:
    """Even with the settings cached, a disconnected instance is refused, not served stale."""
    if warm:
        await gateway.get()
    gateway.session().disconnect()

    error = await rejected_without_change(gateway, rpc)

    assert_error(
        error,
        grpc.StatusCode.FAILED_PRECONDITION,
        "Instance is not connected to WhatsApp",
        "INSTANCE_NOT_CONNECTED",
    )


# -- rate limit -----------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_call_over_the_limit_is_rate_limited(make_gateway: GatewayFactory, rpc: Rpc) -> None:
    harness: Harness = await make_gateway(rate_limit_per_minute=3)
    for _ in range(3):
        await harness.get()

    error = await rejected_without_change(harness, rpc)

    assert_error(
        error,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Rate limit exceeded: 3 requests per minute",
        "RATE_LIMITED",
    )
    delay = only_detail(error, error_details_pb2.RetryInfo).retry_delay.ToTimedelta()
    assert 1 <= delay.total_seconds() <= 60


async def test_rate_limit_is_counted_per_token(make_gateway: GatewayFactory) -> None:
    """One token over its limit does not hold back other tokens, even of the same account."""
    harness: Harness = await make_gateway(rate_limit_per_minute=3)
    for _ in range(3):
        await harness.get()
    await rejected(harness, "get")

    response = await harness.update(CHANGING, token=SALES_TOKEN)
    await harness.get("other", token=GLOBEX_TOKEN)

    assert response.settings.visibility.last_seen == spb.VISIBILITY_VALUE_NONE
    assert harness.session().server_settings[Field.LAST_SEEN] == "none"


async def test_no_rate_limit_when_it_is_zero(gateway: Harness) -> None:
    assert gateway.gateway.limiter.per_minute == 0
    for _ in range(200):
        await gateway.get()
