"""``privacy-gateway``, run as real processes: the demo server, the client commands, shutdown.

Every process a test starts is stopped by the ``start_gateway`` fixture's teardown
(``tests/cli/conftest.py``) or killed by ``subprocess.run``'s timeout, and every wait has a
timeout.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from service.grpc import convert
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.settings import Field
from tests.helpers.cli import DEMO_TOKEN, StartGateway, cli_env
from tests.helpers.processes import CLI, TIMEOUT, GatewayProcess

#: ``get``'s table for a fresh simulated account (WhatsApp's defaults).
DEFAULT_TABLE = [
    ("visibility", "last_seen", "all"),
    ("visibility", "status", "contacts"),
    ("visibility", "profile", "all"),
    ("visibility", "online", "all"),
    ("privacy", "read_receipts", "all"),
    ("permissions", "call_add", "all"),
    ("permissions", "group_add", "all"),
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a command to completion (``subprocess.run`` kills it if it outlives the timeout)."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=cli_env() if env is None else env,
        check=False,
    )


def table(lines: list[str]) -> list[tuple[str, ...]]:
    """The rows of a settings table (header checked and dropped)."""
    assert lines[0].split() == ["section", "field", "value"], lines
    return [tuple(line.split()) for line in lines[1:]]


def settings_table(stdout: str) -> list[tuple[str, ...]]:
    """The last settings table a command printed."""
    lines = stdout.splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("section"))
    return table(lines[header : header + 8])


def with_values(**values: str) -> list[tuple[str, ...]]:
    """``DEFAULT_TABLE`` with some values changed."""
    return [(section, name, values.get(name, value)) for section, name, value in DEFAULT_TABLE]


def normalized(line: str) -> str:
    """A line with runs of blanks collapsed and elapsed times written ``(<n> ms)``."""
    return re.sub(r"\(\d+ ms\)", "(<n> ms)", " ".join(line.split()))


def elapsed_ms(stdout: str) -> list[int]:
    return [int(ms) for ms in re.findall(r"\((\d+) ms\)", stdout)]


def free_port_held() -> socket.socket:
    """A socket bound to a loopback port (not listening): nothing else can bind that port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def get_demo(gateway: GatewayProcess, token: str = DEMO_TOKEN) -> subprocess.CompletedProcess[str]:
    return run_cli("get", "demo", "--address", gateway.address, "--token", token)


# -- serve: the demo ----------------------------------------------------------------------------


def test_serve_without_config_runs_the_demo_with_a_fresh_token(
    start_gateway: StartGateway,
) -> None:
    gateway = start_gateway("--listen", "127.0.0.1:0", "--demo-latency-ms", "0")

    token = gateway.read_until(r"^demo token: (\S+)$").group(1)
    hint = gateway.read_until(r"^try: ").string

    assert len(token) >= 32
    assert f"--address {gateway.address} --token {token}" in hint
    result = get_demo(gateway, token)
    assert (result.returncode, result.stderr) == (0, "")
    assert table(result.stdout.splitlines()) == DEFAULT_TABLE


def test_demo_token_option_fixes_the_token(demo: GatewayProcess) -> None:
    demo.read_until(rf"^demo token: {DEMO_TOKEN}$")

    assert get_demo(demo, DEMO_TOKEN).returncode == 0


def test_demo_latency_option_sets_the_stanza_latency(start_gateway: StartGateway) -> None:
    gateway = start_gateway(
        "--listen", "127.0.0.1:0", "--demo-token", DEMO_TOKEN, "--demo-latency-ms", "150"
    )
    gateway.read_until(r"\(150 ms per stanza\)")

    result = run_cli(
        "set", "demo", "--last-seen", "none", "--address", gateway.address, "--token", DEMO_TOKEN
    )

    assert result.returncode == 0, result.stderr
    (applied,) = elapsed_ms(result.stdout)
    assert applied >= 150


def test_demo_options_apply_only_without_a_config(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('listen = "127.0.0.1:0"\n')

    result = run_cli("serve", "--config", str(config), "--demo-token", "T")

    assert result.returncode == 2
    assert result.stderr == "privacy-gateway: --demo-* options apply only without --config\n"


# -- get and set --------------------------------------------------------------------------------


def test_get_prints_the_settings_table(demo: GatewayProcess) -> None:
    result = get_demo(demo)

    assert (result.returncode, result.stderr) == (0, "")
    assert table(result.stdout.splitlines()) == DEFAULT_TABLE


def test_set_prints_the_plan_each_fields_progress_and_the_final_table(
    demo: GatewayProcess,
) -> None:
    result = run_cli(
        "set",
        "demo",
        "--last-seen", "none",
        "--status", "contacts",  # already the value: planned, but no stanza
        "--read-receipts", "none",
        "--call-add", "known",
        "--address", demo.address,
        "--token", DEMO_TOKEN,
    )  # fmt: skip

    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert [normalized(line) for line in lines[:13]] == [
        "plan: 4 field(s), 3 stanza(s) to send",
        "last_seen all -> none",
        "status contacts -> contacts",
        "read_receipts all -> none",
        "call_add all -> known",
        "last_seen sending",
        "last_seen applied none (<n> ms)",
        "status unchanged (already set, no stanza)",
        "read_receipts sending",
        "read_receipts applied none (<n> ms)",
        "call_add sending",
        "call_add applied known (<n> ms)",
        "",
    ]
    assert lines[13] == "settings now:"
    new_values = with_values(last_seen="none", read_receipts="none", call_add="known")
    assert table(lines[14:]) == new_values
    assert all(ms < 100 for ms in elapsed_ms(result.stdout)), "--demo-latency-ms 0"
    assert table(get_demo(demo).stdout.splitlines()) == new_values


def test_set_with_an_invalid_value_exits_2_listing_the_valid_ones_before_any_call(
    demo: GatewayProcess,
) -> None:
    # --read-receipts is valid: had any call been made, it would have changed the settings.
    result = run_cli(
        "set",
        "demo",
        "--read-receipts", "none",
        "--last-seen", "everyone",
        "--address", demo.address,
        "--token", DEMO_TOKEN,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stdout == ""
    assert "argument --last-seen: invalid choice: 'everyone'" in result.stderr
    assert "(choose from 'all', 'contacts', 'contact_blacklist', 'none')" in result.stderr
    assert table(get_demo(demo).stdout.splitlines()) == DEFAULT_TABLE


def test_set_without_any_field_exits_2_before_any_call(demo: GatewayProcess) -> None:
    # A wrong token: had any call been made, it would have failed UNAUTHENTICATED, exit 1.
    result = run_cli("set", "demo", "--address", demo.address, "--token", "wrong")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("privacy-gateway set: give at least one of --last-seen")
    assert "UNAUTHENTICATED" not in result.stderr


def test_wrong_token_is_unauthenticated_and_exits_1(demo: GatewayProcess) -> None:
    result = get_demo(demo, token="not-the-demo-token")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "error: UNAUTHENTICATED: Invalid token\n"


def test_client_commands_need_a_token(demo: GatewayProcess) -> None:
    result = run_cli("get", "demo", "--address", demo.address)

    assert result.returncode == 2
    assert "--token (or PRIVACY_GATEWAY_TOKEN) is required" in result.stderr


def test_client_takes_address_and_token_from_the_environment(demo: GatewayProcess) -> None:
    env = cli_env(PRIVACY_GATEWAY_ADDRESS=demo.address, PRIVACY_GATEWAY_TOKEN=DEMO_TOKEN)

    result = run_cli("get", "demo", env=env)

    assert (result.returncode, result.stderr) == (0, "")
    assert table(result.stdout.splitlines()) == DEFAULT_TABLE


# -- token and health ---------------------------------------------------------------------------


def test_token_prints_a_new_token_and_its_sha256() -> None:
    first, second = run_cli("token"), run_cli("token")

    tokens = []
    for result in (first, second):
        assert result.returncode == 0
        token = re.search(r"^token:\s+(\S+)$", result.stdout, re.MULTILINE)
        digest = re.search(r"^token_sha256:\s+(\S+)$", result.stdout, re.MULTILINE)
        assert token is not None, result.stdout
        assert digest is not None, result.stdout
        assert digest.group(1) == hashlib.sha256(token.group(1).encode()).hexdigest()
        tokens.append(token.group(1))
    assert tokens[0] != tokens[1]


def test_health_prints_serving_and_exits_0(demo: GatewayProcess) -> None:
    result = run_cli("health", "--address", demo.address)

    assert (result.returncode, result.stdout, result.stderr) == (0, "SERVING\n", "")


def test_health_exits_1_when_no_gateway_answers() -> None:
    with free_port_held() as held:
        port = held.getsockname()[1]
        result = run_cli("health", "--address", f"127.0.0.1:{port}")

    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAVAILABLE: ")


# -- graceful shutdown --------------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_update_finish_then_exits_0(
    start_gateway: StartGateway,
) -> None:
    grace = 5.0
    gateway = start_gateway(
        "--listen", "127.0.0.1:0", "--demo-token", DEMO_TOKEN, "--demo-latency-ms", "300",
        env=cli_env(PRIVACY_GATEWAY_SHUTDOWN_GRACE_SECONDS=str(grace)),
    )  # fmt: skip
    request = pb.StreamUpdatePrivacySettingsRequest(
        instance="demo",
        settings=spb.PrivacySettings(
            visibility=spb.Visibility(
                last_seen=spb.VISIBILITY_VALUE_NONE, profile=spb.VISIBILITY_VALUE_CONTACTS
            ),
            privacy=spb.Privacy(read_receipts=spb.READ_RECEIPTS_VALUE_NONE),
        ),
    )
    events: list[str] = []
    snapshot: spb.PrivacySettings | None = None
    signalled_at: float | None = None

    with grpc.insecure_channel(gateway.address) as channel:
        call = pb_grpc.PrivacyServiceStub(channel).StreamUpdatePrivacySettings(
            request, metadata=(("token", DEMO_TOKEN),), timeout=TIMEOUT
        )
        for message in call:
            kind = message.WhichOneof("event")
            if kind == "field":
                state = convert.state_from_proto(message.field.state).name
                events.append(f"{convert.field_from_proto(message.field.field).value} {state}")
                if signalled_at is None and state == "STARTED":
                    signalled_at = time.monotonic()
                    gateway.process.send_signal(signal.SIGTERM)
            else:
                events.append(kind or "?")
                if kind == "snapshot":
                    snapshot = message.snapshot
        code = call.code()

    assert signalled_at is not None
    assert code == grpc.StatusCode.OK
    assert events == [
        "plan",
        "last_seen STARTED",
        "last_seen APPLIED",
        "profile STARTED",
        "profile APPLIED",
        "read_receipts STARTED",
        "read_receipts APPLIED",
        "snapshot",
    ]
    assert snapshot is not None
    final = convert.settings_from_proto(snapshot)
    assert (final[Field.LAST_SEEN], final[Field.PROFILE], final[Field.READ_RECEIPTS]) == (
        "none",
        "contacts",
        "none",
    )
    assert gateway.process.wait(timeout=grace + TIMEOUT) == 0
    assert time.monotonic() - signalled_at < grace, "exits once the in-flight call is done"
    assert "shutting down" in gateway.stderr()


# -- configuration ------------------------------------------------------------------------------

ACCOUNT_TOKEN = "acme-account-token"
SALES_TOKEN = "sales-instance-token"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


#: A valid configuration: one account, an instance with its own token and a latency, another.
CONFIG = f"""\
listen = "127.0.0.1:0"
rate_limit_per_minute = 0

[[accounts]]
name = "acme"
token_sha256 = "{sha256(ACCOUNT_TOKEN)}"

[[instances]]
name = "sales"
account = "acme"
token_sha256 = "{sha256(SALES_TOKEN)}"
latency_ms = 120
settings = {{ last_seen = "contacts" }}

[[instances]]
name = "support"
account = "acme"
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("broken", "needle", "key"),
    [
        pytest.param(
            CONFIG + 'latency_ms = "fast"\n',
            'latency_ms = "fast"',
            "instances[1].latency_ms",
            id="wrong-type-in-second-instance",
        ),
        pytest.param(
            CONFIG.replace("rate_limit", 'colour = "blue"\nrate_limit'),
            "colour",
            "colour",
            id="unknown-key",
        ),
        pytest.param(
            CONFIG.replace('"support"\naccount = "acme"', '"support"\naccount = "globex"'),
            'account = "globex"',
            "instances[1].account",
            id="unknown-account",
        ),
    ],
)
def test_serve_with_a_wrong_config_exits_2_naming_file_line_and_key(
    tmp_path: Path, broken: str, needle: str, key: str
) -> None:
    path = write_config(tmp_path, broken)

    result = run_cli("serve", "--config", str(path))

    assert result.returncode == 2
    assert result.stdout == "", "the gateway never started"
    assert result.stderr.startswith(f"privacy-gateway: {path}:{line_of(path, needle)}: {key}: ")


def test_config_file_works_end_to_end_with_account_and_instance_tokens(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    gateway = start_gateway("--config", str(write_config(tmp_path, CONFIG)))
    address = ("--address", gateway.address)

    by_account = run_cli("get", "sales", *address, "--token", ACCOUNT_TOKEN)
    assert (by_account.returncode, by_account.stderr) == (0, "")
    assert table(by_account.stdout.splitlines()) == with_values(last_seen="contacts")

    by_instance = run_cli("set", "sales", "--call-add", "known", *address, "--token", SALES_TOKEN)
    assert (by_instance.returncode, by_instance.stderr) == (0, "")
    assert elapsed_ms(by_instance.stdout)[0] >= 120, "the instance's latency_ms"
    assert settings_table(by_instance.stdout) == with_values(last_seen="contacts", call_add="known")

    other_instance = run_cli("get", "support", *address, "--token", SALES_TOKEN)
    assert other_instance.returncode == 1
    assert other_instance.stderr.startswith("error: PERMISSION_DENIED: ")

    assert run_cli("get", "support", *address, "--token", ACCOUNT_TOKEN).returncode == 0


# -- environment overrides ----------------------------------------------------------------------


def test_listen_from_the_environment_is_honoured(start_gateway: StartGateway) -> None:
    gateway = start_gateway(env=cli_env(PRIVACY_GATEWAY_LISTEN="127.0.0.1:0"))

    assert gateway.port not in {0, 50051}, "port 0 from the environment, not the default"
    assert run_cli("health", "--address", gateway.address).returncode == 0


def test_listen_option_beats_the_environment(start_gateway: StartGateway) -> None:
    with free_port_held() as held:
        taken = held.getsockname()[1]
        gateway = start_gateway(
            "--listen", "127.0.0.1:0", env=cli_env(PRIVACY_GATEWAY_LISTEN=f"127.0.0.1:{taken}")
        )

    assert gateway.port != taken


def test_config_file_from_the_environment(tmp_path: Path, start_gateway: StartGateway) -> None:
    path = write_config(tmp_path, CONFIG)

    gateway = start_gateway(env=cli_env(PRIVACY_GATEWAY_CONFIG=str(path)))

    result = run_cli("get", "sales", "--address", gateway.address, "--token", SALES_TOKEN)
    assert result.returncode == 0, result.stderr


def test_non_numeric_rate_limit_in_the_environment_is_a_clear_error() -> None:
    env = cli_env(PRIVACY_GATEWAY_RATE_LIMIT_PER_MINUTE="abc")

    result = run_cli("serve", "--listen", "127.0.0.1:0", env=env)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "privacy-gateway: PRIVACY_GATEWAY_RATE_LIMIT_PER_MINUTE: 'abc' is not a number\n"
    )
