"""Every error a caller can cause with the operation options, over gRPC and REST.

Each asserts the exact status and message, and that nothing reached WhatsApp and nothing was
journaled.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

import grpc
import pytest
from grpc import aio

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from tests.helpers.harness import ACME_TOKEN, Harness, visibility
from tests.helpers.rest_client import Rest

LAST_SEEN_NONE = visibility(last_seen=spb.VISIBILITY_VALUE_NONE)
#: The same change as ``LAST_SEEN_NONE``, as a REST body.
LAST_SEEN_NONE_BODY = {"visibility": {"lastSeen": "none"}}


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
    assert error.details() == (
        "Invalid page_size value: -1. Valid values: 0 or more (0 or none: 20; over 100: 100)"
    )


# -- REST ------------------------------------------------------------------------------------


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
            "Unknown query parameter: dryRun. "
            "Valid query parameters: failurePolicy, validateOnly, force",
            "UNKNOWN_QUERY_PARAMETER",
        ),
    ],
)
async def test_rest_update_options_are_validated(
    gateway: Harness,
    rest: Rest,
    query: str,
    message: str,
    reason: str,
) -> None:
    async with Nothing(gateway):
        reply = await rest.post("sales", LAST_SEEN_NONE_BODY, tail=query)

    assert (reply.status, reply.body) == (400, _envelope(message, reason))


async def test_rest_idempotency_key_must_be_a_uuid(gateway: Harness, rest: Rest) -> None:
    async with Nothing(gateway):
        reply = await rest.post("sales", LAST_SEEN_NONE_BODY, headers={"Idempotency-Key": "abc"})

    assert (reply.status, reply.body) == (
        400,
        _envelope("Idempotency-Key must be a UUID, not 'abc'", "INVALID_REQUEST_ID"),
    )


async def test_rest_idempotency_key_reused_with_another_body_is_409(
    gateway: Harness, rest: Rest
) -> None:
    key = str(uuid.uuid4())
    first = await rest.post("sales", LAST_SEEN_NONE_BODY, headers={"Idempotency-Key": key})
    assert first.status == 200

    async with Nothing(gateway):
        reply = await rest.post(
            "sales", {"privacy": {"readReceipts": "none"}}, headers={"Idempotency-Key": key}
        )

    assert (reply.status, reply.body) == (
        409,
        _envelope(
            f"Request id {key} was already used for a different request", "REQUEST_ID_REUSED"
        ),
    )


async def test_rest_retry_with_the_same_key_sends_nothing(gateway: Harness, rest: Rest) -> None:
    key = str(uuid.uuid4())
    first = await rest.post("sales", LAST_SEEN_NONE_BODY, headers={"Idempotency-Key": key})
    sent = list(gateway.session().sent)

    again = await rest.post("sales", LAST_SEEN_NONE_BODY, headers={"Idempotency-Key": key})

    assert again.status == 200
    assert again.body["operationId"] == first.body["operationId"]
    assert again.body["settings"] == first.body["settings"]
    assert gateway.session().sent == sent


@pytest.mark.parametrize("size", ["-1", "%2B5", "-0", "ten", "1.5", "²", "", "1e3", "9" * 30 + "x"])
async def test_rest_page_size_is_validated(gateway: Harness, rest: Rest, size: str) -> None:
    async with Nothing(gateway):
        reply = await rest.get("sales", tail=f"/operations?pageSize={size}")

    sent = urllib.parse.unquote(size)
    shown = sent if len(sent) <= 64 else sent[:64] + "..."
    valid = "0 or more (0 or none: 20; over 100: 100)"
    message = f"Invalid pageSize value: {shown}. Valid values: {valid}"
    assert (reply.status, reply.body) == (400, _envelope(message, "INVALID_PAGE_SIZE"))


async def test_rest_unknown_operation_is_404(gateway: Harness, rest: Rest) -> None:
    async with Nothing(gateway):
        reply = await rest.get("sales", tail="/operations/nope")

    assert (reply.status, reply.body) == (
        404,
        _envelope("Operation not found: nope", "OPERATION_NOT_FOUND"),
    )


async def test_rest_invalid_page_token_is_400(gateway: Harness, rest: Rest) -> None:
    async with Nothing(gateway):
        reply = await rest.get("sales", tail="/operations?pageToken=%21%21")

    assert (reply.status, reply.body) == (
        400,
        _envelope("Invalid page token", "INVALID_PAGE_TOKEN"),
    )


async def test_rest_operation_reads_back_what_the_update_did(rest: Rest) -> None:
    updated = (await rest.post("sales", LAST_SEEN_NONE_BODY)).body

    reply = await rest.get("sales", tail=f"/operations/{updated['operationId']}")
    listed = await rest.get("sales", tail="/operations?pageSize=1")

    assert reply.status == 200
    operation = reply.body["operation"]
    assert operation["state"] == "COMPLETED"
    assert operation["settings"] == updated["settings"]
    assert [f["state"] for f in operation["fields"]] == ["APPLIED"]
    assert ACME_TOKEN not in json.dumps(operation)
    assert listed.status == 200
    assert [o["id"] for o in listed.body["operations"]] == [updated["operationId"]]
