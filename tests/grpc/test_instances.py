"""InstanceService and the CLI commands over it: which instances a token sees, and their state.

A gateway with both kinds of instance serves these tests: simulated ``sales`` (with an instance
token) and ``support``, a linked WhatsApp ``wa`` (with an instance token) and an unpaired ``new``
of account ``acme``; simulated ``other`` and a linked WhatsApp ``globex-wa`` of ``globex``. The
WhatsApp ones run on the stand-in (``tests.helpers.whatsapp_harness``; ``conftest`` imports
neonize first, under a guard: see there).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.sessions.simulated import SimulatedSession
from service.settings import Field
from tests.helpers.harness import ACME_TOKEN, GLOBEX_TOKEN, SALES_TOKEN
from tests.helpers.instances import WA_TOKEN
from tests.helpers.processes import CLI, stripped_env
from tests.helpers.processes import TIMEOUT as CLI_TIMEOUT
from tests.helpers.whatsapp_harness import (
    CONNECTED,
    DISCONNECTED,
    JID,
    NOT_PAIRED,
    TIMEOUT,
    WaGateway,
    drain,
    error_reason,
    rpc_error,
)

SIMULATED = instance_pb.SESSION_KIND_SIMULATED
WHATSAPP = instance_pb.SESSION_KIND_WHATSAPP


async def listed(running: WaGateway, token: str) -> list[tuple[str, str, int, int]]:
    response = await running.instances.ListInstances(
        instance_pb.ListInstancesRequest(), metadata=running.metadata(token)
    )
    return [(i.name, i.account, i.kind, i.state) for i in response.instances]


# -- ListInstances -----------------------------------------------------------------------------


async def test_an_account_token_lists_its_accounts_instances_in_order(mixed: WaGateway) -> None:
    assert await listed(mixed, ACME_TOKEN) == [
        ("sales", "acme", SIMULATED, CONNECTED),
        ("support", "acme", SIMULATED, CONNECTED),
        ("wa", "acme", WHATSAPP, CONNECTED),
        ("new", "acme", WHATSAPP, NOT_PAIRED),
    ]
    assert await listed(mixed, GLOBEX_TOKEN) == [
        ("other", "globex", SIMULATED, CONNECTED),
        ("globex-wa", "globex", WHATSAPP, CONNECTED),
    ]


@pytest.mark.parametrize(
    ("token", "name", "kind"), [(SALES_TOKEN, "sales", SIMULATED), (WA_TOKEN, "wa", WHATSAPP)]
)
async def test_an_instance_token_lists_only_its_own_instance(
    mixed: WaGateway, token: str, name: str, kind: int
) -> None:
    assert await listed(mixed, token) == [(name, "acme", kind, CONNECTED)]


async def test_a_listed_instance_carries_its_state_details(mixed: WaGateway) -> None:
    response = await mixed.instances.ListInstances(
        instance_pb.ListInstancesRequest(), metadata=mixed.metadata()
    )
    by_name = {i.name: i for i in response.instances}
    now = datetime.now(UTC).timestamp()

    for instance in by_name.values():
        assert abs(instance.state_since.ToNanoseconds() / 1e9 - now) < 60, instance.name
        assert instance.last_error == "", instance.name
    # A linked WhatsApp account's JID comes with the Device event of every connection.
    assert by_name["wa"].jid == JID
    assert all(i.jid == "" for n, i in by_name.items() if n != "wa")
    assert by_name["wa"] == await mixed.instance("wa")


async def test_list_instances_needs_a_known_token(mixed: WaGateway) -> None:
    missing = await rpc_error(
        mixed.instances.ListInstances(instance_pb.ListInstancesRequest(), metadata=())
    )
    wrong = await rpc_error(
        mixed.instances.ListInstances(
            instance_pb.ListInstancesRequest(), metadata=mixed.metadata("not-a-token")
        )
    )

    assert (missing.code(), missing.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "Missing token: send it as `token` (gRPC metadata, or an HTTP header)",
    )
    assert (wrong.code(), wrong.details()) == (grpc.StatusCode.UNAUTHENTICATED, "Invalid token")


# -- GetInstance -------------------------------------------------------------------------------


async def test_get_instance_returns_one_instance(mixed: WaGateway) -> None:
    instance = await mixed.instance("new")

    assert (instance.name, instance.account, instance.kind, instance.state) == (
        "new",
        "acme",
        WHATSAPP,
        NOT_PAIRED,
    )
    assert (await mixed.instance("wa", token=WA_TOKEN)).state == CONNECTED


@dataclass(frozen=True)
class Refusal:
    instance: str
    token: str
    code: grpc.StatusCode
    message: str
    reason: str


FORBIDDEN = grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "refusal",
    [
        Refusal(
            "other",
            ACME_TOKEN,
            FORBIDDEN,
            "This token may not act on instance other",
            "INSTANCE_FORBIDDEN",
        ),
        Refusal(
            "globex-wa",
            ACME_TOKEN,
            FORBIDDEN,
            "This token may not act on instance globex-wa",
            "INSTANCE_FORBIDDEN",
        ),
        Refusal(
            "wa",
            SALES_TOKEN,
            FORBIDDEN,
            "This token may not act on instance wa",
            "INSTANCE_FORBIDDEN",
        ),
        Refusal(
            "nope",
            SALES_TOKEN,
            FORBIDDEN,
            "This token may not act on instance nope",
            "INSTANCE_FORBIDDEN",
        ),
        Refusal(
            "nope",
            ACME_TOKEN,
            grpc.StatusCode.NOT_FOUND,
            "Instance not found: nope",
            "INSTANCE_NOT_FOUND",
        ),
        Refusal(
            "",
            ACME_TOKEN,
            grpc.StatusCode.INVALID_ARGUMENT,
            "instance is required",
            "INSTANCE_REQUIRED",
        ),
        Refusal(
            "sales",
            "not-a-token",
            grpc.StatusCode.UNAUTHENTICATED,
            "Invalid token",
            "TOKEN_INVALID",
        ),
    ],
    ids=[
        "other-account",
        "other-account-whatsapp",
        "instance-token-on-a-sibling",
        "instance-token-on-an-unknown-name",
        "unknown-name",
        "no-name",
        "unknown-token",
    ],
)
async def test_get_instance_refusals(mixed: WaGateway, refusal: Refusal) -> None:
    error = await rpc_error(mixed.instance(refusal.instance, token=refusal.token))

    assert error.code() == refusal.code
    assert error.details() == refusal.message
    assert error_reason(error) == refusal.reason


async def test_get_instance_without_a_token_is_unauthenticated(mixed: WaGateway) -> None:
    error = await rpc_error(
        mixed.instances.GetInstance(instance_pb.GetInstanceRequest(instance="sales"), metadata=())
    )

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "Missing token: send it as `token` (gRPC metadata, or an HTTP header)"
    assert error_reason(error) == "TOKEN_MISSING"


# -- PairInstance on instances that cannot be paired ----------------------------------------


async def test_pairing_a_simulated_instance_is_failed_precondition(mixed: WaGateway) -> None:
    messages, error = await drain(mixed.pair("sales"))

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "Instance sales is simulated: it has no WhatsApp account to pair"
    assert error_reason(error) == "NOT_PAIRABLE"


async def test_pairing_another_accounts_instance_is_permission_denied(mixed: WaGateway) -> None:
    messages, error = await drain(mixed.pair("globex-wa"))

    assert messages == []
    assert error is not None
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "This token may not act on instance globex-wa"
    assert (await mixed.instance("new")).state == NOT_PAIRED


# -- the CLI -----------------------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Runs a CLI command against the in-process gateway, which keeps serving meanwhile."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=stripped_env(),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


ROW = re.compile(
    r"^(?P<name>\S+)\s+(?P<account>\S+)\s+(?P<kind>\S+)\s+(?P<state>\S+)\s+"
    r"(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s*(?P<detail>.*)$"
)


def rows(stdout: str) -> list[dict[str, str]]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["instance", "account", "kind", "state", "since", "detail"]
    parsed = []
    for line in lines[1:]:
        match = ROW.match(line)
        assert match, f"not a row: {line!r}"
        parsed.append(match.groupdict())
    return parsed


async def test_cli_instances_prints_the_instances_the_token_sees(mixed: WaGateway) -> None:
    code, out, err = await run_cli("instances", "--address", mixed.address, "--token", ACME_TOKEN)

    assert (code, err) == (0, "")
    table = rows(out)
    assert [(r["name"], r["account"], r["kind"], r["state"]) for r in table] == [
        ("sales", "acme", "simulated", "CONNECTED"),
        ("support", "acme", "simulated", "CONNECTED"),
        ("wa", "acme", "whatsapp", "CONNECTED"),
        ("new", "acme", "whatsapp", "NOT_PAIRED"),
    ]
    # ``since`` is the state's timestamp, printed in local time.
    now = datetime.now()
    for row in table:
        since = datetime.strptime(row["since"], "%Y-%m-%d %H:%M:%S")
        assert abs((now - since).total_seconds()) < 60, row
    assert {r["name"]: r["detail"] for r in table} == {
        "sales": "",
        "support": "",
        "wa": JID,
        "new": "",
    }


async def test_cli_instances_shows_the_jid_or_the_last_error_as_detail(
    mixed: WaGateway,
) -> None:
    pairing = mixed.pair("new")
    await asyncio.wait_for(pairing.read(), TIMEOUT)
    mixed.ffi.scan("new", JID)
    _, failure = await drain(pairing)
    assert failure is None
    await mixed.wait_state("new", CONNECTED)
    mixed.ffi.drop("wa")  # and it stays down
    await mixed.wait_state("wa", DISCONNECTED)

    code, out, _ = await run_cli("instances", "--address", mixed.address, "--token", ACME_TOKEN)

    assert code == 0
    detail = {r["name"]: (r["state"], r["detail"]) for r in rows(out)}
    assert detail == {
        "sales": ("CONNECTED", ""),
        "support": ("CONNECTED", ""),
        "wa": ("DISCONNECTED", "connection lost; whatsmeow is reconnecting"),
        "new": ("CONNECTED", JID),
    }


async def test_cli_instances_with_an_instance_token_prints_only_its_instance(
    mixed: WaGateway,
) -> None:
    code, out, _ = await run_cli("instances", "--address", mixed.address, "--token", WA_TOKEN)

    assert code == 0
    assert [(r["name"], r["kind"], r["state"]) for r in rows(out)] == [
        ("wa", "whatsapp", "CONNECTED")
    ]


async def test_cli_instances_with_a_wrong_token_exits_1(mixed: WaGateway) -> None:
    code, out, err = await run_cli("instances", "--address", mixed.address, "--token", "nope")

    assert (code, out) == (1, "")
    assert err.strip() == "error: UNAUTHENTICATED: Invalid token"


def simulated(running: WaGateway, name: str) -> SimulatedSession:
    instance = running.gateway.instances.get(name)
    assert instance is not None
    assert isinstance(instance.session, SimulatedSession)
    return instance.session


STAMPED = re.compile(r"^\d\d:\d\d:\d\d (?P<source>\S+)\s+(?P<field>\S+)\s+-> (?P<value>\S+)$")


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), CLI_TIMEOUT)
    assert line, "the watch command ended"
    return line.decode().rstrip("\n")


async def test_cli_watch_prints_the_table_then_each_change(mixed: WaGateway) -> None:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "watch",
        "sales",
        "--address",
        mixed.address,
        "--token",
        ACME_TOKEN,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=stripped_env(),
    )
    try:
        table = [await read_line(process) for _ in range(8)]
        assert table[0].split() == ["section", "field", "value"]
        assert [tuple(line.split()) for line in table[1:]] == [
            ("visibility", "last_seen", "all"),
            ("visibility", "status", "contacts"),
            ("visibility", "profile", "all"),
            ("visibility", "online", "all"),
            ("privacy", "read_receipts", "all"),
            ("permissions", "call_add", "all"),
            ("permissions", "group_add", "all"),
        ]
        assert await read_line(process) == ""
        assert await read_line(process) == "watching for changes (Ctrl+C to stop)"

        await mixed.update("sales", last_seen="none", read_receipts="none")
        changes = [STAMPED.match(await read_line(process)) for _ in range(2)]
        simulated(mixed, "sales").change_on_phone(Field.PROFILE, "contacts")
        changes.append(STAMPED.match(await read_line(process)))

        assert [m.groupdict() if m else None for m in changes] == [
            {"source": "gateway", "field": "last_seen", "value": "none"},
            {"source": "gateway", "field": "read_receipts", "value": "none"},
            {"source": "phone", "field": "profile", "value": "contacts"},
        ]
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
