"""The gateway's log lines: JSON, one object per line, or text for a person at a terminal.

``log_format`` chooses (``service.config``): ``json``, ``text``, or ``auto`` (the default),
which writes JSON unless the log stream (stderr) is a terminal. A JSON line holds ``time`` (UTC,
ISO 8601, milliseconds), ``level``, ``logger`` and ``message``, then the fields a line carries
(a call's: ``service.observability.calls``) as keys of their own, and ``exception`` (the
formatted traceback, one string) when there is one: a line never breaks, whatever it holds.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

from service.observability.calls import FIELDS

LogFormat = Literal["auto", "json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = frozenset({"time", "level", "logger", "message", "exception", "stack"})
#: What a call's message says already (``"<method> <status>"``): not repeated in a text line.
_IN_MESSAGE = frozenset({"method", "status"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self) -> None:
        super().__init__()
        #: The last second formatted and its text (one tuple, swapped whole: threads log too),
        #: since lines come many to a second.
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        second = self._second
        if second[0] != int(record.created):
            whole = int(record.created)
            second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
            self._second = second
        entry: dict[str, Any] = {
            "time": f"{second[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: dict[str, Any] | None = getattr(record, FIELDS, None)
        if fields:
            entry.update((k, v) for k, v in fields.items() if k not in _RESERVED)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII only: a line separator (U+2028...) in a message stays escaped, so that nothing
        # downstream splits the line.
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with a call's fields after the message as ``key=value`` (but for the
    method and status, which a call's message already is)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields: dict[str, Any] | None = getattr(record, FIELDS, None)
        if not fields:
            return line
        shown = " ".join(
            f"{k}={'-' if v is None else v}" for k, v in fields.items() if k not in _IN_MESSAGE
        )
        return f"{line} {shown}"


def wants_json(log_format: LogFormat, stream: TextIO) -> bool:
    """Whether lines written to ``stream`` are JSON: ``auto`` is JSON unless it is a terminal."""
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return log_format == "json"


def formatter(log_format: LogFormat, stream: TextIO) -> logging.Formatter:
    return JsonFormatter() if wants_json(log_format, stream) else TextFormatter()


def configure(level: str, log_format: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """Sends every logger's records at ``level`` and above to ``stream`` (stderr); returns the
    handler, for ``stop``."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(log_format, out))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def stop(handler: logging.Handler) -> None:
    """Takes ``configure``'s handler off the root logger, and flushes it."""
    logging.getLogger().removeHandler(handler)
    handler.flush()
    handler.close()
