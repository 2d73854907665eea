"""What the REST contract does not document still gets its envelope, a clear message and the
right status, and changes nothing; and the NDJSON progress stream, line by line.

Every reply here must be JSON (never aiohttp's bare text 500 or an HTML page).
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.web_request import BaseRequest

from service import errors
from service.grpc.convert import settings_to_proto
from service.settings import Field, Settings
from tests.helpers.harness import (
    ACME_TOKEN,
    GLOBEX_TOKEN,
    SALES_TOKEN,
    GatewayFactory,
    Harness,
)
from tests.helpers.rest_client import PATH, Reply, Rest, Unchanged, serving
from tests.helpers.seed import EXAMPLES, FULLY_RESTRICTIVE_RESPONSE, settings_from_body

LAST_SEEN_VALUES = "all, contacts, contact_blacklist, none"
NDJSON = "application/x-ndjson"


def assert_error(reply: Reply, status: int, message: str | None = None) -> str:
    """The contract's envelope; returns the message."""
    assert reply.status == status, reply.body
    assert reply.body["success"] is False, reply.body
    error_message = reply.body["error"]["message"]
    assert isinstance(error_message, str)
    assert error_message
    if message is not None:
        assert error_message == message
    return error_message


# -- warnings --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")
async def test_a_request_emits_no_warning(rest: Rest, monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp warns once per process and key; forget earlier requests so this one is the first.
    monkeypatch.setattr(BaseRequest, "_seen_str_keys", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reply = await rest.get("sales")

    assert reply.status == 200
    assert [str(w.message) for w in caught] == []


# -- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"visibility": ',
        b"{visibility: {}}",
        b"",
        b"\xff\xfe",
        b'{"privacy": {"readReceipts": "none"}} x',
    ],
    ids=["truncated", "unquoted-key", "empty", "not-utf8", "trailing-garbage"],
)
async def test_malformed_json(rest: Rest, unchanged: Unchanged, raw: bytes) -> None:
    reply = await rest.post_raw("sales", raw)

    message = assert_error(reply, 400)
    assert message.startswith("Malformed JSON:")
    unchanged.check()


@pytest.mark.parametrize("depth", [2000, 8000])
async def test_deeply_nested_json_is_malformed_not_a_crash(
    rest: Rest, unchanged: Unchanged, depth: int
) -> None:
    # Fits the size limit, but nests deeper than Python's recursion limit.
    reply = await rest.post_raw("sales", b"[" * depth + b"]" * depth)

    message = assert_error(reply, 400)
    assert message.startswith("Malformed JSON:")
    unchanged.check()


async def test_huge_integer_is_an_invalid_value_not_a_crash(
    rest: Rest, unchanged: Unchanged
) -> None:
    # 5000 digits: more than Python's default int conversion limit (4300), under 16 KiB.
    raw = b'{"visibility": {"lastSeen": ' + b"9" * 5000 + b"}}"

    reply = await rest.post_raw("sales", raw)

    assert_error(reply, 400)
    unchanged.check()


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (5, "5"),
        (None, "null"),
        (["none"], '["none"]'),
        (True, "true"),
        ({"value": "none"}, '{"value": "none"}'),
        (1.5, "1.5"),
    ],
    ids=["number", "null", "list", "bool", "object", "float"],
)
async def test_value_of_the_wrong_json_type(
    rest: Rest, unchanged: Unchanged, value: Any, shown: str
) -> None:
    reply = await rest.post("sales", {"visibility": {"lastSeen": value, "status": "none"}})

    assert_error(reply, 400, f"Invalid lastSeen value: {shown}. Valid values: {LAST_SEEN_VALUES}")
    unchanged.check()


@pytest.mark.parametrize(
    ("section", "value"),
    [
        ("visibility", "none"),
        ("visibility", ["lastSeen", "none"]),
        ("privacy", 1),
        ("permissions", True),
        ("privacy", "readReceipts=none"),
    ],
)
async def test_subsection_that_is_not_an_object(
    rest: Rest, unchanged: Unchanged, section: str, value: Any
) -> None:
    body = {"permissions": {"groupAdd": "contacts"}, section: value}

    reply = await rest.post("sales", body)

    assert_error(reply, 400, f"{section} must be an object")
    unchanged.check()


@pytest.mark.parametrize("section", ["visibility", "privacy", "permissions"])
async def test_null_subsection_is_not_an_object(
    rest: Rest, unchanged: Unchanged, section: str
) -> None:
    # The OpenAPI document declares each subsection `type: object` (not nullable), like any
    # other non-object; a null must not be read as "absent" while the rest is applied.
    other = "permissions" if section != "permissions" else "privacy"
    valid = {"permissions": {"groupAdd": "contacts"}, "privacy": {"readReceipts": "none"}}
    body = {section: None, other: valid[other]}

    reply = await rest.post("sales", body)

    assert_error(reply, 400, f"{section} must be an object")
    unchanged.check()


async def test_unknown_top_level_key(rest: Rest, unchanged: Unchanged) -> None:
    reply = await rest.post("sales", {"privacy": {"readReceipts": "none"}, "settings": {}})

    assert_error(
        reply, 400, "Unknown field: settings. Valid fields: visibility, privacy, permissions"
    )
    unchanged.check()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"visibility": {"lastseen": "none"}},
            "Unknown field: visibility.lastseen. Valid fields: lastSeen, status, profile, online",
        ),
        (
            # A real field, in the wrong subsection.
            {"visibility": {"lastSeen": "none", "readReceipts": "none"}},
            "Unknown field: visibility.readReceipts. Valid fields: lastSeen, status, profile, "
            "online",
        ),
        (
            {"permissions": {"groupAdd": "contacts", "last_seen": "none"}},
            "Unknown field: permissions.last_seen. Valid fields: callAdd, groupAdd",
        ),
    ],
    ids=["case", "wrong-section", "proto-name"],
)
async def test_unknown_nested_key(
    rest: Rest, unchanged: Unchanged, body: dict[str, Any], message: str
) -> None:
    reply = await rest.post("sales", body)

    assert_error(reply, 400, message)
    unchanged.check()


@pytest.mark.parametrize("body", [[], "x", 5, None, [{"visibility": {"lastSeen": "none"}}]])
async def test_body_that_is_not_an_object(rest: Rest, unchanged: Unchanged, body: Any) -> None:
    reply = await rest.post("sales", body)

    assert_error(reply, 400, "Request body must be a JSON object")
    unchanged.check()


async def test_body_over_the_size_limit(rest: Rest, unchanged: Unchanged) -> None:
    body = {"privacy": {"readReceipts": "none"}, "padding": "x" * 20 * 1024}

    reply = await rest.post("sales", body)

    assert_error(reply, 413, "Request body exceeds 16384 bytes")
    unchanged.check()


async def test_chunked_body_over_the_size_limit(rest: Rest, unchanged: Unchanged) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"privacy": {"readReceipts": "none"}, "padding": "'
        for _ in range(20):
            yield b"x" * 1024
        yield b'"}'

    reply = await rest.post_raw("sales", chunks())

    assert_error(reply, 413, "Request body exceeds 16384 bytes")
    unchanged.check()


async def test_body_just_under_the_size_limit_is_read(rest: Rest) -> None:
    raw = json.dumps({"privacy": {"readReceipts": "none"}}).encode()
    raw = raw[:-1] + b" " * (16 * 1024 - len(raw)) + b"}"
    assert len(raw) == 16 * 1024

    reply = await rest.post_raw("sales", raw)

    assert reply.status == 200, reply.body


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_wrong_content_type(rest: Rest, unchanged: Unchanged, content_type: str) -> None:
    reply = await rest.post_raw(
        "sales", json.dumps(EXAMPLES["only groupAdd"]).encode(), content_type=content_type
    )

    assert_error(reply, 415, f"Content-Type must be application/json, not {content_type}")
    unchanged.check()


async def test_missing_content_type(rest: Rest, unchanged: Unchanged) -> None:
    reply = await rest.post_raw(
        "sales", json.dumps(EXAMPLES["only groupAdd"]).encode(), content_type=None
    )

    # Not "not application/octet-stream": the caller sent no Content-Type at all.
    assert_error(reply, 415, "Content-Type must be application/json, not missing")
    unchanged.check()


async def test_json_content_type_with_charset_is_accepted(rest: Rest) -> None:
    reply = await rest.post_raw(
        "sales",
        json.dumps(EXAMPLES["only groupAdd"]).encode(),
        content_type="application/json; charset=utf-8",
    )

    assert reply.status == 200, reply.body


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    ("token", "instance", "expected"),
    [
        (None, "sales", (401, errors.TOKEN_MISSING.message)),
        ("", "sales", (401, errors.TOKEN_MISSING.message)),
        ("not-a-token", "sales", (401, "Invalid token")),
        (ACME_TOKEN.upper(), "sales", (401, "Invalid token")),
        (SALES_TOKEN, "support", (403, "This token may not act on instance support")),
        # An instance token learns nothing about other names, existing or not.
        (SALES_TOKEN, "nope", (403, "This token may not act on instance nope")),
        (ACME_TOKEN, "other", (403, "This token may not act on instance other")),
        (GLOBEX_TOKEN, "sales", (403, "This token may not act on instance sales")),
        (ACME_TOKEN, "nope", (404, "Instance not found: nope")),
    ],
    ids=[
        "missing",
        "empty",
        "wrong",
        "wrong-case",
        "instance-token-other-instance",
        "instance-token-unknown-instance",
        "account-token-other-account",
        "other-account-token",
        "unknown-instance",
    ],
)
async def test_who_may_call(
    rest: Rest,
    method: str,
    token: str | None,
    instance: str,
    expected: tuple[int, str],
) -> None:
    sessions = [rest.harness.session(name) for name in ("sales", "support", "other")]
    before = [Unchanged(s) for s in sessions]
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["token"] = token
    data = json.dumps(EXAMPLES["fully restrictive"]).encode() if method == "POST" else None

    reply = await rest.request(method, PATH.format(instance), data=data, headers=headers)

    assert_error(reply, *expected)
    for state in before:
        state.check()


async def test_rate_limit(make_gateway: GatewayFactory) -> None:
    harness: Harness = await make_gateway(rate_limit_per_minute=2)
    async with serving(harness) as rest:
        assert (await rest.post("sales", EXAMPLES["only groupAdd"])).status == 200
        assert (await rest.get("sales")).status == 200
        unchanged = Unchanged(harness.session("sales"))

        reply = await rest.post("sales", EXAMPLES["fully restrictive"])

        assert_error(reply, 429, "Rate limit exceeded: 2 requests per minute")
        assert 1 <= int(reply.headers["Retry-After"]) <= 60
        unchanged.check()
        # Per token: another token still gets through.
        assert (
            await rest.post("sales", EXAMPLES["only groupAdd"], token=SALES_TOKEN)
        ).status == 200


async def test_rate_limit_is_shared_with_grpc(make_gateway: GatewayFactory) -> None:
    harness: Harness = await make_gateway(rate_limit_per_minute=2)
    async with serving(harness) as rest:
        await harness.get("sales")
        await harness.update(settings_to_proto(Settings({Field.GROUP_ADD: "contacts"})))

        reply = await rest.post("sales", EXAMPLES["only groupAdd"])

        assert_error(reply, 429, "Rate limit exceeded: 2 requests per minute")
        assert 1 <= int(reply.headers["Retry-After"]) <= 60


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/api/profile/privacy"),
        ("POST", "/api/profile/privacy/"),
        ("GET", "/api/profile/privacy/sales/extra"),
        ("GET", "/index.html"),
    ],
)
async def test_unknown_path_is_a_404_envelope(rest: Rest, method: str, path: str) -> None:
    reply = await rest.request(method, path, headers={"token": ACME_TOKEN, "Accept": "text/html"})

    assert_error(reply, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", PATH.format("sales"), {"GET", "POST", "HEAD"}),
        ("DELETE", PATH.format("sales"), {"GET", "POST", "HEAD"}),
        ("PATCH", PATH.format("sales"), {"GET", "POST", "HEAD"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("DELETE", "/openapi.json", {"GET", "HEAD"}),
    ],
)
async def test_wrong_method_is_a_405_envelope(
    rest: Rest, unchanged: Unchanged, method: str, path: str, allowed: set[str]
) -> None:
    data = json.dumps(EXAMPLES["fully restrictive"]).encode()
    reply = await rest.request(
        method,
        path,
        data=data,
        headers={"token": ACME_TOKEN, "Content-Type": "application/json"},
    )

    assert_error(reply, 405)
    assert {m.strip() for m in reply.headers["Allow"].split(",")} == allowed
    unchanged.check()


async def test_healthz(rest: Rest) -> None:
    reply = await rest.request("GET", "/healthz")

    assert reply.status == 200
    assert reply.body["status"] == "ok"


# -- NDJSON progress -------------------------------------------------------------------------


async def _ndjson(rest: Rest, body: Any, instance: str = "sales") -> tuple[int, list[Any]]:
    async with rest.client.post(
        rest.base + PATH.format(instance),
        data=json.dumps(body).encode(),
        headers={"token": ACME_TOKEN, "Content-Type": "application/json", "Accept": NDJSON},
    ) as response:
        assert response.content_type == NDJSON
        raw = await response.read()
        status = response.status
    assert raw.endswith(b"\n")
    return status, [json.loads(line) for line in raw.decode().splitlines()]


def _field_events(lines: list[Any]) -> list[tuple[str, str]]:
    return [(line["field"], line["state"]) for line in lines if line["event"] == "field"]


async def test_ndjson_streams_plan_fields_then_snapshot(rest: Rest) -> None:
    status, lines = await _ndjson(rest, EXAMPLES["fully restrictive"])

    assert status == 200
    plan, *fields, snapshot = lines
    assert plan["event"] == "plan"
    # Status is already "contacts" on a fresh account: six stanzas, not seven.
    assert plan["stanzas"] == 6
    assert [(f["field"], f["current"], f["target"], f["changes"]) for f in plan["fields"]] == [
        ("visibility.lastSeen", "all", "none", True),
        ("visibility.status", "contacts", "contacts", False),
        ("visibility.profile", "all", "contacts", True),
        ("visibility.online", "all", "match_last_seen", True),
        ("privacy.readReceipts", "all", "none", True),
        ("permissions.callAdd", "all", "known", True),
        ("permissions.groupAdd", "all", "contacts", True),
    ]
    assert _field_events(fields) == [
        ("visibility.lastSeen", "STARTED"),
        ("visibility.lastSeen", "APPLIED"),
        ("visibility.status", "UNCHANGED"),
        ("visibility.profile", "STARTED"),
        ("visibility.profile", "APPLIED"),
        ("visibility.online", "STARTED"),
        ("visibility.online", "APPLIED"),
        ("privacy.readReceipts", "STARTED"),
        ("privacy.readReceipts", "APPLIED"),
        ("permissions.callAdd", "STARTED"),
        ("permissions.callAdd", "APPLIED"),
        ("permissions.groupAdd", "STARTED"),
        ("permissions.groupAdd", "APPLIED"),
    ]
    assert len(fields) == 13
    assert snapshot == {"event": "snapshot", "settings": FULLY_RESTRICTIVE_RESPONSE}
    assert rest.harness.session("sales").server_settings == settings_from_body(
        FULLY_RESTRICTIVE_RESPONSE
    )


async def test_ndjson_failure_ends_with_an_error_line(rest: Rest) -> None:
    session = rest.harness.session("sales")
    session.fail_field(Field.ONLINE, "not-acceptable 406")

    status, lines = await _ndjson(rest, EXAMPLES["fully restrictive"])

    # The stream had begun with a 200 before WhatsApp refused; the last line says it failed.
    assert status == 200
    *_, snapshot, error = lines
    assert error["event"] == "error"
    assert error["error"]["message"] == "failed to update online privacy: not-acceptable 406"
    expected = {
        "visibility": {
            "lastSeen": "none",
            "status": "contacts",
            "profile": "contacts",
            "online": "all",
        },
        "privacy": {"readReceipts": "all"},
        "permissions": {"callAdd": "all", "groupAdd": "all"},
    }
    assert snapshot == {"event": "snapshot", "settings": expected}
    assert session.server_settings == settings_from_body(expected)
    assert _field_events(lines)[-4:] == [
        ("visibility.online", "FAILED"),
        ("privacy.readReceipts", "NOT_ATTEMPTED"),
        ("permissions.callAdd", "NOT_ATTEMPTED"),
        ("permissions.groupAdd", "NOT_ATTEMPTED"),
    ]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "At least one privacy setting must be provided"),
        (
            {"visibility": {"lastSeen": "everyone"}},
            400,
            f"Invalid lastSeen value: everyone. Valid values: {LAST_SEEN_VALUES}",
        ),
    ],
)
async def test_ndjson_errors_before_the_plan_are_a_plain_envelope(
    rest: Rest, unchanged: Unchanged, body: Any, status: int, message: str
) -> None:
    reply = await rest.post("sales", body, headers={"Accept": NDJSON})

    assert_error(reply, status, message)
    unchanged.check()


async def test_ndjson_not_connected_is_a_plain_envelope(rest: Rest) -> None:
    session = rest.harness.session("sales")
    session.disconnect()
    unchanged = Unchanged(session)

    reply = await rest.post("sales", EXAMPLES["only groupAdd"], headers={"Accept": NDJSON})

    assert_error(reply, 400, "Instance is not connected to WhatsApp")
    unchanged.check()


async def test_ndjson_lines_arrive_progressively(make_gateway: GatewayFactory) -> None:
    harness: Harness = await make_gateway(
        instances=[{"name": "sales", "account": "acme", "latency_ms": 100}]
    )
    session = harness.session("sales")
    body = {"visibility": {"lastSeen": "none", "status": "none", "profile": "none"}}
    async with serving(harness) as rest:
        started = time.monotonic()
        async with rest.client.post(
            rest.base + PATH.format("sales"),
            data=json.dumps(body).encode(),
            headers={"token": ACME_TOKEN, "Content-Type": "application/json", "Accept": NDJSON},
        ) as response:
            first = json.loads(await asyncio.wait_for(response.content.readline(), 5))
            first_at = time.monotonic() - started
            # The plan is in hand while WhatsApp has not yet had every stanza.
            assert first["event"] == "plan"
            assert session.server_settings[Field.PROFILE] == "all"
            second = json.loads(await response.content.readline())
            assert second == {
                "event": "field",
                "field": "visibility.lastSeen",
                "state": "STARTED",
                "value": "none",
                "previous": "all",
            }
            rest_lines = [json.loads(line) for line in (await response.read()).splitlines()]
        total = time.monotonic() - started

    # Fetch + three sets at 100 ms each: the plan came after the fetch, well before the end.
    assert first_at < total - 0.25
    assert [line["event"] for line in rest_lines][-1] == "snapshot"
    applied = [
        line for line in rest_lines if line["event"] == "field" and line["state"] == "APPLIED"
    ]
    assert [a["field"] for a in applied] == [
        "visibility.lastSeen",
        "visibility.status",
        "visibility.profile",
    ]
    assert all(a["elapsedMs"] >= 90 for a in applied)
    assert session.server_settings[Field.PROFILE] == "none"
