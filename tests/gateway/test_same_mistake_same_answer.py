"""Every mistake a caller can make on both edges gets the same answer on both.

Each row is one mistake, made once over gRPC and once over REST against the same gateway. Both
answers must carry the same reason and the same message (bar the name each wire gives the
parameter: ``page_size`` is ``pageSize`` on REST), the gRPC code and the HTTP status the
catalogue gives that reason, and must change nothing on WhatsApp.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_status import rpc_status

from service import errors
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from tests.helpers.harness import ACME_TOKEN, SALES_TOKEN, GatewayFactory, Harness, visibility
from tests.helpers.rest_client import Reply, Rest, Unchanged, serving
from tests.helpers.rich_status import error_info

#: What the gRPC wire calls a parameter, and what REST calls it.
WIRE_NAMES = {
    "request_id": "Idempotency-Key",
    "page_size": "pageSize",
    "failure_policy": "failurePolicy",
    "FAILURE_POLICY_": "",
}
LAST_SEEN_NONE = visibility(last_seen=spb.VISIBILITY_VALUE_NONE)
LAST_SEEN_NONE_BODY = {"visibility": {"lastSeen": "none"}}
KEY = "0b8e7c4e-3f0a-4d6e-9a53-2f1c7d9b6a10"
INFINITE_TOKEN = base64.urlsafe_b64encode(b'[1e999, "x"]').decode()
NOT_UTF8_TOKEN = base64.urlsafe_b64encode(b"\xff\xfe[1, 2]").decode()

GrpcMistake = Callable[[Harness], Awaitable[Any]]
RestMistake = Callable[[Rest], Awaitable[Reply]]


@dataclass(frozen=True)
class Mistake:
    reason: str
    grpc: GrpcMistake
    rest: RestMistake
    #: What the call first does right, on both edges, so that the mistake can be made.
    before: Callable[[Harness, Rest], Awaitable[None]] | None = None


def _get(instance: str = "sales", metadata: tuple[tuple[str, str], ...] | None = None) -> Any:
    def call(h: Harness) -> Awaitable[Any]:
        sent = h.metadata() if metadata is None else metadata
        return h.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=instance), metadata=sent
        )

    return call


def _update(**fields: Any) -> GrpcMistake:
    def call(h: Harness) -> Awaitable[Any]:
        request = pb.UpdatePrivacySettingsRequest(instance="sales", **fields)
        return h.stub.UpdatePrivacySettings(request, metadata=h.metadata())

    return call


def _list(**fields: Any) -> GrpcMistake:
    def call(h: Harness) -> Awaitable[Any]:
        request = pb.ListUpdateOperationsRequest(instance="sales", **fields)
        return h.stub.ListUpdateOperations(request, metadata=h.metadata())

    return call


async def _first_use_of_the_key(h: Harness, r: Rest) -> None:
    await h.stub.UpdatePrivacySettings(
        pb.UpdatePrivacySettingsRequest(instance="sales", settings=LAST_SEEN_NONE, request_id=KEY),
        metadata=h.metadata(),
    )


MISTAKES = {
    "no token": Mistake("TOKEN_MISSING", _get(metadata=()), lambda r: r.get("sales", token=None)),
    "an empty token": Mistake(
        "TOKEN_MISSING", _get(metadata=(("token", ""),)), lambda r: r.get("sales", token="")
    ),
    "an unknown token": Mistake(
        "TOKEN_INVALID",
        _get(metadata=(("token", "nobody"),)),
        lambda r: r.get("sales", token="nobody"),
    ),
    "an instance token for another instance": Mistake(
        "INSTANCE_FORBIDDEN",
        _get("support", (("token", SALES_TOKEN),)),
        lambda r: r.get("support", token=SALES_TOKEN),
    ),
    "another account's instance": Mistake(
        "INSTANCE_FORBIDDEN", _get("other"), lambda r: r.get("other")
    ),
    "an unknown instance": Mistake("INSTANCE_NOT_FOUND", _get("nope"), lambda r: r.get("nope")),
    "an update that sets nothing": Mistake("NO_SETTINGS", _update(), lambda r: r.post("sales", {})),
    "a request id that is not a UUID": Mistake(
        "INVALID_REQUEST_ID",
        _update(settings=LAST_SEEN_NONE, request_id="retry-1"),
        lambda r: r.post("sales", LAST_SEEN_NONE_BODY, headers={"Idempotency-Key": "retry-1"}),
    ),
    "a request id reused for another request": Mistake(
        "REQUEST_ID_REUSED",
        _update(settings=visibility(status=spb.VISIBILITY_VALUE_NONE), request_id=KEY),
        lambda r: r.post(
            "sales", {"visibility": {"status": "none"}}, headers={"Idempotency-Key": KEY}
        ),
        before=_first_use_of_the_key,
    ),
    "an unknown failure policy": Mistake(
        "INVALID_VALUE",
        _update(settings=LAST_SEEN_NONE, failure_policy=9),
        lambda r: r.post("sales", LAST_SEEN_NONE_BODY, tail="?failurePolicy=9"),
    ),
    "a negative page size": Mistake(
        "INVALID_PAGE_SIZE",
        _list(page_size=-1),
        lambda r: r.get("sales", tail="/operations?pageSize=-1"),
    ),
    "a page token the gateway never gave": Mistake(
        "INVALID_PAGE_TOKEN",
        _list(page_token="not-a-page-token"),
        lambda r: r.get("sales", tail="/operations?pageToken=not-a-page-token"),
    ),
    "a page token too long to be one": Mistake(
        "INVALID_PAGE_TOKEN",
        _list(page_token="W" * 300),
        lambda r: r.get("sales", tail="/operations?pageToken=" + "W" * 300),
    ),
    "a page token with an infinite time": Mistake(
        "INVALID_PAGE_TOKEN",
        _list(page_token=INFINITE_TOKEN),
        lambda r: r.get("sales", tail="/operations?pageToken=" + INFINITE_TOKEN),
    ),
    "a page token that is not UTF-8": Mistake(
        "INVALID_PAGE_TOKEN",
        _list(page_token=NOT_UTF8_TOKEN),
        lambda r: r.get("sales", tail="/operations?pageToken=" + NOT_UTF8_TOKEN),
    ),
    "an instance name of 6 KB": Mistake(
        "INSTANCE_NOT_FOUND", _get("x" * 6000), lambda r: r.get("x" * 6000)
    ),
    "an instance name with a line break": Mistake(
        "INSTANCE_NOT_FOUND", _get("sales\nx"), lambda r: r.get("sales%0Ax")
    ),
    "an unknown operation": Mistake(
        "OPERATION_NOT_FOUND",
        lambda h: h.stub.GetUpdateOperation(
            pb.GetUpdateOperationRequest(instance="sales", operation_id="nope"),
            metadata=h.metadata(),
        ),
        lambda r: r.get("sales", tail="/operations/nope"),
    ),
}


async def _grpc_answer(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    status = rpc_status.from_call(raised.value)
    assert status is not None
    return raised.value.code(), error_info(status).reason, raised.value.details() or ""


def _in_rest_names(message: str) -> str:
    for grpc_name, rest_name in WIRE_NAMES.items():
        message = message.replace(grpc_name, rest_name)
    return message


def _assert_same(reason: str, grpc_answer: tuple[grpc.StatusCode, str, str], reply: Reply) -> None:
    entry = errors.CATALOGUE[reason]
    code, grpc_reason, grpc_message = grpc_answer
    assert (code.name, grpc_reason) == (entry.code.value, reason)
    assert (reply.status, reply.body["error"]["reason"]) == (entry.http_status, reason)
    assert reply.body["success"] is False
    assert _in_rest_names(grpc_message) == reply.body["error"]["message"]


@pytest.mark.parametrize("mistake", MISTAKES.values(), ids=MISTAKES.keys())
async def test_the_same_mistake_gets_the_same_answer_on_both_edges(
    gateway: Harness, rest: Rest, mistake: Mistake
) -> None:
    if mistake.before is not None:
        await mistake.before(gateway, rest)
    unchanged = Unchanged(gateway.session())

    grpc_answer = await _grpc_answer(mistake.grpc(gateway))
    reply = await mistake.rest(rest)

    _assert_same(mistake.reason, grpc_answer, reply)
    unchanged.check()


async def test_an_instance_that_is_not_connected_is_the_same_answer(
    gateway: Harness, rest: Rest
) -> None:
    gateway.session().disconnect()
    unchanged = Unchanged(gateway.session())

    grpc_answer = await _grpc_answer(gateway.update(LAST_SEEN_NONE))
    reply = await rest.post("sales", LAST_SEEN_NONE_BODY)

    _assert_same("INSTANCE_NOT_CONNECTED", grpc_answer, reply)
    unchanged.check()


async def test_the_rate_limit_is_the_same_answer(make_gateway: GatewayFactory) -> None:
    """One limit per token across both edges: the gRPC call uses it up, both are refused."""
    harness: Harness = await make_gateway(rate_limit_per_minute=1)
    await harness.get()
    async with serving(harness) as rest:
        grpc_answer = await _grpc_answer(_get()(harness))
        reply = await rest.get("sales", token=ACME_TOKEN)

    _assert_same("RATE_LIMITED", grpc_answer, reply)
    assert reply.headers["Retry-After"].isdigit()


async def test_too_many_calls_at_once_is_the_same_answer(make_gateway: GatewayFactory) -> None:
    """One cap on calls in progress across both edges: an open gRPC watch holds the only place."""
    harness: Harness = await make_gateway(max_concurrent_calls=1)
    watch = harness.stub.WatchPrivacySettings(
        pb.WatchPrivacySettingsRequest(instance="sales"), metadata=harness.metadata()
    )
    await watch.read()
    async with serving(harness) as rest:
        grpc_answer = await _grpc_answer(_get()(harness))
        reply = await rest.get("sales", token=ACME_TOKEN)
    watch.cancel()

    _assert_same("TOO_MANY_CALLS", grpc_answer, reply)
    assert reply.headers["Retry-After"] == "1"


async def test_a_huge_page_size_is_no_mistake_on_either_edge(gateway: Harness, rest: Rest) -> None:
    """Not a row of the table, since neither edge refuses it: a page size of 10 digits (or, on
    REST, too many to parse) is over 100, so 100, and both edges list the same page."""
    for value in (spb.VISIBILITY_VALUE_NONE, spb.VISIBILITY_VALUE_CONTACTS):
        await gateway.update(visibility(last_seen=value))

    page = await _list(page_size=2**31 - 1)(gateway)
    replies = [
        await rest.get("sales", tail=f"/operations?pageSize={size}")
        for size in ("2147483647", "9" * 3000)
    ]

    assert len(page.operations) == 2
    for reply in replies:
        assert reply.status == 200
        assert [o["id"] for o in reply.body["operations"]] == [o.id for o in page.operations]
        assert reply.body["nextPageToken"] == page.next_page_token == ""


def test_every_reason_both_edges_share_has_a_row_here_or_is_an_updates_end() -> None:
    """The table covers what a caller can get wrong on both edges; the rest of the shared
    reasons are how an update ends (WhatsApp's answers, halts), which no caller mistake makes."""
    covered = {m.reason for m in MISTAKES.values()}
    covered |= {"INSTANCE_NOT_CONNECTED", "RATE_LIMITED", "TOO_MANY_CALLS"}
    shared = {r.name for r in errors.CATALOGUE.values() if r.edges is errors.Edge.BOTH}
    caller_mistakes = {
        r.name
        for r in errors.CATALOGUE.values()
        if r.edges is errors.Edge.BOTH and 400 <= r.http_status < 500
    }
    # WhatsApp's own rate limit ends an update (REST 429): it is WhatsApp's answer, not a mistake.
    caller_mistakes.discard("WHATSAPP_RATE_LIMITED")

    assert caller_mistakes <= covered, caller_mistakes - covered
    assert covered <= shared
