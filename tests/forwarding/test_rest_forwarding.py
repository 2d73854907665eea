"""REST through a replica that does not own the instance: ``b`` proxies ``sales`` to ``a``.

The answer must be the owner's (status, envelope, NDJSON lines in order as they come), refusals
``b`` can judge stay on ``b``, the caller hanging up halts the owner's update, and an owner that
is gone is OWNER_UNREACHABLE in the envelope.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from service.cluster.forwarding import MARKER
from service.http.body import settings_json
from service.settings import Settings
from tests.helpers.harness import ACME_TOKEN, GLOBEX_TOKEN
from tests.helpers.in_process_replicas import Replica, ndjson, timeless_line
from tests.helpers.updates import EVERY_FIELD_CHANGED, FIVE_CHANGES

PATH = "/api/profile/privacy/{}"


def _body(settings: Settings) -> bytes:
    return json.dumps(settings_json(settings)).encode()


async def _call(
    client: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    data: bytes | None = None,
) -> tuple[int, str, dict[str, object]]:
    async with client.request(method, url, headers=headers, data=data) as response:
        return response.status, response.headers["Content-Type"], await response.json()


async def test_get_and_update_are_the_owners(
    pair: dict[str, Replica], client: aiohttp.ClientSession
) -> None:
    a, b = pair["a"], pair["b"]
    token = {"token": ACME_TOKEN}

    direct = await _call(client, "GET", a.base + PATH.format("sales"), token)
    forwarded = await _call(client, "GET", b.base + PATH.format("sales"), token)
    assert forwarded == direct

    json_type = {**token, "Content-Type": "application/json"}
    body = _body(Settings({f: v for f, v in FIVE_CHANGES.items()}))
    status, _, answer = await _call(client, "POST", b.base + PATH.format("sales"), json_type, body)
    assert status == 200
    assert answer["success"] is True
    assert a.harness.session("sales").server_settings != b.harness.session("sales").server_settings
    assert b.harness.session("sales").stanzas == 0


async def test_a_stream_is_relayed_line_by_line(
    pair: dict[str, Replica], client: aiohttp.ClientSession
) -> None:
    a, b = pair["a"], pair["b"]
    body = _body(EVERY_FIELD_CHANGED)

    direct = await ndjson(client, a.base + PATH.format("support"), body, ACME_TOKEN)
    forwarded = await ndjson(client, b.base + PATH.format("sales"), body, ACME_TOKEN)

    assert len(forwarded) == len(direct) > 9
    assert [timeless_line(line) for line in forwarded] == [timeless_line(line) for line in direct]


async def test_refusals_are_answered_without_the_owner(
    pair: dict[str, Replica], client: aiohttp.ClientSession
) -> None:
    a, b = pair["a"], pair["b"]
    for token, instance in [("wrong", "sales"), (GLOBEX_TOKEN, "sales"), (ACME_TOKEN, "nope")]:
        url = PATH.format(instance)
        before = a.all_calls()
        direct = await _call(client, "GET", a.base + url, {"token": token})
        seen = await a.counted(before + 1)
        local = await _call(client, "GET", b.base + url, {"token": token})
        assert local == direct
        await asyncio.sleep(0.2)  # time for a forwarded call, had there been one, to be counted
        assert a.all_calls() == seen
    # What only the body shows is the owner's to judge, and judged alike.
    headers = {"token": ACME_TOKEN, "Content-Type": "text/plain"}
    direct = await _call(client, "POST", a.base + PATH.format("sales"), headers, b"{}")
    forwarded = await _call(client, "POST", b.base + PATH.format("sales"), headers, b"{}")
    assert forwarded == direct
    assert direct[0] == 415


async def test_a_marked_call_is_not_forwarded_again(
    pair: dict[str, Replica], client: aiohttp.ClientSession
) -> None:
    a, b = pair["a"], pair["b"]
    seen = a.all_calls()

    status, _, body = await _call(
        client, "GET", b.base + PATH.format("sales"), {"token": ACME_TOKEN, MARKER: "x"}
    )

    assert status == 503
    assert body["error"] == {
        "message": (
            "No replica serves instance sales right now: its lease is moving to another replica"
        ),
        "reason": "INSTANCE_UNOWNED",
    }
    assert a.all_calls() == seen


async def test_the_caller_hanging_up_halts_the_owners_update(
    slow: dict[str, Replica], client: aiohttp.ClientSession
) -> None:
    a, b = slow["a"], slow["b"]
    headers = {
        "token": ACME_TOKEN,
        "Content-Type": "application/json",
        "Accept": "application/x-ndjson",
    }
    async with client.post(
        b.base + PATH.format("sales"), data=_body(FIVE_CHANGES), headers=headers
    ) as response:
        async for line in response.content:
            if json.loads(line)["event"] == "field":
                break
        response.close()
    await asyncio.sleep(0.4)

    session = a.harness.session("sales")
    assert len(session.sent) == 2  # the fetch and the stanza in flight, nothing after
    deadline = time.monotonic() + 5
    while True:
        _, _, page = await _call(
            client, "GET", a.base + PATH.format("sales") + "/operations", {"token": ACME_TOKEN}
        )
        operation = page["operations"][0]  # type: ignore[index]
        if operation["state"] != "RUNNING":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert operation["state"] == "CANCELLED"


async def test_an_owner_that_is_gone_is_owner_unreachable(
    pair: dict[str, Replica], client: aiohttp.ClientSession
) -> None:
    a, b = pair["a"], pair["b"]
    await a.stop()

    status, kind, body = await _call(
        client, "GET", b.base + PATH.format("sales"), {"token": ACME_TOKEN}
    )

    assert status == 503
    assert kind.startswith("application/json")
    assert body["success"] is False
    assert body["error"]["reason"] == "OWNER_UNREACHABLE"  # type: ignore[index]


async def test_the_owner_dying_mid_stream_ends_it_with_an_error_line(
    slow: dict[str, Replica], client: aiohttp.ClientSession
) -> None:
    a, b = slow["a"], slow["b"]
    headers = {
        "token": ACME_TOKEN,
        "Content-Type": "application/json",
        "Accept": "application/x-ndjson",
    }
    lines = []
    async with client.post(
        b.base + PATH.format("sales"), data=_body(FIVE_CHANGES), headers=headers
    ) as response:
        async for line in response.content:
            lines.append(json.loads(line))
            if lines[-1]["event"] == "field":
                await a.stop()

    assert lines[0]["event"] == "plan"
    assert lines[-1]["event"] == "error"
    assert lines[-1]["error"]["reason"] == "OWNER_UNREACHABLE"
