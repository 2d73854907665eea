"""What the observability tests share: log lines captured as the gateway writes them, and the
``/metrics`` exposition read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from service.grpc import convert
from service.observability.logs import JsonFormatter, TextFormatter
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.settings import Field, Settings

#: The logger of the per-call lines.
CALLS = "service.calls"
#: The keys of a call's line, after time, level, logger and message.
CALL_FIELDS = (
    "edge",
    "method",
    "instance",
    "caller",
    "status",
    "http_status",
    "reason",
    "operation_id",
    "duration_ms",
)
PRIVACY = "/wagateway.privacy.v1.PrivacyService/"
INSTANCES = "/wagateway.privacy.v1.InstanceService/"
REST_PRIVACY = "/api/profile/privacy/{instance}"
GET = PRIVACY + "GetPrivacySettings"
UPDATE = PRIVACY + "UpdatePrivacySettings"
STREAM = PRIVACY + "StreamUpdatePrivacySettings"
#: Calls a minute per token on the ``limited`` gateway (``tests/observability/conftest.py``).
RATE_LIMIT = 12
WRONG_TOKEN = "a-token-nobody-was-given"


def settings(**values: str) -> spb.PrivacySettings:
    """A request for ``field_name=value`` pairs (``last_seen="none"``)."""
    return convert.settings_to_proto(Settings({Field(f): v for f, v in values.items()}))


async def refused(call: Awaitable[Any]) -> str:
    """The name of the status code a unary call is refused with."""
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value.code().name


class Lines(logging.Handler):
    """Every record it is handed, formatted as the gateway's own handler would write it."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Captured:
    """The same records in both formats."""

    json: Lines = field(default_factory=lambda: Lines(JsonFormatter()))
    text: Lines = field(default_factory=lambda: Lines(TextFormatter()))

    def entries(self) -> list[dict[str, Any]]:
        """Every JSON line, parsed (each must be one object on one line)."""
        parsed = []
        for line in self.json.lines:
            assert "\n" not in line, line
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            parsed.append(entry)
        return parsed

    def calls(self) -> list[dict[str, Any]]:
        """The per-call lines, in the order the calls ended."""
        return [e for e in self.entries() if e["logger"] == CALLS]

    async def calls_ended(
        self, count: int = 1, within: float = 5.0, *, besides: str = ""
    ) -> list[dict[str, Any]]:
        """The per-call lines once there are ``count`` (a call the caller left ends later);
        ``besides``: lines of this method are left out (and not counted)."""
        async with asyncio.timeout(within):
            while True:
                calls = [c for c in self.calls() if c["method"] != besides]
                if len(calls) >= count:
                    return calls
                await asyncio.sleep(0.01)

    def everything(self) -> str:
        return "\n".join([*self.json.lines, *self.text.lines])


@contextlib.contextmanager
def capturing(name: str = "", level: int = logging.DEBUG) -> Iterator[Captured]:
    """Captures logger ``name`` (the root by default) and all below it at ``level``."""
    captured = Captured()
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    logger.addHandler(captured.json)
    logger.addHandler(captured.text)
    try:
        yield captured
    finally:
        logger.removeHandler(captured.json)
        logger.removeHandler(captured.text)
        logger.setLevel(previous)


Samples = dict[tuple[tuple[str, str], ...], float]


@dataclass
class Exposition:
    """One scrape of ``/metrics``, parsed."""

    text: str
    content_type: str

    def samples(self, name: str) -> Samples:
        """Sample ``name``'s values by their labels (sorted ``(label, value)`` pairs)."""
        found: Samples = {}
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                if sample.name == name:
                    found[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def nonzero(self, name: str) -> Samples:
        return {labels: value for labels, value in self.samples(name).items() if value}

    def value(self, name: str, **labels: str) -> float:
        return self.samples(name)[tuple(sorted(labels.items()))]


async def scrape(client: aiohttp.ClientSession, base: str) -> Exposition:
    """``GET base/metrics``, with no token, as a Prometheus scraper calls it."""
    async with client.get(base + "/metrics") as response:
        assert response.status == 200, await response.text()
        return Exposition(await response.text(), response.headers["Content-Type"])
