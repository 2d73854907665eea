"""Updates as journaled operations: their ids, GetUpdateOperation and ListUpdateOperations.

Each update is an operation with an id (in the plan and the unary response), recorded in the
journal as it happens. GetUpdateOperation reads one record back, ListUpdateOperations an
instance's records, newest first and in pages, and only for a token that may act on the instance.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import grpc
import pytest

from service.auth import hash_token
from service.engine import FieldState
from service.gateway.rules import MAX_PAGE_SIZE
from service.grpc.convert import (
    field_from_proto,
    settings_from_proto,
    settings_to_proto,
    value_from_proto,
)
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import Field, Settings
from tests.helpers.harness import ACME_TOKEN, GLOBEX_TOKEN, SALES_TOKEN, GatewayFactory, Harness
from tests.helpers.operations import (
    TIMEOUT,
    _drain,
    _get_operation,
    _latency_instances,
    _list_page,
    _listed_ids,
    _plan,
    _rpc_error,
    _stream,
    _transitions,
    _unary,
)
from tests.helpers.rest_client import Rest


async def test_plan_event_and_unary_response_carry_the_operation_id(gateway: Harness) -> None:
    messages, error = await _drain(_stream(gateway, Settings({Field.LAST_SEEN: "none"})))
    response = await _unary(gateway, Settings({Field.LAST_SEEN: "contacts"}))

    assert error is None
    streamed_id = _plan(messages).operation_id
    assert streamed_id
    assert response.operation_id
    assert response.plan.operation_id == response.operation_id
    assert streamed_id != response.operation_id
    assert await _listed_ids(gateway) == [response.operation_id, streamed_id]


async def test_get_update_operation_returns_the_completed_record(
    make_gateway: GatewayFactory,
) -> None:
    latency = 0.02
    gateway: Harness = await make_gateway(instances=_latency_instances(20))
    session = gateway.session()
    # STATUS already holds "contacts": UNCHANGED, no stanza.
    requested = Settings(
        {Field.LAST_SEEN: "none", Field.STATUS: "contacts", Field.READ_RECEIPTS: "none"}
    )
    before = time.time()

    response = await _unary(gateway, requested)
    after = time.time()
    operation = await _get_operation(gateway, response.operation_id)

    assert operation.id == response.operation_id
    assert operation.instance == "sales"
    assert operation.request_id == ""
    assert operation.requested == settings_to_proto(requested)
    assert operation.failure_policy == pb.FAILURE_POLICY_STOP
    assert not operation.force
    assert operation.state == pb.OPERATION_STATE_COMPLETED
    assert list(operation.fields) == list(response.fields)
    assert _transitions(operation.fields) == [
        (Field.LAST_SEEN, FieldState.APPLIED),
        (Field.STATUS, FieldState.UNCHANGED),
        (Field.READ_RECEIPTS, FieldState.APPLIED),
    ]
    for update in operation.fields:
        field = field_from_proto(update.field)
        assert value_from_proto(field, update.value) == requested[field]
        assert value_from_proto(field, update.previous) == DEFAULT_SETTINGS[field]
        assert update.error == ""
        if update.state == pb.FIELD_STATE_APPLIED:
            assert update.HasField("elapsed")
            assert update.elapsed.ToNanoseconds() >= latency * 1e9 * 0.9
            assert update.elapsed.ToNanoseconds() < TIMEOUT * 1e9
        else:
            assert not update.HasField("elapsed")
    assert operation.HasField("settings")
    assert settings_from_proto(operation.settings) == session.server_settings
    assert session.server_settings == Settings({**DEFAULT_SETTINGS, **requested})
    assert operation.settings == response.settings
    assert operation.error_reason == ""
    assert operation.error_message == ""
    assert "acme" in operation.requested_by
    assert ACME_TOKEN not in operation.requested_by
    assert hash_token(ACME_TOKEN) not in operation.requested_by
    assert operation.HasField("start_time")
    assert operation.HasField("end_time")
    start = operation.start_time.ToNanoseconds() / 1e9
    end = operation.end_time.ToNanoseconds() / 1e9
    assert before - 1 <= start <= end <= after + 1
    assert end - start >= 2 * latency * 0.9


async def test_requested_by_names_the_instance_for_an_instance_token(gateway: Harness) -> None:
    response = await _unary(gateway, Settings({Field.PROFILE: "none"}), token=SALES_TOKEN)

    operation = await _get_operation(gateway, response.operation_id, token=SALES_TOKEN)

    assert "sales" in operation.requested_by
    assert "acme" not in operation.requested_by
    assert SALES_TOKEN not in operation.requested_by
    assert hash_token(SALES_TOKEN) not in operation.requested_by


async def test_list_update_operations_newest_first_in_pages(gateway: Harness) -> None:
    created: list[str] = []
    for value in ("none", "contacts", "all", "none", "contacts"):
        response = await _unary(gateway, Settings({Field.LAST_SEEN: value}))
        created.append(response.operation_id)
    other = await _unary(gateway, Settings({Field.LAST_SEEN: "none"}), instance="support")

    pages: list[pb.ListUpdateOperationsResponse] = []
    token = ""
    while True:
        page = await _list_page(gateway, page_size=2, page_token=token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10, "pagination does not end"

    assert [len(p.operations) for p in pages] == [2, 2, 1]
    assert [bool(p.next_page_token) for p in pages] == [True, True, False]
    listed = [o.id for p in pages for o in p.operations]
    assert len(set(listed)) == len(listed)
    assert listed == list(reversed(created))
    assert other.operation_id not in listed
    starts = [o.start_time.ToNanoseconds() for p in pages for o in p.operations]
    assert starts == sorted(starts, reverse=True)
    assert all(o.state == pb.OPERATION_STATE_COMPLETED for p in pages for o in p.operations)
    # The default page holds them all; the other instance has its own list.
    assert await _listed_ids(gateway) == listed
    assert await _listed_ids(gateway, "support") == [other.operation_id]


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "page_token",
    [
        "not-a-page-token",
        "abc",
        _b64(json.dumps({"started_at": 1.0, "id": "x"})),
        _b64(json.dumps(["x", 1.0])),
        _b64(json.dumps([1.0, "x", "y"])),
        _b64("not json"),
    ],
)
async def test_list_rejects_an_invalid_page_token(gateway: Harness, page_token: str) -> None:
    await _unary(gateway, Settings({Field.LAST_SEEN: "none"}))

    error = await _rpc_error(_list_page(gateway, page_token=page_token))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Invalid page token"


async def test_unknown_operation_is_not_found(gateway: Harness) -> None:
    await _unary(gateway, Settings({Field.LAST_SEEN: "none"}))
    unknown = uuid.uuid4().hex

    error = await _rpc_error(_get_operation(gateway, unknown))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"Operation not found: {unknown}"


async def test_another_accounts_token_is_denied(gateway: Harness) -> None:
    response = await _unary(gateway, Settings({Field.LAST_SEEN: "none"}))

    get = await _rpc_error(_get_operation(gateway, response.operation_id, token=GLOBEX_TOKEN))
    listed = await _rpc_error(_list_page(gateway, token=GLOBEX_TOKEN))
    # An instance token may not read another instance's operations either.
    by_instance = await _rpc_error(
        _get_operation(gateway, response.operation_id, instance="support", token=SALES_TOKEN)
    )

    assert get.code() == grpc.StatusCode.PERMISSION_DENIED
    assert listed.code() == grpc.StatusCode.PERMISSION_DENIED
    assert by_instance.code() == grpc.StatusCode.PERMISSION_DENIED
    for error in (get, listed, by_instance):
        assert response.operation_id not in error.details()


async def test_operation_of_one_instance_is_not_found_via_another(gateway: Harness) -> None:
    response = await _unary(gateway, Settings({Field.LAST_SEEN: "none"}), instance="sales")

    error = await _rpc_error(_get_operation(gateway, response.operation_id, instance="support"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"Operation not found: {response.operation_id}"
    assert (await _get_operation(gateway, response.operation_id)).id == response.operation_id


async def test_a_page_size_over_100_is_100_on_both_edges(gateway: Harness, rest: Rest) -> None:
    """With more than 100 records, any page size over 100 (a 10-digit one, or one too long to
    parse on REST) gives 100 of them, the same on both edges, and a token for the rest."""
    values = ("none", "contacts")
    started = [
        (await _unary(gateway, Settings({Field.LAST_SEEN: values[n % 2]}))).operation_id
        for n in range(MAX_PAGE_SIZE + 1)
    ]
    oldest, *newer = started
    newest = newer[::-1]

    pages = [await _list_page(gateway, page_size=size) for size in (101, 2**31 - 1)]
    replies = [
        await rest.get("sales", tail=f"/operations?pageSize={size}")
        for size in ("101", "2147483647", "9" * 3000, "0" * 30 + "101")
    ]

    assert len(newest) == MAX_PAGE_SIZE
    for page in pages:
        assert [o.id for o in page.operations] == newest
        assert page.next_page_token
    for reply in replies:
        assert reply.status == 200
        assert [o["id"] for o in reply.body["operations"]] == newest
        assert reply.body["nextPageToken"] == pages[0].next_page_token
    rest_of_them = await _list_page(gateway, page_token=pages[0].next_page_token)
    assert [o.id for o in rest_of_them.operations] == [oldest]
    assert rest_of_them.next_page_token == ""


async def test_list_rejects_a_negative_page_size_and_caps_a_large_one(gateway: Harness) -> None:
    for value in ("none", "contacts", "all"):
        await _unary(gateway, Settings({Field.LAST_SEEN: value}))

    error = await _rpc_error(_list_page(gateway, page_size=-1))
    large = await _list_page(gateway, page_size=10_000)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(large.operations) == 3
    assert large.next_page_token == ""
