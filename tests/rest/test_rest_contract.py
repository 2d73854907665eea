"""The REST contract (POST/GET /api/profile/privacy/{instance}), over real HTTP, on the same
gateway as the gRPC harness.

Every example of the contract gives its documented 200; every row of its error table gives its
status and exact message in the contract's envelope, and changes nothing on WhatsApp (except the
500, which the contract says is not transactional). A REST update and a gRPC update of the same
instance see each other's results and run one at a time.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from service.grpc.convert import settings_from_proto, settings_to_proto
from service.sessions.simulated import SentStanza, SimulatedSession
from service.settings import Field, Settings
from tests.helpers.harness import SALES_TOKEN, GatewayFactory, Harness
from tests.helpers.rest_client import Reply, Rest, Unchanged, serving
from tests.helpers.seed import EXAMPLES, FULLY_RESTRICTIVE_RESPONSE, settings_from_body

UPDATED = "Privacy settings updated successfully"

#: A fresh simulated account's settings, spelled as the contract's responses spell them.
DEFAULTS_JSON: dict[str, dict[str, str]] = {
    "visibility": {"lastSeen": "all", "status": "contacts", "profile": "all", "online": "all"},
    "privacy": {"readReceipts": "all"},
    "permissions": {"callAdd": "all", "groupAdd": "all"},
}

#: The contract's error table: each field, its subsection, and its "Valid values" list, verbatim.
VALID_VALUES: dict[str, tuple[str, str]] = {
    "lastSeen": ("visibility", "all, contacts, contact_blacklist, none"),
    "status": ("visibility", "all, contacts, contact_blacklist, none"),
    "profile": ("visibility", "all, contacts, contact_blacklist, none"),
    "online": ("visibility", "all, match_last_seen"),
    "readReceipts": ("privacy", "all, none"),
    "callAdd": ("permissions", "all, known"),
    "groupAdd": ("permissions", "all, contacts, contact_blacklist"),
}

#: A value of every field that differs from a fresh account's, in the contract's table order.
EVERY_FIELD_CHANGED: dict[str, dict[str, str]] = {
    "visibility": {
        "lastSeen": "none",
        "status": "none",
        "profile": "contacts",
        "online": "match_last_seen",
    },
    "privacy": {"readReceipts": "none"},
    "permissions": {"callAdd": "known", "groupAdd": "contacts"},
}

TABLE_ORDER = list(VALID_VALUES)


def merged(base: dict[str, dict[str, str]], body: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``base`` with the fields of a request ``body`` applied."""
    out = copy.deepcopy(base)
    for section, fields in body.items():
        out[section].update(fields)
    return out


def changed_count(body: dict[str, Any], before: dict[str, dict[str, str]]) -> int:
    return sum(v != before[s][k] for s, fields in body.items() for k, v in fields.items())


def assert_error(reply: Reply, status: int, message: str) -> None:
    """The contract's envelope: ``{"success": false, "error": {"message": ...}}``."""
    assert reply.status == status, reply.body
    assert reply.body["success"] is False
    assert reply.body["error"]["message"] == message
    assert set(reply.body) == {"success", "error"}, reply.body


# -- the examples ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXAMPLES))
async def test_example_gives_the_documented_200(rest: Rest, name: str) -> None:
    body = EXAMPLES[name]
    session = rest.harness.session("sales")

    reply = await rest.post("sales", body)

    expected = merged(DEFAULTS_JSON, body)
    assert reply.status == 200, reply.body
    assert reply.body["success"] is True
    assert reply.body["message"] == UPDATED
    assert reply.body["settings"] == expected
    assert session.server_settings == settings_from_body(expected)
    # One fetch (then cached), then one stanza per field whose value differs.
    assert session.stanzas == 1 + changed_count(body, DEFAULTS_JSON)
    got = await rest.get("sales")
    assert got.status == 200
    assert got.body == {"success": True, "settings": expected}


async def test_fully_restrictive_returns_exactly_the_contracts_settings(rest: Rest) -> None:
    reply = await rest.post("sales", EXAMPLES["fully restrictive"])

    assert reply.status == 200
    assert reply.body["settings"] == FULLY_RESTRICTIVE_RESPONSE
    assert rest.harness.session("sales").server_settings == settings_from_body(
        FULLY_RESTRICTIVE_RESPONSE
    )


async def test_get_returns_the_complete_settings(rest: Rest) -> None:
    reply = await rest.get("support")

    assert reply.status == 200
    assert reply.body == {"success": True, "settings": DEFAULTS_JSON}


@pytest.mark.parametrize("name", list(EXAMPLES))
async def test_identical_repeat_is_a_no_op(rest: Rest, name: str) -> None:
    first = await rest.post("sales", EXAMPLES[name])
    unchanged = Unchanged(rest.harness.session("sales"))

    repeat = await rest.post("sales", EXAMPLES[name])

    assert repeat.status == 200
    assert repeat.body["settings"] == first.body["settings"]
    unchanged.check()


async def test_response_is_the_complete_settings_after_earlier_updates(rest: Rest) -> None:
    await rest.post("sales", EXAMPLES["only lastSeen and online"])

    reply = await rest.post("sales", EXAMPLES["only groupAdd"])

    expected = merged(
        merged(DEFAULTS_JSON, EXAMPLES["only lastSeen and online"]), EXAMPLES["only groupAdd"]
    )
    assert reply.body["settings"] == expected


async def test_instance_token_may_update_its_instance(rest: Rest) -> None:
    reply = await rest.post("sales", EXAMPLES["only groupAdd"], token=SALES_TOKEN)

    assert reply.status == 200
    assert reply.body["settings"] == merged(DEFAULTS_JSON, EXAMPLES["only groupAdd"])


# -- the error table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"visibility": {}},
        {"privacy": {}},
        {"permissions": {}},
        {"visibility": {}, "privacy": {}, "permissions": {}},
    ],
    ids=["empty", "empty-visibility", "empty-privacy", "empty-permissions", "all-empty"],
)
async def test_no_setting_is_refused(rest: Rest, body: dict[str, Any]) -> None:
    unchanged = Unchanged(rest.harness.session("sales"))

    reply = await rest.post("sales", body)

    assert_error(reply, 400, "At least one privacy setting must be provided")
    unchanged.check()


@pytest.mark.parametrize("name", TABLE_ORDER)
async def test_invalid_value_row(rest: Rest, name: str) -> None:
    section, valid = VALID_VALUES[name]
    unchanged = Unchanged(rest.harness.session("sales"))

    reply = await rest.post("sales", {section: {name: "everyone"}})

    assert_error(reply, 400, f"Invalid {name} value: everyone. Valid values: {valid}")
    unchanged.check()


@pytest.mark.parametrize("name", TABLE_ORDER)
async def test_invalid_value_among_valid_ones_applies_nothing(rest: Rest, name: str) -> None:
    section, valid = VALID_VALUES[name]
    body = copy.deepcopy(EVERY_FIELD_CHANGED)
    body[section][name] = "bogus"
    unchanged = Unchanged(rest.harness.session("sales"))

    reply = await rest.post("sales", body)

    assert_error(reply, 400, f"Invalid {name} value: bogus. Valid values: {valid}")
    unchanged.check()
    assert (await rest.get("sales")).body["settings"] == DEFAULTS_JSON


async def test_the_contracts_envelope_example(rest: Rest) -> None:
    reply = await rest.post("sales", {"visibility": {"lastSeen": "everyone"}})

    assert reply.status == 400
    assert reply.body["success"] is False
    assert reply.body["error"]["message"] == (
        "Invalid lastSeen value: everyone. Valid values: all, contacts, contact_blacklist, none"
    )


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("visibility", "lastSeen", "None"),
        ("visibility", "status", "CONTACTS"),
        ("visibility", "profile", "Contact_Blacklist"),
        ("visibility", "online", "Match_Last_Seen"),
        ("privacy", "readReceipts", "All"),
        ("permissions", "callAdd", "KNOWN"),
        ("permissions", "groupAdd", "Contacts"),
        ("visibility", "lastSeen", " none"),
        ("visibility", "lastSeen", ""),
        ("visibility", "status", "contact-blacklist"),
    ],
)
async def test_values_are_case_sensitive_and_exact(
    rest: Rest, section: str, name: str, value: str
) -> None:
    unchanged = Unchanged(rest.harness.session("sales"))

    reply = await rest.post("sales", {section: {name: value}})

    valid = VALID_VALUES[name][1]
    assert_error(reply, 400, f"Invalid {name} value: {value}. Valid values: {valid}")
    unchanged.check()


async def test_validation_stops_at_the_first_invalid_field(rest: Rest) -> None:
    unchanged = Unchanged(rest.harness.session("sales"))

    reply = await rest.post("sales", {"visibility": {"lastSeen": "X", "status": "contacts"}})

    assert_error(
        reply,
        400,
        "Invalid lastSeen value: X. Valid values: all, contacts, contact_blacklist, none",
    )
    unchanged.check()


@pytest.mark.parametrize(
    "body",
    [
        {"visibility": {"status": "nope"}, "permissions": {"groupAdd": "nope"}},
        # Table order, not the order the JSON happens to list them in.
        {"permissions": {"groupAdd": "nope"}, "visibility": {"status": "nope"}},
        {"visibility": {"status": "nope", "lastSeen": "none"}, "privacy": {"readReceipts": "x"}},
    ],
    ids=["table-order", "json-order-reversed", "valid-field-listed-after"],
)
async def test_two_invalid_fields_name_the_first_in_table_order(
    rest: Rest, body: dict[str, Any]
) -> None:
    unchanged = Unchanged(rest.harness.session("sales"))

    reply = await rest.post("sales", body)

    assert_error(
        reply,
        400,
        "Invalid status value: nope. Valid values: all, contacts, contact_blacklist, none",
    )
    unchanged.check()


async def test_not_connected_is_a_400(rest: Rest) -> None:
    session = rest.harness.session("sales")
    session.disconnect()
    unchanged = Unchanged(session)

    reply = await rest.post("sales", EXAMPLES["fully restrictive"])

    assert_error(reply, 400, "Instance is not connected to WhatsApp")
    unchanged.check()
    assert_error(await rest.get("sales"), 400, "Instance is not connected to WhatsApp")
    unchanged.check()


REFUSAL = "privacy value not allowed for this account"


@pytest.mark.parametrize("failing", TABLE_ORDER)
async def test_refused_field_is_a_500_and_earlier_fields_stay_applied(
    rest: Rest, failing: str
) -> None:
    session = rest.harness.session("sales")
    field = next(f for f in Field if f.spec.rest_name == failing)
    session.fail_field(field, REFUSAL)

    reply = await rest.post("sales", EVERY_FIELD_CHANGED)

    assert reply.status == 500
    assert reply.body["success"] is False
    assert reply.body["error"]["message"] == f"failed to update {failing} privacy: {REFUSAL}"
    before = TABLE_ORDER[: TABLE_ORDER.index(failing)]
    expected = copy.deepcopy(DEFAULTS_JSON)
    for name in before:
        section = VALID_VALUES[name][0]
        expected[section][name] = EVERY_FIELD_CHANGED[section][name]
    # Not transactional: the fields before the refused one DID change on WhatsApp...
    assert session.server_settings == settings_from_body(expected)
    # ...the envelope says so, and a GET agrees.
    assert reply.body["settings"] == expected
    assert (await rest.get("sales")).body["settings"] == expected
    # The fields after it were not attempted: fetch, the earlier sets, the refused one.
    assert session.stanzas == 1 + len(before) + 1


async def test_fully_restrictive_with_profile_refused(rest: Rest) -> None:
    session = rest.harness.session("sales")
    session.fail_field(Field.PROFILE, "internal-server-error 500")

    reply = await rest.post("sales", EXAMPLES["fully restrictive"])

    assert reply.status == 500
    assert reply.body["error"]["message"] == (
        "failed to update profile privacy: internal-server-error 500"
    )
    expected = merged(DEFAULTS_JSON, {"visibility": {"lastSeen": "none", "status": "contacts"}})
    assert reply.body["settings"] == expected
    assert session.server_settings == settings_from_body(expected)


async def test_a_failed_update_names_its_operation_which_the_journal_holds(rest: Rest) -> None:
    rest.harness.session("sales").fail_field(Field.PROFILE, "internal-server-error 500")

    reply = await rest.post("sales", EXAMPLES["fully restrictive"])
    operation_id = reply.body["operationId"]
    journaled = await rest.get("sales", tail=f"/operations/{operation_id}")

    assert reply.status == 500
    assert journaled.body["operation"]["state"] == "FAILED"
    assert journaled.body["operation"]["error"] == reply.body["error"]
    assert journaled.body["operation"]["settings"] == reply.body["settings"]


# -- REST and gRPC on one instance -----------------------------------------------------------


async def test_rest_update_is_seen_by_grpc_get(rest: Rest) -> None:
    await rest.post("sales", EXAMPLES["fully restrictive"])

    assert await rest.harness.get("sales") == settings_from_body(FULLY_RESTRICTIVE_RESPONSE)


async def test_grpc_update_is_seen_by_rest_get(rest: Rest) -> None:
    requested = settings_from_body(EXAMPLES["only lastSeen and online"])
    await rest.harness.update(settings_to_proto(requested), instance="support")

    reply = await rest.get("support")

    assert reply.body == {
        "success": True,
        "settings": merged(DEFAULTS_JSON, EXAMPLES["only lastSeen and online"]),
    }


async def test_grpc_update_sees_rest_update_as_unchanged(rest: Rest) -> None:
    await rest.post("sales", EXAMPLES["disable read receipts"])
    unchanged = Unchanged(rest.harness.session("sales"))

    response = await rest.harness.update(
        settings_to_proto(settings_from_body(EXAMPLES["disable read receipts"]))
    )

    assert settings_from_proto(response.settings) == settings_from_body(
        merged(DEFAULTS_JSON, EXAMPLES["disable read receipts"])
    )
    unchanged.check()


REST_BODY = {"visibility": {"lastSeen": "none", "status": "none", "profile": "none"}}
GRPC_REQUEST = Settings(
    {Field.LAST_SEEN: "contacts", Field.PROFILE: "contacts", Field.READ_RECEIPTS: "none"}
)
REST_SETS = [
    SentStanza("last", "none"),
    SentStanza("status", "none"),
    SentStanza("profile", "none"),
]
GRPC_SETS = [
    SentStanza("last", "contacts"),
    SentStanza("profile", "contacts"),
    SentStanza("readreceipts", "none"),
]


async def _first_stanza(session: SimulatedSession) -> None:
    """Returns once an update holds the instance (its first stanza is on the wire)."""
    for _ in range(2500):
        if session.sent:
            return
        await asyncio.sleep(0.002)
    pytest.fail("the first update sent no stanza within 5 s")


@pytest.mark.parametrize("first", ["rest", "grpc"])
async def test_rest_and_grpc_updates_queue_on_one_instance(
    make_gateway: GatewayFactory, first: str
) -> None:
    harness: Harness = await make_gateway(
        instances=[{"name": "sales", "account": "acme", "latency_ms": 50}]
    )
    session = harness.session("sales")
    async with serving(harness) as surface:

        async def by_rest() -> dict[str, Any]:
            reply = await surface.post("sales", REST_BODY)
            assert reply.status == 200, reply.body
            settings: dict[str, Any] = reply.body["settings"]
            return settings

        async def by_grpc() -> Settings:
            response = await harness.update(settings_to_proto(GRPC_REQUEST))
            return settings_from_proto(response.settings)

        if first == "rest":
            rest_task = asyncio.create_task(by_rest())
            await _first_stanza(session)
            grpc_task = asyncio.create_task(by_grpc())
        else:
            grpc_task = asyncio.create_task(by_grpc())
            await _first_stanza(session)
            rest_task = asyncio.create_task(by_rest())
        rest_settings, grpc_settings = await asyncio.gather(rest_task, grpc_task)

    fetch = [SentStanza(None, None)]
    after_rest = merged(DEFAULTS_JSON, REST_BODY)
    after_grpc = {**settings_from_body(DEFAULTS_JSON), **GRPC_REQUEST}
    if first == "rest":
        # Not interleaved: the whole REST update, then the whole gRPC one on top of it.
        assert session.sent == fetch + REST_SETS + GRPC_SETS
        assert rest_settings == after_rest
        final = Settings({**settings_from_body(after_rest), **GRPC_REQUEST})
        assert grpc_settings == final
    else:
        # The gRPC update first; the REST one then finds lastSeen/profile changed by it.
        assert session.sent == fetch + GRPC_SETS + REST_SETS
        assert grpc_settings == Settings(after_grpc)
        final = Settings({**after_grpc, **settings_from_body(REST_BODY)})
        assert settings_from_body(rest_settings) == final
    assert session.server_settings == final
