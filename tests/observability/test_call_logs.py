"""One log line per call, on either edge: JSON with the documented fields, written once the call
is over (a stream: once it ends), whether it succeeded, was refused or its caller left."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.settings import Field
from tests.helpers.harness import SALES_TOKEN, Harness
from tests.helpers.observability import (
    CALL_FIELDS,
    GET,
    INSTANCES,
    PRIVACY,
    REST_PRIVACY,
    STREAM,
    UPDATE,
    WRONG_TOKEN,
    Captured,
    refused,
    scrape,
    settings,
)
from tests.helpers.rest_client import PATH, Rest

NDJSON = "application/x-ndjson"
REST_GET = f"GET {REST_PRIVACY}"
REST_POST = f"POST {REST_PRIVACY}"


def only_call(lines: Captured) -> dict[str, Any]:
    calls = lines.calls()
    assert len(calls) == 1, calls
    return calls[0]


def assert_shape(line: dict[str, Any]) -> None:
    """The documented keys, nothing else, and the message naming method and status."""
    assert list(line) == ["time", "level", "logger", "message", *CALL_FIELDS]
    assert line["logger"] == "service.calls"
    assert line["message"] == f"{line['method']} {line['status']}"
    assert line["time"].endswith("Z")
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0


# -- gRPC ----------------------------------------------------------------------------------


async def test_a_grpc_unary_call_is_one_line_with_its_operation(
    gateway: Harness, call_lines: Captured
) -> None:
    response = await gateway.update(settings(last_seen="none"))

    line = only_call(call_lines)
    assert_shape(line)
    assert line["level"] == "INFO"
    assert {k: line[k] for k in CALL_FIELDS if k != "duration_ms"} == {
        "edge": "grpc",
        "method": UPDATE,
        "instance": "sales",
        "caller": "account:acme",
        "status": "OK",
        "http_status": None,
        "reason": None,
        "operation_id": response.operation_id,
    }
    assert response.operation_id


async def test_a_refused_grpc_call_is_one_line_with_its_reason(
    gateway: Harness, call_lines: Captured
) -> None:
    assert await refused(gateway.get("sales", token=WRONG_TOKEN)) == "UNAUTHENTICATED"
    assert await refused(gateway.get("support", token=SALES_TOKEN)) == "PERMISSION_DENIED"

    first, second = call_lines.calls()
    for line in (first, second):
        assert_shape(line)
        assert line["level"] == "INFO"
    assert (first["caller"], first["status"], first["reason"]) == (
        None,
        "UNAUTHENTICATED",
        "TOKEN_INVALID",
    )
    assert (second["caller"], second["instance"], second["status"], second["reason"]) == (
        "instance:sales",
        "support",
        "PERMISSION_DENIED",
        "INSTANCE_FORBIDDEN",
    )


async def test_an_unknown_instance_is_logged_as_unknown(
    gateway: Harness, call_lines: Captured
) -> None:
    assert await refused(gateway.get("no-such-instance")) == "NOT_FOUND"

    line = only_call(call_lines)
    assert (line["instance"], line["reason"]) == ("(unknown)", "INSTANCE_NOT_FOUND")
    assert "no-such-instance" not in call_lines.everything()


async def test_a_grpc_stream_is_one_line_once_it_has_ended(
    gateway: Harness, call_lines: Captured
) -> None:
    gateway.session().latency = 0.05
    stream = gateway.stream(settings(last_seen="none", profile="none"))

    first = await stream.read()
    assert first.HasField("plan")
    assert call_lines.calls() == []  # still streaming
    started = time.perf_counter()
    rest = []
    while (message := await stream.read()) is not grpc.aio.EOF:
        rest.append(message)
    waited_ms = (time.perf_counter() - started) * 1000

    line = only_call(call_lines)
    assert_shape(line)
    assert (line["method"], line["status"], line["instance"]) == (STREAM, "OK", "sales")
    assert line["operation_id"] == first.plan.operation_id
    # Two stanzas of 50 ms each: the line covers the stream to its end.
    assert line["duration_ms"] >= max(waited_ms, 90)


async def test_a_failed_grpc_stream_is_one_line_with_the_failure(
    gateway: Harness, call_lines: Captured
) -> None:
    gateway.session().fail_field(Field.PROFILE, "refused by the test")
    stream = gateway.stream(settings(profile="none"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass

    line = only_call(call_lines)
    assert line["status"] == caught.value.code().name == "INTERNAL"
    assert line["reason"] == "STANZA_FAILED"
    assert line["operation_id"]


async def test_a_grpc_stream_whose_caller_leaves_is_one_cancelled_line(
    gateway: Harness, call_lines: Captured
) -> None:
    gateway.session().latency = 0.2
    stream = gateway.stream(settings(last_seen="none", profile="none"))
    await stream.read()
    stream.cancel()

    (line,) = await call_lines.calls_ended()
    assert (line["method"], line["status"]) == (STREAM, "CANCELLED")
    assert line["operation_id"]


async def test_instance_and_operation_calls_name_what_they_read(
    gateway: Harness, call_lines: Captured
) -> None:
    instances = instance_grpc.InstanceServiceStub(gateway.channel)
    done = await gateway.update(settings(last_seen="none"))
    await instances.ListInstances(instance_pb.ListInstancesRequest(), metadata=gateway.metadata())
    await gateway.stub.GetUpdateOperation(
        pb.GetUpdateOperationRequest(instance="sales", operation_id=done.operation_id),
        metadata=gateway.metadata(),
    )

    _, listed, read = call_lines.calls()
    assert (listed["method"], listed["instance"], listed["operation_id"]) == (
        INSTANCES + "ListInstances",
        None,
        None,
    )
    assert (read["method"], read["operation_id"]) == (
        PRIVACY + "GetUpdateOperation",
        done.operation_id,
    )


async def test_a_dry_run_names_no_operation(gateway: Harness, call_lines: Captured) -> None:
    await gateway.stub.UpdatePrivacySettings(
        pb.UpdatePrivacySettingsRequest(
            instance="sales", settings=settings(last_seen="none"), validate_only=True
        ),
        metadata=gateway.metadata(),
    )

    assert only_call(call_lines)["operation_id"] is None


async def test_a_grpc_deadline_that_passes_is_logged_as_such(
    gateway: Harness, call_lines: Captured
) -> None:
    gateway.session().latency = 0.3
    assert (
        await refused(
            gateway.stub.GetPrivacySettings(
                pb.GetPrivacySettingsRequest(instance="sales"),
                metadata=gateway.metadata(),
                timeout=0.05,
            )
        )
        == "DEADLINE_EXCEEDED"
    )

    (line,) = await call_lines.calls_ended()
    assert line["status"] == "DEADLINE_EXCEEDED"


# -- REST ----------------------------------------------------------------------------------


async def test_a_rest_call_is_one_line_with_its_route_and_http_status(
    rest: Rest, call_lines: Captured
) -> None:
    reply = await rest.post("sales", {"privacy": {"readReceipts": "none"}})
    assert reply.status == 200

    line = only_call(call_lines)
    assert_shape(line)
    assert {k: line[k] for k in CALL_FIELDS if k != "duration_ms"} == {
        "edge": "rest",
        "method": REST_POST,
        "instance": "sales",
        "caller": "account:acme",
        "status": "OK",
        "http_status": 200,
        "reason": None,
        "operation_id": reply.body["operationId"],
    }


async def test_a_refused_rest_call_names_the_route_not_the_path(
    rest: Rest, call_lines: Captured
) -> None:
    assert (await rest.get("nobody-has-this-name")).status == 404
    assert (await rest.get("sales", tail="/operations/nope")).status == 404
    assert (await rest.request("PURGE", "/api/profile/privacy/sales")).status == 405
    assert (await rest.request("GET", "/api/nothing/here")).status == 404

    lines = call_lines.calls()
    assert [(c["method"], c["instance"], c["http_status"], c["reason"]) for c in lines] == [
        (REST_GET, "(unknown)", 404, "INSTANCE_NOT_FOUND"),
        (f"GET {REST_PRIVACY}/operations/{{operation_id}}", "sales", 404, "OPERATION_NOT_FOUND"),
        ("OTHER (unmatched)", None, 405, "METHOD_NOT_ALLOWED"),
        ("GET (unmatched)", None, 404, "ROUTE_NOT_FOUND"),
    ]
    assert "nobody-has-this-name" not in call_lines.everything()


async def test_a_failed_ndjson_stream_is_one_line_with_the_failure(
    rest: Rest, call_lines: Captured
) -> None:
    rest.harness.session().fail_field(Field.LAST_SEEN, "refused by the test")
    async with rest.client.post(
        rest.base + PATH.format("sales"),
        json={"visibility": {"lastSeen": "none"}},
        headers={"token": rest.harness.token, "Accept": NDJSON},
    ) as response:
        assert response.status == 200
        body = await response.read()
    assert b'"event":"error"' in body

    line = only_call(call_lines)
    assert (line["method"], line["http_status"]) == (REST_POST, 200)
    assert (line["status"], line["reason"]) == ("INTERNAL", "STANZA_FAILED")
    assert line["operation_id"]


async def test_probes_and_scrapes_are_not_calls(rest: Rest, call_lines: Captured) -> None:
    assert (await rest.request("GET", "/healthz")).status == 200
    await scrape(rest.client, rest.base)
    assert (await rest.request("GET", "/openapi.json")).status == 200

    assert [c["method"] for c in call_lines.calls()] == ["GET /openapi.json"]


async def test_both_edges_log_the_same_mistake_alike(rest: Rest, call_lines: Captured) -> None:
    await refused(rest.harness.get("other"))
    await rest.get("other")

    grpc_line, rest_line = call_lines.calls()
    keys = ("instance", "caller", "status", "reason", "operation_id")
    assert {k: grpc_line[k] for k in keys} == {k: rest_line[k] for k in keys}
    assert (grpc_line["method"], rest_line["method"]) == (GET, REST_GET)
    assert (grpc_line["http_status"], rest_line["http_status"]) == (None, 403)
