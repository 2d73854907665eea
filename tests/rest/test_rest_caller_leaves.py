"""A REST caller who hangs up mid-update stops it, as a gRPC caller who cancels does.

The stanza in flight finishes (WhatsApp applies it whether or not anyone waits), no further
stanza starts, and the journal records the operation as CANCELLED with what was applied. Both
forms are checked: the plain JSON reply (the caller waits for the outcome) and the NDJSON
progress stream (the caller hangs up after the first field started). The client is a raw socket
that is closed, so nothing of an HTTP client library decides what "hanging up" means.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import DEFAULT_SETTINGS, SentStanza
from service.settings import Field, Settings
from tests.helpers.harness import ACME_TOKEN
from tests.helpers.rest_client import SLOW_LATENCY_MS as LATENCY_MS
from tests.helpers.rest_client import Rest
from tests.helpers.updates import FIVE_CHANGES

BODY = json.dumps(
    {
        "visibility": {
            "lastSeen": "none",
            "status": "none",
            "profile": "none",
            "online": "match_last_seen",
        },
        "privacy": {"readReceipts": "none"},
    }
).encode()


def _request(accept: str) -> bytes:
    host = "127.0.0.1"
    head = (
        f"POST /api/profile/privacy/sales HTTP/1.1\r\nHost: {host}\r\ntoken: {ACME_TOKEN}\r\n"
        f"Content-Type: application/json\r\nAccept: {accept}\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    )
    return head.encode() + BODY


async def _connect(rest: Rest) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(rest.base.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def _until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def _journaled(rest: Rest) -> Any:
    """The instance's one operation once it has ended, as the journal holds it (over REST)."""
    operation: dict[str, Any] = {}

    async def ended() -> bool:
        reply = await rest.get("sales", tail="/operations")
        assert reply.status == 200
        (listed,) = reply.body["operations"]
        operation.update(listed)
        return bool(listed["state"] != "RUNNING")

    deadline = time.monotonic() + 5
    while not await ended():
        assert time.monotonic() < deadline, operation
        await asyncio.sleep(0.02)
    return operation


async def _assert_stopped_after_the_first_field(rest: Rest) -> None:
    session = rest.harness.session()
    # Let whatever would have followed the first stanza have had its time.
    await asyncio.sleep(4 * LATENCY_MS / 1000)
    operation = await _journaled(rest)

    # The fetch and the stanza in flight, nothing after the hang-up.
    assert session.sent == [SentStanza(None, None), SentStanza("last", "none")]
    # The stanza in flight was not abandoned: WhatsApp holds its value, and the journal says so.
    assert session.server_settings == DEFAULT_SETTINGS.with_value(Field.LAST_SEEN, "none")
    assert operation["state"] == "CANCELLED"
    assert operation["error"]["reason"] == "CANCELLED"
    states = {f["field"]: f["state"] for f in operation["fields"]}
    assert states == {
        "visibility.lastSeen": "APPLIED",
        "visibility.status": "NOT_ATTEMPTED",
        "visibility.profile": "NOT_ATTEMPTED",
        "visibility.online": "NOT_ATTEMPTED",
        "privacy.readReceipts": "NOT_ATTEMPTED",
    }
    # The instance is free again: a later update goes through.
    reply = await rest.post("sales", {"privacy": {"readReceipts": "none"}})
    assert reply.status == 200
    assert session.server_settings[Field.READ_RECEIPTS] == "none"


async def test_a_rest_caller_who_hangs_up_on_the_json_reply_stops_the_update(
    slow_rest: Rest,
) -> None:
    session = slow_rest.harness.session()
    _reader, writer = await _connect(slow_rest)
    writer.write(_request("application/json"))
    await writer.drain()

    # The first set stanza is in flight (the fetch came first).
    await _until(lambda: len(session.sent) == 2)
    await _hang_up(writer)

    await _assert_stopped_after_the_first_field(slow_rest)


async def test_a_rest_caller_who_hangs_up_on_the_ndjson_stream_stops_the_update(
    slow_rest: Rest,
) -> None:
    reader, writer = await _connect(slow_rest)
    writer.write(_request("application/x-ndjson"))
    await writer.drain()

    # Read the stream up to the first field's STARTED line, then go away.
    while True:
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line, "the stream ended before the first field started"
        text = line.strip()
        if text.startswith(b"{") and b'"event":"field"' in text:
            event = json.loads(text)
            assert (event["field"], event["state"]) == ("visibility.lastSeen", "STARTED")
            break
    await _hang_up(writer)

    await _assert_stopped_after_the_first_field(slow_rest)


async def test_a_rest_caller_who_stays_gets_every_field(slow_rest: Rest) -> None:
    """The control: the same update, waited for, applies all five fields."""
    reply = await slow_rest.request(
        "POST",
        "/api/profile/privacy/sales",
        data=BODY,
        headers={"token": ACME_TOKEN, "Content-Type": "application/json"},
    )

    assert reply.status == 200
    assert [f["state"] for f in reply.body["fields"]] == ["APPLIED"] * 5
    assert slow_rest.harness.session().server_settings == Settings(
        {**DEFAULT_SETTINGS, **FIVE_CHANGES}
    )


@pytest.mark.parametrize("form", ["application/json", "application/x-ndjson"])
async def test_a_grpc_listener_sees_the_rest_hang_up_as_cancelled(
    slow_rest: Rest, form: str
) -> None:
    """The journal is shared by both edges: gRPC reads the same CANCELLED operation."""
    harness = slow_rest.harness
    session = harness.session()
    _reader, writer = await _connect(slow_rest)
    writer.write(_request(form))
    await writer.drain()
    await _until(lambda: len(session.sent) == 2)
    await _hang_up(writer)
    await _journaled(slow_rest)

    listed = await harness.stub.ListUpdateOperations(
        pb.ListUpdateOperationsRequest(instance="sales"), metadata=harness.metadata()
    )

    (operation,) = listed.operations
    assert operation.state == pb.OPERATION_STATE_CANCELLED
    assert operation.error_reason == "CANCELLED"
