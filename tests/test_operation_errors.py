"""Every error a caller can cause with the operation options, over gRPC and REST.

Each asserts the exact status and message, and that nothing reached WhatsApp and nothing was
journaled.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from service.http.app import HttpServer
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from tests.conftest import ACME_TOKEN, Harness, visibility

PATH = "/api/profile/privacy/sales"
LAST_SEEN_NONE = visibility(last_seen=spb.VISIBILITY_VALUE_NONE)


class Nothing:
    """Remembers the session and the journal; ``changed()`` says whether either moved."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    async def __aenter__(self) -> Nothing:
        await self.harness.get()  # the one fetch whatsmeow makes, outside the measured part
        session = self.harness.session()
        self.settings, self.sent = session.server_settings, list(session.sent)
        self.operations = await self._operations()
        return self

    async def __aexit__(self, *exc: object) -> None:
        session = self.harness.session()
        assert session.server_settings == self.settings
        assert session.sent == self.sent
        assert await self._operations() == self.operations

    async def _operations(self) -> list[str]:
        response = await self.harness.stub.ListUpdateOperations(
            pb.ListUpdateOperationsRequest(instance="sales"), metadata=self.harness.metadata()
        )
        return [o.id for o in response.operations]


async def _grpc_error(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value


# -- gRPC ------------------------------------------------------------------------------------


async def test_a_failure_policy_outside_the_enum_is_invalid(gateway: Harness) -> None:
    request = pb.UpdatePrivacySettingsRequest(
        instance="sales", settings=LAST_SEEN_NONE, failure_policy=9
    )
    async with Nothing(gateway):
        error = await _grpc_error(
            gateway.stub.UpdatePrivacySettings(request, metadata=gateway.metadata())
        )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "Invalid failure_policy value: 9. Valid values: "
        "FAILURE_POLICY_STOP, FAILURE_POLICY_CONTINUE, FAILURE_POLICY_ROLLBACK"
    )


async def test_a_request_id_that_is_not_a_uuid_names_itself(gateway: Harness) -> None:
    request = pb.UpdatePrivacySettingsRequest(
        instance="sales", settings=LAST_SEEN_NONE, request_id="retry-1"
    )
    async with Nothing(gateway):
        error = await _grpc_error(
            gateway.stub.UpdatePrivacySettings(request, metadata=gateway.metadata())
        )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request_id must be a UUID, not 'retry-1'"


async def test_a_negative_page_size_is_invalid(gateway: Harness) -> None:
    request = pb.ListUpdateOperationsRequest(instance="sales", page_size=-1)
    async with Nothing(gateway):
        error = await _grpc_error(
            gateway.stub.ListUpdateOperations(request, metadata=gateway.metadata())
        )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "page_size cannot be negative"


# -- REST ------------------------------------------------------------------------------------


@pytest.fixture
async def http(gateway: Harness) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    server = HttpServer(gateway.gateway)
    await server.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as client:
            yield f"http://127.0.0.1:{server.port}", client
    finally:
        await server.stop()


async def _post(
    http: tuple[str, aiohttp.ClientSession],
    query: str = "",
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    base, client = http
    sent = {"token": ACME_TOKEN, "Content-Type": "application/json", **(headers or {})}
    payload = json.dumps(body or {"visibility": {"lastSeen": "none"}}).encode()
    async with client.post(f"{base}{PATH}{query}", data=payload, headers=sent) as response:
        return response.status, await response.json()


async def _get(http: tuple[str, aiohttp.ClientSession], path: str) -> tuple[int, dict[str, Any]]:
    base, client = http
    async with client.get(f"{base}{path}", headers={"token": ACME_TOKEN}) as response:
        return response.status, await response.json()


def _envelope(message: str, reason: str) -> dict[str, Any]:
    return {"success": False, "error": {"message": message, "reason": reason}}


@pytest.mark.parametrize(
    ("query", "message", "reason"),
    [
        (
            "?failurePolicy=stop",
            "Invalid failurePolicy value: stop. Valid values: STOP, CONTINUE, ROLLBACK",
            "INVALID_VALUE",
        ),
        (
            "?validateOnly=yes",
            "Invalid validateOnly value: yes. Valid values: true, false",
            "INVALID_VALUE",
        ),
        ("?force=1", "Invalid force value: 1. Valid values: true, false", "INVALID_VALUE"),
        (
            "?dryRun=true",
            "Unknown query parameter: dryRun. Valid: failurePolicy, validateOnly, force",
            "UNKNOWN_FIELD",
        ),
    ],
)
async def test_rest_update_options_are_validated(
    gateway: Harness,
    http: tuple[str, aiohttp.ClientSession],
    query: str,
    message: str,
    reason: str,
) -> None:
    async with Nothing(gateway):
        status, body = await _post(http, query)

    assert (status, body) == (400, _envelope(message, reason))


async def test_rest_idempotency_key_must_be_a_uuid(
    gateway: Harness, http: tuple[str, aiohttp.ClientSession]
) -> None:
    async with Nothing(gateway):
        status, body = await _post(http, headers={"Idempotency-Key": "abc"})

    assert (status, body) == (
        400,
        _envelope("Idempotency-Key must be a UUID, not 'abc'", "INVALID_REQUEST_ID"),
    )


async def test_rest_idempotency_key_reused_with_another_body_is_409(
    gateway: Harness, http: tuple[str, aiohttp.ClientSession]
) -> None:
    key = str(uuid.uuid4())
    first, _ = await _post(http, headers={"Idempotency-Key": key})
    assert first == 200

    async with Nothing(gateway):
        status, body = await _post(
            http,
            headers={"Idempotency-Key": key},
            body={"privacy": {"readReceipts": "none"}},
        )

    assert (status, body) == (
        409,
        _envelope(
            f"request_id {key} was already used for a different request", "REQUEST_ID_REUSED"
        ),
    )


async def test_rest_retry_with_the_same_key_sends_nothing(
    gateway: Harness, http: tuple[str, aiohttp.ClientSession]
) -> None:
    key = str(uuid.uuid4())
    _, first = await _post(http, headers={"Idempotency-Key": key})
    sent = list(gateway.session().sent)

    status, again = await _post(http, headers={"Idempotency-Key": key})

    assert status == 200
    assert again["operationId"] == first["operationId"]
    assert again["settings"] == first["settings"]
    assert gateway.session().sent == sent


@pytest.mark.parametrize("size", ["0", "101", "ten"])
async def test_rest_page_size_is_validated(
    gateway: Harness, http: tuple[str, aiohttp.ClientSession], size: str
) -> None:
    async with Nothing(gateway):
        status, body = await _get(http, f"{PATH}/operations?pageSize={size}")

    assert (status, body) == (
        400,
        _envelope(f"Invalid pageSize value: {size}. Valid values: 1 to 100", "INVALID_PAGE_SIZE"),
    )


async def test_rest_unknown_operation_is_404(
    gateway: Harness, http: tuple[str, aiohttp.ClientSession]
) -> None:
    async with Nothing(gateway):
        status, body = await _get(http, f"{PATH}/operations/nope")

    assert (status, body) == (
        404,
        _envelope("Operation not found: nope", "OPERATION_NOT_FOUND"),
    )


async def test_rest_invalid_page_token_is_400(
    gateway: Harness, http: tuple[str, aiohttp.ClientSession]
) -> None:
    async with Nothing(gateway):
        status, body = await _get(http, f"{PATH}/operations?pageToken=%21%21")

    assert (status, body) == (400, _envelope("Invalid page_token", "INVALID_PAGE_TOKEN"))


async def test_rest_operation_reads_back_what_the_update_did(
    gateway: Harness, http: tuple[str, aiohttp.ClientSession]
) -> None:
    _, updated = await _post(http)

    status, body = await _get(http, f"{PATH}/operations/{updated['operationId']}")
    listed_status, listed = await _get(http, f"{PATH}/operations?pageSize=1")

    assert status == 200
    operation = body["operation"]
    assert operation["state"] == "COMPLETED"
    assert operation["settings"] == updated["settings"]
    assert [f["state"] for f in operation["fields"]] == ["APPLIED"]
    assert ACME_TOKEN not in json.dumps(operation)
    assert listed_status == 200
    assert [o["id"] for o in listed["operations"]] == [updated["operationId"]]
