"""The configuration: a wrong file names its path, line and dotted key; defaults; precedence.

The contract (``service/config.py``): an error reads ``<file>:<line>: <dotted.key>: <why>`` so
whoever edits the file finds the spot; precedence is command line (``with_overrides``), then
environment (``PRIVACY_GATEWAY_*``), then file, then defaults.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from service.auth import hash_token
from service.config import (
    DEFAULT_LISTEN,
    ConfigError,
    from_mapping,
    load,
    with_overrides,
)

HASH = hash_token("a-token")
OTHER_HASH = hash_token("another-token")

#: A valid file the error cases below break one spot of.
VALID = f"""\
listen = "127.0.0.1:6000"
rate_limit_per_minute = 10

[[accounts]]
name = "acme"
token_sha256 = "{HASH}"

[[instances]]
name = "sales"
account = "acme"

[[instances]]
name = "support"
account = "acme"
latency_ms = 5
"""


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """The 1-based number of the ``occurrence``-th line of ``path`` that contains ``needle``."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} occurs {len(hits)} times in {path}"
    return hits[occurrence - 1]


def load_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, env={} if env is None else env)
    return str(info.value)


def assert_points_at(message: str, path: Path, line: int, key: str) -> str:
    """Checks the ``<file>:<line>: <key>: `` prefix and returns the reason after it."""
    prefix = f"{path}:{line}: {key}: "
    assert message.startswith(prefix), f"{message!r} should start with {prefix!r}"
    reason = message.removeprefix(prefix)
    assert reason, "the error says why"
    return reason


# -- where a wrong file is wrong ----------------------------------------------------------------


def test_the_valid_file_loads(tmp_path: Path) -> None:
    config = load(write(tmp_path, VALID), env={})

    assert config.listen == "127.0.0.1:6000"
    assert config.rate_limit_per_minute == 10
    assert [a.name for a in config.accounts] == ["acme"]
    assert [(i.name, i.account, i.latency_ms) for i in config.instances] == [
        ("sales", "acme", 0),
        ("support", "acme", 5),
    ]


def test_unknown_top_level_key_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("rate_limit", 'colour = "blue"\nrate_limit'))

    reason = assert_points_at(load_error(path), path, line_of(path, "colour"), "colour")
    assert "not permitted" in reason


def test_wrong_type_of_top_level_key_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, VALID.replace("rate_limit_per_minute = 10", 'rate_limit_per_minute = "ten"')
    )

    reason = assert_points_at(
        load_error(path), path, line_of(path, "rate_limit_per_minute"), "rate_limit_per_minute"
    )
    assert "integer" in reason


def test_wrong_value_in_the_second_instance_names_its_line_and_index(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("latency_ms = 5", 'latency_ms = "fast"'))

    reason = assert_points_at(
        load_error(path), path, line_of(path, 'latency_ms = "fast"'), "instances[1].latency_ms"
    )
    assert "integer" in reason


def test_key_in_an_instance_is_not_confused_with_the_same_key_in_another(tmp_path: Path) -> None:
    text = VALID.replace('name = "sales"', 'name = "sales"\nlatency_ms = 1')
    path = write(tmp_path, text.replace("latency_ms = 5", "latency_ms = 70000"))

    reason = assert_points_at(
        load_error(path), path, line_of(path, "latency_ms = 70000"), "instances[1].latency_ms"
    )
    assert "60000" in reason


def test_unknown_key_inside_an_instance_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("latency_ms = 5", 'latency_ms = 5\ncolour = "red"'))

    assert_points_at(load_error(path), path, line_of(path, "colour"), "instances[1].colour")


def test_missing_required_key_points_at_the_table_header(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('name = "support"\n', ""))

    reason = assert_points_at(
        load_error(path), path, line_of(path, "[[instances]]", occurrence=2), "instances[1].name"
    )
    assert "required" in reason.lower()


def test_unknown_account_reference_names_the_instances_account_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('account = "acme"', 'account = "globex"'))

    reason = assert_points_at(
        load_error(path), path, line_of(path, 'account = "globex"'), "instances[0].account"
    )
    assert "'globex'" in reason
    assert "acme" in reason, "the error lists the configured accounts"


def test_duplicate_instance_names_point_at_the_second_one(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('name = "support"', 'name = "sales"'))

    reason = assert_points_at(
        load_error(path), path, line_of(path, 'name = "sales"', occurrence=2), "instances[1].name"
    )
    assert "duplicate" in reason
    assert "'sales'" in reason


def test_duplicate_account_names_point_at_the_second_one(tmp_path: Path) -> None:
    second = f'[[accounts]]\nname = "acme"\ntoken_sha256 = "{OTHER_HASH}"\n\n[[instances]]'
    path = write(tmp_path, VALID.replace("[[instances]]", second, 1))

    reason = assert_points_at(
        load_error(path), path, line_of(path, 'name = "acme"', occurrence=2), "accounts[1].name"
    )
    assert "duplicate" in reason


@pytest.mark.parametrize(
    "bad_hash",
    [
        pytest.param(HASH.upper(), id="upper-case"),
        pytest.param(HASH[:-1], id="63-digits"),
        pytest.param(HASH + "0", id="65-digits"),
        pytest.param("z" * 64, id="not-hex"),
        pytest.param("a-token", id="the-token-itself"),
    ],
)
def test_account_token_sha256_must_be_64_lower_case_hex_digits(
    tmp_path: Path, bad_hash: str
) -> None:
    path = write(tmp_path, VALID.replace(HASH, bad_hash))

    assert_points_at(
        load_error(path), path, line_of(path, "token_sha256"), "accounts[0].token_sha256"
    )


def test_instance_token_sha256_is_checked_like_an_accounts(tmp_path: Path) -> None:
    text = VALID.replace("latency_ms = 5", f'latency_ms = 5\ntoken_sha256 = "{HASH.upper()}"')
    path = write(tmp_path, text)

    assert_points_at(
        load_error(path),
        path,
        line_of(path, "token_sha256", occurrence=2),
        "instances[1].token_sha256",
    )


def test_line_is_found_when_the_instance_header_carries_a_comment(tmp_path: Path) -> None:
    text = VALID.replace("[[instances]]", "[[instances]]  # a WhatsApp number")
    path = write(tmp_path, text.replace("latency_ms = 5", 'latency_ms = "fast"'))

    assert_points_at(
        load_error(path), path, line_of(path, 'latency_ms = "fast"'), "instances[1].latency_ms"
    )


def test_wrong_initial_setting_names_its_line_and_full_key(tmp_path: Path) -> None:
    text = VALID + '\n[instances.settings]\nread_receipts = "all"\nlast_seen = "everyone"\n'
    path = write(tmp_path, text)

    reason = assert_points_at(
        load_error(path),
        path,
        line_of(path, 'last_seen = "everyone"'),
        "instances[1].settings.last_seen",
    )
    assert "'everyone'" in reason
    assert "contact_blacklist" in reason, "the error lists the valid values"


def test_toml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("latency_ms = 5", "latency_ms = "))

    message = load_error(path)

    assert message.startswith(f"{path}: ")
    assert f"line {line_of(path, 'latency_ms')}" in message


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"

    assert load_error(path) == f"{path}: cannot read: No such file or directory"


def test_a_mapping_has_no_file_or_line_but_names_the_key() -> None:
    raw = {"accounts": [{"name": "acme", "token_sha256": HASH}]}
    raw["instances"] = [{"name": "sales", "account": "globex"}]

    with pytest.raises(ConfigError) as info:
        from_mapping(raw, env={})

    assert str(info.value).startswith("configuration: instances[0].account: unknown account")


# -- defaults -----------------------------------------------------------------------------------


def test_defaults() -> None:
    config = from_mapping({}, env={})

    assert config.listen == DEFAULT_LISTEN == "127.0.0.1:50051"
    assert config.rate_limit_per_minute == 100
    assert config.shutdown_grace_seconds == 10.0
    assert config.log_level == "info"
    assert config.accounts == []
    assert config.instances == []


def test_an_instance_defaults_to_a_simulated_session_without_latency_or_token() -> None:
    raw = {
        "accounts": [{"name": "acme", "token_sha256": HASH}],
        "instances": [{"name": "sales", "account": "acme"}],
    }

    (instance,) = from_mapping(raw, env={}).instances

    assert (instance.session, instance.latency_ms, instance.token_sha256) == ("simulated", 0, None)


# -- precedence: command line, then environment, then file, then defaults ----------------------


def test_environment_beats_the_file(tmp_path: Path) -> None:
    env = {
        "PRIVACY_GATEWAY_LISTEN": "127.0.0.1:7000",
        "PRIVACY_GATEWAY_RATE_LIMIT_PER_MINUTE": "0",
        "PRIVACY_GATEWAY_LOG_LEVEL": "debug",
        "PRIVACY_GATEWAY_SHUTDOWN_GRACE_SECONDS": "2.5",
    }

    config = load(write(tmp_path, VALID), env=env)

    assert config.listen == "127.0.0.1:7000"
    assert config.rate_limit_per_minute == 0
    assert config.log_level == "debug"
    assert config.shutdown_grace_seconds == 2.5


def test_environment_beats_the_defaults() -> None:
    config = from_mapping({}, env={"PRIVACY_GATEWAY_RATE_LIMIT_PER_MINUTE": "7"})

    assert config.rate_limit_per_minute == 7


def test_load_reads_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRIVACY_GATEWAY_LISTEN", "127.0.0.1:7001")

    assert load(write(tmp_path, VALID)).listen == "127.0.0.1:7001"


def test_variables_without_the_prefix_are_ignored(tmp_path: Path) -> None:
    config = load(write(tmp_path, VALID), env={"LISTEN": "127.0.0.1:7002"})

    assert config.listen == "127.0.0.1:6000"


def test_command_line_beats_the_environment(tmp_path: Path) -> None:
    config = load(write(tmp_path, VALID), env={"PRIVACY_GATEWAY_LISTEN": "127.0.0.1:7000"})

    overridden = with_overrides(config, {"listen": "127.0.0.1:0", "rate_limit_per_minute": 3})

    assert overridden.listen == "127.0.0.1:0"
    assert overridden.rate_limit_per_minute == 3
    assert overridden.instances == config.instances, "only the options given change"


def test_no_overrides_keep_the_configuration() -> None:
    config = from_mapping({}, env={})

    assert with_overrides(config, {}) is config


@pytest.mark.parametrize(
    ("option", "value"),
    [("listen", "nonsense"), ("rate_limit_per_minute", -1)],
)
def test_wrong_command_line_value_names_the_option(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        with_overrides(from_mapping({}, env={}), {option: value})

    assert str(info.value).startswith(f"--{option.replace('_', '-')}: ")


@pytest.mark.parametrize(
    "variable", ["PRIVACY_GATEWAY_RATE_LIMIT_PER_MINUTE", "PRIVACY_GATEWAY_SHUTDOWN_GRACE_SECONDS"]
)
def test_non_numeric_environment_number_is_a_clear_error(variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({}, env={variable: "abc"})

    assert str(info.value) == f"{variable}: 'abc' is not a number"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PRIVACY_GATEWAY_LISTEN", "nonsense"),
        ("PRIVACY_GATEWAY_LOG_LEVEL", "verbose"),
        ("PRIVACY_GATEWAY_RATE_LIMIT_PER_MINUTE", "-5"),
    ],
)
def test_wrong_environment_value_names_the_variable_not_a_file_line(
    tmp_path: Path, variable: str, value: str
) -> None:
    path = write(tmp_path, 'log_level = "info"\n' + VALID)

    message = load_error(path, env={variable: value})

    assert message.startswith(f"{variable}: "), message


# -- WhatsApp session stores: one instance per store, and never a password in an error ----------

PASSWORD = "s3cret-Pa55"

#: Two WhatsApp instances; ``{sales}`` and ``{support}`` are where their ``store`` lines go.
WHATSAPP = f"""\
data_dir = "{{data_dir}}"

[[accounts]]
name = "acme"
token_sha256 = "{HASH}"

[[instances]]
name = "sales"
account = "acme"
session = "whatsapp"
{{sales}}

[[instances]]
name = "support"
account = "acme"
session = "whatsapp"
{{support}}
"""


def whatsapp(tmp_path: Path, sales: str = "", support: str = "") -> Path:
    text = WHATSAPP.format(data_dir=tmp_path / "data", sales=sales, support=support)
    return write(tmp_path, text)


def assert_no_password(error: ConfigError) -> None:
    """Neither the message nor the validation error chained below it (which a traceback or a
    logged exception would show) quotes the password."""
    assert error.__cause__ is not None
    assert PASSWORD not in str(error)
    assert PASSWORD not in str(error.__cause__)


def test_whatsapp_instances_with_stores_of_their_own_load(tmp_path: Path) -> None:
    path = whatsapp(
        tmp_path,
        sales=f'store = "postgres://gw:{PASSWORD}@db/sales"',
        support=f'store = "{tmp_path / "support.db"}"',
    )

    sales, support = load(path, env={}).instances

    assert sales.store == f"postgres://gw:{PASSWORD}@db/sales"
    assert support.store == str(tmp_path / "support.db")


@pytest.mark.parametrize(
    ("sales", "support"),
    [
        pytest.param("same.db", "same.db", id="the-same-path"),
        pytest.param("same.db", "./sub/../same.db", id="the-same-file-spelled-otherwise"),
    ],
)
def test_two_instances_on_one_sqlite_store_are_refused_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sales: str, support: str
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths are the gateway's working directory's
    path = whatsapp(tmp_path, sales=f'store = "{sales}"', support=f'store = "{support}"')

    reason = assert_points_at(
        load_error(path), path, line_of(path, "store = ", occurrence=2), "instances[1].store"
    )
    assert reason == (
        f"instances 'sales' and 'support' share one session store ({tmp_path / 'same.db'}); "
        "give each WhatsApp instance its own store"
    )


def test_a_store_that_is_another_instances_default_is_refused_where_it_is_written(
    tmp_path: Path,
) -> None:
    path = whatsapp(tmp_path, sales=f'store = "{tmp_path / "data" / "support.db"}"')

    reason = assert_points_at(
        load_error(path), path, line_of(path, "store = "), "instances[0].store"
    )
    assert reason.startswith("instances 'sales' and 'support' share one session store (")


def test_two_instances_may_share_one_postgres_database(tmp_path: Path) -> None:
    """A PostgreSQL database holds many devices; each instance's is named by its JID."""
    url = f"postgresql://gw:{PASSWORD}@db:5432/whatsapp?sslmode=disable"
    path = whatsapp(tmp_path, sales=f'store = "{url}"', support=f'store = "{url}"')

    config = load(path, env={})

    assert [i.store for i in config.instances] == [url, url]


def test_a_store_on_the_operation_journal_is_refused(tmp_path: Path) -> None:
    path = whatsapp(tmp_path, support=f'store = "{tmp_path / "data" / "journal.db"}"')

    reason = assert_points_at(
        load_error(path), path, line_of(path, "store = "), "instances[1].store"
    )
    assert reason == (
        f"{tmp_path / 'data' / 'journal.db'} is the operation journal; give instance 'support' "
        "another session store"
    )


def test_a_simulated_instance_named_journal_is_fine(tmp_path: Path) -> None:
    # It has no session store: only a WhatsApp instance's default store would be journal.db.
    path = write(tmp_path, VALID.replace('name = "support"', 'name = "journal"'))

    assert [i.name for i in load(path, env={}).instances] == ["sales", "journal"]


@pytest.mark.parametrize(
    ("store", "kind"),
    [
        pytest.param(
            f"host=db user=gw password={PASSWORD} dbname=whatsapp",
            "a key=value connection string",
            id="libpq-key-value",
        ),
        pytest.param(
            f"password={PASSWORD}", "a key=value connection string", id="a-single-key-value"
        ),
        pytest.param(
            f"dbname=whatsapp password='{PASSWORD} x'",
            "a key=value connection string",
            id="key-value-with-a-quoted-value",
        ),
        pytest.param(f"mysql://gw:{PASSWORD}@db/whatsapp", "a mysql:// URL", id="other-scheme"),
    ],
)
def test_a_store_neither_sqlite_nor_postgres_url_is_refused_without_echoing_it(
    tmp_path: Path, store: str, kind: str
) -> None:
    path = whatsapp(tmp_path, sales=f'store = "{store}"')

    with pytest.raises(ConfigError) as info:
        load(path, env={})

    reason = assert_points_at(
        str(info.value), path, line_of(path, "store = "), "instances[0].store"
    )
    assert reason == f"must be a SQLite file path or a postgres:// URL ({kind} is not accepted)"
    assert_no_password(info.value)


# -- WhatsApp library settings --------------------------------------------------------------------


def test_whatsapp_log_level_and_stanza_timeout_defaults() -> None:
    config = from_mapping({}, env={})

    assert (config.whatsapp_log_level, config.stanza_timeout_seconds) == ("info", 30.0)


def test_whatsapp_log_level_and_stanza_timeout_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'whatsapp_log_level = "debug"\nstanza_timeout_seconds = 5\n' + VALID)

    config = load(path, env={})

    assert (config.whatsapp_log_level, config.stanza_timeout_seconds) == ("debug", 5.0)


@pytest.mark.parametrize(
    ("line", "key", "why"),
    [
        pytest.param('whatsapp_log_level = "warning"', "whatsapp_log_level", "'warn'", id="level"),
        pytest.param(
            "stanza_timeout_seconds = 0",
            "stanza_timeout_seconds",
            "greater than 0",
            id="zero-timeout",
        ),
    ],
)
def test_wrong_whatsapp_settings_name_their_line(
    tmp_path: Path, line: str, key: str, why: str
) -> None:
    path = write(tmp_path, line + "\n" + VALID)

    reason = assert_points_at(load_error(path), path, 1, key)
    assert why in reason


def test_a_first_backoff_longer_than_the_cap_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "reconnect_initial_seconds = 30\nreconnect_max_seconds = 5\n")

    reason = assert_points_at(
        load_error(path), path, line_of(path, "reconnect_initial_seconds"),
        "reconnect_initial_seconds",
    )  # fmt: skip

    assert reason == "must not exceed reconnect_max_seconds (5)"
