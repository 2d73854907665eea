"""The log formats: JSON, one object per line whatever the record holds (a traceback, a line
separator), or text with a call's fields as ``key=value``; ``auto`` picks by the log stream;
``log_format`` and ``metrics_listen`` in the configuration and the environment."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from service import config
from service.config import ConfigError, from_mapping
from service.observability import logs
from service.observability.calls import FIELDS
from service.observability.logs import JsonFormatter, TextFormatter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("service.test", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("hello %s", "there"))

    entry = json.loads(line)
    assert list(entry) == ["time", "level", "logger", "message"]
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "WARNING",
        "service.test",
        "hello there",
    )
    assert entry["time"].endswith("Z")
    assert len(entry["time"]) == len("2026-01-01T00:00:00.000Z")


def test_a_call_s_fields_become_keys_of_their_own() -> None:
    fields = {"method": "GET /x", "status": "OK", "duration_ms": 1.5, "operation_id": None}
    entry = json.loads(JsonFormatter().format(record(**{FIELDS: fields})))

    assert {k: entry[k] for k in fields} == fields
    # A field cannot overwrite the line's own keys.
    clash = json.loads(JsonFormatter().format(record(**{FIELDS: {"level": "x", "message": "y"}})))
    assert (clash["level"], clash["message"]) == ("WARNING", "hello %s")


def test_an_exception_is_formatted_into_the_json_line() -> None:
    logger = logging.getLogger("service.test.exceptions")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("went wrong\non two lines")
        except ValueError:
            logger.exception("the update crashed")
    finally:
        logger.removeHandler(handler)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "the update crashed"
    assert entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: went wrong\non two lines" in entry["exception"]


def test_a_line_separator_in_a_message_stays_escaped() -> None:
    line = JsonFormatter().format(record("a\u2028b\u2029c\rd\x00e"))

    assert line.isascii()
    assert len(line.splitlines()) == 1
    assert json.loads(line)["message"] == "a\u2028b\u2029c\rd\x00e"


def test_text_lines_carry_a_call_s_fields_as_key_value() -> None:
    fields = {"instance": "sales", "operation_id": None, "duration_ms": 2.0}
    line = TextFormatter().format(record("GET /x %s", "OK", **{FIELDS: fields}))

    assert line.endswith(
        " WARNING service.test: GET /x OK instance=sales operation_id=- duration_ms=2.0"
    )


@pytest.mark.parametrize(
    ("log_format", "terminal", "json_lines"),
    [
        ("auto", True, False),
        ("auto", False, True),
        ("json", True, True),
        ("text", False, False),
    ],
)
def test_auto_is_json_unless_the_log_stream_is_a_terminal(
    log_format: logs.LogFormat, terminal: bool, json_lines: bool
) -> None:
    stream = Terminal() if terminal else io.StringIO()
    root = logging.getLogger()
    level = root.level
    configured = logs.configure("info", log_format, stream)
    try:
        logging.getLogger("service.test.configure").info("configured")
    finally:
        logs.stop(configured)
        root.setLevel(level)

    (line,) = stream.getvalue().splitlines()
    if json_lines:
        assert json.loads(line)["message"] == "configured"
    else:
        assert line.endswith(" INFO service.test.configure: configured")


def test_log_format_and_metrics_listen_have_defaults_and_come_from_the_environment() -> None:
    defaults = from_mapping({}, env={})
    assert (defaults.log_format, defaults.metrics_listen) == ("auto", "")
    assert defaults.log_format == config.DEFAULT_LOG_FORMAT

    env = {
        "PRIVACY_GATEWAY_LOG_FORMAT": "json",
        "PRIVACY_GATEWAY_METRICS_LISTEN": "127.0.0.1:9464",
    }
    given = from_mapping({"log_format": "text"}, env=env)
    assert (given.log_format, given.metrics_listen) == ("json", "127.0.0.1:9464")


def test_a_wrong_log_format_or_metrics_address_is_reported_where_it_is(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^PRIVACY_GATEWAY_LOG_FORMAT: "):
        from_mapping({}, env={"PRIVACY_GATEWAY_LOG_FORMAT": "yaml"})
    path = tmp_path / "gateway.toml"
    path.write_text('log_level = "info"\nmetrics_listen = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"gateway.toml:2: metrics_listen"):
        config.load(path, env={})


def test_configure_s_lines_keep_their_order_traceback_and_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    configured = logs.configure("debug", "json", stream)
    logger = logging.getLogger("service.test.handoff")
    try:
        for number in range(50):
            logger.debug("line %d of %s", number, "fifty", extra={FIELDS: {"n": number}})
        try:
            raise RuntimeError("from the loop")
        except RuntimeError:
            logger.exception("crashed with %d%%", 100)
    finally:
        logs.stop(configured)
        root.setLevel(level)

    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in entries[:50]] == [f"line {n} of fifty" for n in range(50)]
    assert [e["n"] for e in entries[:50]] == list(range(50))
    crash = entries[50]
    assert crash["message"] == "crashed with 100%"
    assert crash["exception"].startswith("Traceback (most recent call last):")
    assert crash["exception"].endswith("RuntimeError: from the loop")
    assert len(entries) == 51
