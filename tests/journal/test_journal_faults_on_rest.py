"""The journal's own faults as a REST caller meets them: the same real full disk and real lock as
``test_journal_faults.py``, on the gateway's HTTP surface.

An update the journal stops part-way answers in the envelope what a gRPC caller reads in the
status details: the reason, the message, the operation id, the settings as they now are and
every field's outcome, so the caller knows which fields are live on WhatsApp. While the journal
owes writes, the instance's next update is 503 JOURNAL_UNAVAILABLE with a Retry-After; once it
works again, the operation REST reads back says the same as the envelope did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from service.http.body import settings_json
from tests.helpers.faults import JournalLock, SmallFilesystem
from tests.helpers.harness import Harness
from tests.helpers.operations import _defaults_plus, _sets
from tests.helpers.rest_client import Reply, Rest, serving
from tests.helpers.updates import FIVE_CHANGES

FIELDS = list(FIVE_CHANGES)
BODY = settings_json(FIVE_CHANGES)
LATER = {"permissions": {"groupAdd": "contacts"}}
JOURNAL_CANNOT = "The operation journal cannot record updates: "


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


@pytest.fixture
async def disk_rest(disk_gateway: tuple[Harness, SmallFilesystem]) -> AsyncIterator[Any]:
    gateway, disk = disk_gateway
    async with serving(gateway) as rest:
        yield rest, disk


@pytest.fixture
async def slow_rest_journal(slow_gateway: Harness) -> AsyncIterator[Rest]:
    async with serving(slow_gateway) as rest:
        yield rest


def _envelope_of_a_stopped_update(reply: Reply, rest: Rest, applied: int, reason: str) -> None:
    """A 500 whose envelope names the reason, the operation and which fields are live."""
    assert reply.status == 500, reply.body
    body = reply.body
    assert body["success"] is False
    assert body["error"]["reason"] == reason
    field_name = FIELDS[applied].spec.rest_name if applied < len(FIELDS) else ""
    message = body["error"]["message"]
    if reason == "JOURNAL_FAILED":
        assert (
            message
            == f"the journal could not record the update before updating {field_name} privacy"
        )
    else:
        assert message.startswith(
            "the update was applied, but the journal could not record it yet: "
        )
    assert body["operationId"]
    states = [f["state"] for f in body["fields"]]
    assert states == ["APPLIED"] * applied + ["NOT_ATTEMPTED"] * (len(FIELDS) - applied)
    assert [f["field"] for f in body["fields"]] == [f.spec.rest_path for f in FIELDS]
    live = _defaults_plus(FIVE_CHANGES, FIELDS[:applied])
    session = rest.harness.session()
    # What the envelope says is live is exactly what WhatsApp holds: nothing went out after the
    # write that failed.
    assert body["settings"] == settings_json(live)
    assert session.server_settings == live
    assert len(_sets(session)) == applied


async def _refused_while_owed(rest: Rest) -> None:
    refused = await rest.post("sales", LATER)
    assert refused.status == 503, refused.body
    assert refused.body["error"]["reason"] == "JOURNAL_UNAVAILABLE"
    assert refused.body["error"]["message"].startswith(JOURNAL_CANNOT)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "fields" not in refused.body


async def _journal_agrees(rest: Rest, reply: Reply, reason: str) -> None:
    """Once the journal works again, the operation REST reads back is what the envelope said."""
    path = f"/api/profile/privacy/sales/operations/{reply.body['operationId']}"
    deadline = time.monotonic() + 10
    while True:
        read = await rest.request("GET", path, headers={"token": rest.harness.token})
        assert read.status == 200, read.body
        operation = read.body["operation"]
        if operation["state"] != "RUNNING":
            break
        assert time.monotonic() < deadline, "the journal never caught up"
        await asyncio.sleep(0.1)
    assert operation["state"] == "FAILED"
    assert operation["error"]["reason"] == reason
    told = [(f["field"], f["state"]) for f in reply.body["fields"]]
    assert [(f["field"], f["state"]) for f in operation["fields"]] == told


async def _accepted_again(rest: Rest) -> None:
    deadline = time.monotonic() + 10
    while True:
        reply = await rest.post("sales", LATER)
        if reply.status == 200:
            return
        assert time.monotonic() < deadline, reply.body
        await asyncio.sleep(0.2)


async def test_a_full_disk_before_an_update_is_503_and_nothing_is_sent(disk_rest: Any) -> None:
    rest, disk = disk_rest
    before = rest.harness.session().server_settings
    disk.fill()

    reply = await rest.post("sales", BODY)

    assert reply.status == 503, reply.body
    assert reply.body["success"] is False
    assert reply.body["error"]["reason"] == "JOURNAL_UNAVAILABLE"
    assert reply.body["error"]["message"].startswith(JOURNAL_CANNOT)
    # Nothing was applied, and the envelope names no field as live.
    assert "fields" not in reply.body
    assert _sets(rest.harness.session()) == []
    assert rest.harness.session().server_settings == before
    disk.free()
    await _accepted_again(rest)


@pytest.mark.parametrize("applied", [1, 3, len(FIELDS)])
async def test_a_full_disk_mid_update_names_the_live_fields_in_the_envelope(
    disk_rest: Any, applied: int
) -> None:
    rest, disk = disk_rest
    session = rest.harness.session()
    posted = asyncio.create_task(rest.post("sales", BODY))
    await _until(lambda: len(_sets(session)) == applied)
    disk.fill()

    reply = await posted

    reason = "JOURNAL_FAILED" if applied < len(FIELDS) else "JOURNAL_BEHIND"
    _envelope_of_a_stopped_update(reply, rest, applied, reason)
    await _refused_while_owed(rest)
    disk.free()
    await _journal_agrees(rest, reply, reason)
    await _accepted_again(rest)


@pytest.mark.parametrize("applied", [2, len(FIELDS)])
async def test_a_lock_held_past_patience_names_the_live_fields_in_the_envelope(
    slow_rest_journal: Rest, applied: int, impatient_journal: None
) -> None:
    rest = slow_rest_journal
    session = rest.harness.session()
    lock = JournalLock(rest.harness.gateway.operations.journal.path)
    await lock.start()
    posted = asyncio.create_task(rest.post("sales", BODY))
    await _until(lambda: len(_sets(session)) == applied)
    await lock.take()
    try:
        reply = await posted
        reason = "JOURNAL_FAILED" if applied < len(FIELDS) else "JOURNAL_BEHIND"
        _envelope_of_a_stopped_update(reply, rest, applied, reason)
        await _refused_while_owed(rest)
    finally:
        await lock.release()
    await _journal_agrees(rest, reply, reason)
    await _accepted_again(rest)
