"""``config.resolve``: command line, then environment, then file, then defaults, for every key.

Each key ``serve`` takes on its command line is given in all three places, in each pair of them,
in each one alone and in none; the winner is always the highest of those given. Each default is
stated once (``service.config``, ``service.demo``) and the help texts and the client quote it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from service import config
from service.auth import hash_token
from service.cli import main as cli
from service.config import ConfigError, GatewayConfig, resolve
from service.demo import DEMO_INSTANCE, DEMO_LATENCY_MS, demo

#: key -> (environment variable, file's value, environment's value, command line's value).
KEYS: dict[str, tuple[str, Any, str, Any]] = {
    "listen": ("PRIVACY_GATEWAY_LISTEN", "127.0.0.1:6001", "127.0.0.1:6002", "127.0.0.1:6003"),
    "http_listen": (
        "PRIVACY_GATEWAY_HTTP_LISTEN",
        "127.0.0.1:7001",
        "127.0.0.1:7002",
        "127.0.0.1:7003",
    ),
    "rate_limit_per_minute": ("PRIVACY_GATEWAY_RATE_LIMIT_PER_MINUTE", 11, "12", 13),
}
DEFAULTS = {
    "listen": config.DEFAULT_LISTEN,
    "http_listen": config.DEFAULT_HTTP_LISTEN,
    "rate_limit_per_minute": config.DEFAULT_RATE_LIMIT_PER_MINUTE,
}
PLACES = ("command line", "environment", "file")
#: Every set of places a value can be given in: all three, each pair, each one alone, none.
GIVEN_IN = [
    frozenset(places) for size in (3, 2, 1, 0) for places in itertools.combinations(PLACES, size)
]


def toml_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def resolved(
    tmp_path: Path, key: str, given_in: frozenset[str], **command_line: Any
) -> GatewayConfig:
    variable, in_file, in_env, on_command_line = KEYS[key]
    path = tmp_path / "gateway.toml"
    path.write_text(f"{key} = {toml_value(in_file)}\n" if "file" in given_in else "")
    env = {variable: in_env} if "environment" in given_in else {}
    options = {key: on_command_line if "command line" in given_in else None, **command_line}
    return resolve(options, env, path)


def expected(key: str, given_in: frozenset[str]) -> Any:
    _, in_file, in_env, on_command_line = KEYS[key]
    if "command line" in given_in:
        return on_command_line
    if "environment" in given_in:
        return int(in_env) if isinstance(in_file, int) else in_env
    if "file" in given_in:
        return in_file
    return DEFAULTS[key]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    "given_in", GIVEN_IN, ids=lambda places: "+".join(sorted(places)) or "nowhere"
)
def test_the_highest_place_a_value_is_given_in_wins(
    tmp_path: Path, key: str, given_in: frozenset[str]
) -> None:
    assert getattr(resolved(tmp_path, key, given_in), key) == expected(key, given_in)


def test_a_value_in_all_three_places_comes_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('listen = "127.0.0.1:6001"\nrate_limit_per_minute = 11\n')
    env = {
        "PRIVACY_GATEWAY_LISTEN": "127.0.0.1:6002",
        "PRIVACY_GATEWAY_RATE_LIMIT_PER_MINUTE": "12",
    }
    command_line = {"listen": "127.0.0.1:6003", "http_listen": None, "rate_limit_per_minute": 13}

    result = resolve(command_line, env, path)

    assert (result.listen, result.rate_limit_per_minute) == ("127.0.0.1:6003", 13)
    assert result.http_listen == config.DEFAULT_HTTP_LISTEN, "an option not given changes nothing"


def test_keys_without_a_command_line_option_come_from_the_environment_then_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('log_level = "warning"\ndata_dir = "from-file"\nstanza_threads = 8\n')
    env = {"PRIVACY_GATEWAY_LOG_LEVEL": "debug", "PRIVACY_GATEWAY_STANZA_THREADS": "9"}

    result = resolve({}, env, path)

    assert (result.log_level, result.stanza_threads) == ("debug", 9)
    assert result.data_dir == "from-file"
    assert result.shutdown_grace_seconds == config.DEFAULT_SHUTDOWN_GRACE_SECONDS


def test_an_empty_http_listen_on_the_command_line_turns_rest_off(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('http_listen = "127.0.0.1:7001"\n')

    result = resolve({"http_listen": ""}, {"PRIVACY_GATEWAY_HTTP_LISTEN": "127.0.0.1:7002"}, path)

    assert result.http_listen == "", "'' is a value given, not an option left out"


# -- the demo stands in for the file --------------------------------------------------------------


def test_the_demo_stands_in_for_the_file_below_the_environment_and_the_command_line() -> None:
    embedded = demo("a-token")
    env = {"PRIVACY_GATEWAY_LISTEN": "127.0.0.1:6002", "PRIVACY_GATEWAY_DATA_DIR": "elsewhere"}

    result = resolve({"listen": "127.0.0.1:6003"}, env, embedded.contents)

    assert (result.listen, result.data_dir) == ("127.0.0.1:6003", "elsewhere")
    ((account,), (instance,)) = result.accounts, result.instances
    assert (account.name, account.token_sha256) == (DEMO_INSTANCE, hash_token("a-token"))
    assert (instance.name, instance.latency_ms) == (DEMO_INSTANCE, DEMO_LATENCY_MS)


def test_the_demo_takes_a_fresh_token_and_its_latency_when_given() -> None:
    first, second = demo(), demo(latency_ms=0)

    assert first.token != second.token
    assert second.contents["instances"][0]["latency_ms"] == 0
    assert first.contents["accounts"][0]["token_sha256"] == hash_token(first.token)


# -- errors name the place the wrong value came from --------------------------------------------


def test_a_wrong_value_on_the_command_line_names_the_option(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("")

    with pytest.raises(ConfigError) as info:
        resolve({"rate_limit_per_minute": -1}, {}, path)

    assert str(info.value).startswith("--rate-limit-per-minute: ")


def test_a_wrong_value_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("")

    with pytest.raises(ConfigError) as info:
        resolve({}, {"PRIVACY_GATEWAY_LISTEN": "nonsense"}, path)

    assert str(info.value).startswith("PRIVACY_GATEWAY_LISTEN: ")


def test_the_file_and_environment_are_checked_before_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('\nlog_level = "verbose"\n')

    with pytest.raises(ConfigError) as info:
        resolve({"listen": "nonsense"}, {}, path)

    assert str(info.value).startswith(f"{path}:2: log_level: ")


# -- each default stated once ---------------------------------------------------------------------


def test_the_configuration_defaults_are_the_named_constants() -> None:
    defaults = GatewayConfig()

    assert defaults.listen == config.DEFAULT_LISTEN
    assert defaults.http_listen == config.DEFAULT_HTTP_LISTEN
    assert defaults.rate_limit_per_minute == config.DEFAULT_RATE_LIMIT_PER_MINUTE
    assert defaults.shutdown_grace_seconds == config.DEFAULT_SHUTDOWN_GRACE_SECONDS
    assert defaults.data_dir == config.DEFAULT_DATA_DIR


def test_serve_help_quotes_the_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")

    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--help"])

    assert info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"gRPC; default {config.DEFAULT_LISTEN}" in help_text
    assert f"REST; default {config.DEFAULT_HTTP_LISTEN};" in help_text
    assert f"default {config.DEFAULT_RATE_LIMIT_PER_MINUTE}; 0 turns it off" in help_text
    assert f"latency; default {DEMO_LATENCY_MS}" in help_text


@pytest.mark.parametrize("command", ["get demo", "set demo", "instances", "pair demo", "health"])
def test_the_clients_default_address_is_the_servers_listen_default(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PRIVACY_GATEWAY_ADDRESS", raising=False)

    args = cli._parser().parse_args(command.split())

    assert args.address == config.DEFAULT_LISTEN


def test_config_option_beats_the_config_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVACY_GATEWAY_CONFIG", "from-env.toml")

    assert cli._parser().parse_args(["serve"]).config == Path("from-env.toml")
    given = cli._parser().parse_args(["serve", "--config", "given.toml"]).config
    assert given == Path("given.toml")
