"""What the hostile-input tests share: a gateway on a thread of its own, the judge of each
answer, and the tally of what was tried and found.

The gateway runs on its own event loop in a background thread (``GatewayThread``), so that a
Hypothesis test (synchronous) can send it thousands of requests with blocking clients without
starting a gateway per example. Every answer is judged the same way (``Judge``):

- a crash: gRPC UNKNOWN, INTERNAL or DATA_LOSS, an HTTP 5xx, no answer at all, or anything the
  gateway logged at ERROR or with a traceback while it answered;
- a wrong code: an error without the catalogue's ErrorInfo (gRPC) or envelope (REST), a reason
  the catalogue does not have or that the edge cannot meet, or a code or status that is not the
  catalogue's for it;
- a leak: a token (or its hash) in an answer or a log line, anything the caller sent longer than
  the echo bound (``SHOWN_CHARACTERS``) echoed whole, or trailers over ``MAX_TRAILER_BYTES``;
- a change: anything that reached a simulated WhatsApp session (a stanza sent, a setting moved).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from service.assembly import build_gateway
from service.auth import hash_token
from service.config import from_mapping
from service.errors import CATALOGUE, ERROR_DOMAIN, SHOWN_CHARACTERS, Edge
from service.gateway import Gateway
from service.grpc.server import RunningServer, start_server
from service.http.server import HttpServer
from service.sessions.simulated import SimulatedSession
from service.settings import Settings
from tests.helpers.harness import ACME_TOKEN, GLOBEX_TOKEN, SALES_TOKEN, gateway_config

T = TypeVar("T")

TOKENS = (ACME_TOKEN, SALES_TOKEN, GLOBEX_TOKEN)
SECRETS = (*TOKENS, *(hash_token(t) for t in TOKENS))
INSTANCES = ("sales", "support", "other")
#: A whole error's trailers (grpc-message, grpc-status-details-bin) stay under this.
MAX_TRAILER_BYTES = 2048
_CRASH_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


class LogWatch(logging.Handler):
    """Every record logged anywhere in the process, from any thread, as text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.records.append(record)

    def mark(self) -> int:
        with self._lock:
            return len(self.records)

    def since(self, mark: int) -> list[logging.LogRecord]:
        with self._lock:
            return self.records[mark:]

    @staticmethod
    def text(record: logging.LogRecord) -> str:
        exc = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        return f"{record.name} {record.levelname} {record.getMessage()} {exc}"


@dataclass
class Tally:
    """What one hostile test tried and what it found; ``line()`` is its printed summary."""

    name: str
    tried: int = 0
    crashes: list[str] = field(default_factory=list)
    wrong_codes: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.name}: tried={self.tried} crashes={len(self.crashes)} "
            f"wrong_codes={len(self.wrong_codes)} leaks={len(self.leaks)} "
            f"changes={len(self.changes)}"
        )

    def answered(self) -> str:
        """The answers seen, most common first (``INVALID_ARGUMENT/MALFORMED_REQUEST=812``)."""
        ranked = sorted(self.answers.items(), key=lambda item: -item[1])
        return ", ".join(f"{name}={count}" for name, count in ranked)

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.wrong_codes or self.leaks or self.changes)

    def report(self) -> str:
        """The summary line, what was answered, and the first few of each finding."""
        lines = [self.line(), f"  answers: {self.answered()}"]
        for kind in ("crashes", "wrong_codes", "leaks", "changes"):
            for found in getattr(self, kind)[:5]:
                lines.append(f"  {kind}: {found}")
        return "\n".join(lines)


def leaked(text: str, sent: Iterable[str]) -> str | None:
    """What of a secret, or of a too-long sent value, ``text`` holds; None when nothing."""
    for secret in SECRETS:
        if secret in text:
            return f"a token (or its hash) {secret[:4]}..."
    for value in sent:
        if len(value) <= SHOWN_CHARACTERS:
            continue
        for window in (value[: SHOWN_CHARACTERS + 1], value[-(SHOWN_CHARACTERS + 1) :]):
            if window in text:
                return f"{len(value)} characters echoed past the bound: {window[:20]!r}..."
    return None


class Sessions:
    """What the simulated sessions hold now, to tell whether anything reached them since."""

    def __init__(self, gateway: Gateway) -> None:
        self._sessions = {
            name: session
            for name in INSTANCES
            if (instance := gateway.instances.get(name)) is not None
            and isinstance(session := instance.session, SimulatedSession)
        }
        self._seen = self._now()

    def _now(self) -> dict[str, tuple[Settings, int]]:
        return {n: (s.server_settings, len(s.sent)) for n, s in self._sessions.items()}

    def changed(self) -> list[str]:
        """The sessions that moved since the last call (and takes the new state as the base)."""
        now = self._now()
        moved = [name for name in now if now[name] != self._seen[name]]
        self._seen = now
        return moved


@dataclass
class Judge:
    """Judges answers into a ``Tally``, with the log records the gateway wrote meanwhile."""

    tally: Tally
    logs: LogWatch
    sessions: Sessions

    def crash_logs(self, mark: int, sent: Sequence[str], label: str) -> bool:
        """Counts what was logged since ``mark``: a traceback or an ERROR is a crash, and any
        record with a secret or an unbounded echo is a leak. True when anything was found."""
        found = False
        for record in self.logs.since(mark):
            text = self.logs.text(record)
            if record.exc_info or record.levelno >= logging.ERROR:
                self.tally.crashes.append(f"{label}: logged {text[:300]}")
                found = True
            leak = leaked(text, sent)
            if leak is not None:
                self.tally.leaks.append(f"{label}: log {record.name}: {leak}")
                found = True
        return found

    def batch_done(self, label: str) -> None:
        """After a batch: anything that reached WhatsApp is a change."""
        for name in self.sessions.changed():
            self.tally.changes.append(f"{label}: session {name} changed")

    # -- gRPC ----------------------------------------------------------------------------------

    def grpc(self, label: str, error: grpc.RpcError | None, sent: Sequence[str]) -> None:
        """One gRPC answer: None for OK (a stream's first message counts as OK)."""
        self.tally.tried += 1
        if error is None:
            self._count("OK")
            return
        assert isinstance(error, grpc.Call)
        code = error.code()
        details = error.details() or ""
        trailers = tuple(error.trailing_metadata() or ())
        size = trailer_bytes(error)
        text = details + " " + " ".join(f"{k}={v!r}" for k, v in trailers)
        status = _rich_status(trailers)
        infos = _details(status, error_details_pb2.ErrorInfo) if status is not None else []
        for info in infos:
            text += " " + " ".join(f"{k}={v}" for k, v in info.metadata.items())
        reason = infos[0].reason if len(infos) == 1 and infos[0].domain == ERROR_DOMAIN else None
        self._count(f"{code.name}/{reason or '-'}")
        what = f"{label}: {code.name} {reason} {details[:120]!r}"
        if code in _CRASH_CODES or reason == "INTERNAL":
            self.tally.crashes.append(what)
        elif not _grpc_code_is_the_catalogues(code, reason, details):
            self.tally.wrong_codes.append(what)
        leak = leaked(text, sent)
        if leak is not None:
            self.tally.leaks.append(f"{what}: {leak}")
        if size > MAX_TRAILER_BYTES:
            self.tally.leaks.append(f"{what}: {size} bytes of trailers")

    # -- REST ----------------------------------------------------------------------------------

    def rest(
        self, label: str, reply: HttpReply | None, sent: Sequence[str], *, head: bool = False
    ) -> None:
        """One REST answer; ``head``: the request was a HEAD, whose answer has no body."""
        self.tally.tried += 1
        if reply is None:
            self._count("no answer")
            self.tally.crashes.append(f"{label}: no answer")
            return
        raw = reply.raw.decode("latin-1")
        leak = leaked(raw, sent) or leaked(reply.raw.decode("utf-8", "replace"), sent)
        what = f"{label}: {reply.status} {reply.body[:160]!r}"
        if leak is not None:
            self.tally.leaks.append(f"{what}: {leak}")
        if reply.status >= 500:
            self._count(str(reply.status))
            self.tally.crashes.append(what)
            return
        if head:
            self._count(f"HEAD {reply.status}")
            if not reply.headers.get("content-type", "").startswith("application/json"):
                self.tally.wrong_codes.append(what)
            return
        reason = _envelope_reason(reply)
        self._count(f"{reply.status}/{reason or '-'}")
        if reply.status >= 400:
            right = _rest_status_is_the_catalogues(reply.status, reason)
        else:
            right = _rest_success_shape(reply)
        if not right:
            self.tally.wrong_codes.append(what)

    def _count(self, answer: str) -> None:
        self.tally.answers[answer] = self.tally.answers.get(answer, 0) + 1


def trailer_bytes(error: grpc.Call) -> int:
    """The size of an error's trailers as sent: its message and its trailing metadata."""
    trailers = error.trailing_metadata() or ()
    return len((error.details() or "").encode()) + sum(len(k) + len(v) for k, v in trailers)


def _rich_status(trailers: Sequence[tuple[str, str | bytes]]) -> status_pb2.Status | None:
    for key, value in trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _details(status: status_pb2.Status, kind: type[T]) -> list[Any]:
    found = []
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):  # type: ignore[attr-defined]
            message = kind()
            packed.Unpack(message)
            found.append(message)
    return found


#: grpc's own refusals, before the gateway sees a call (the README states them).
_GRPC_OWN = {
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "received metadata size exceeds"),
}


def _grpc_code_is_the_catalogues(code: grpc.StatusCode, reason: str | None, details: str) -> bool:
    if reason is None:
        return any(code is own and text in details for own, text in _GRPC_OWN)
    entry = CATALOGUE.get(reason)
    return entry is not None and bool(entry.edges & Edge.GRPC) and entry.code.value == code.name


# -- raw HTTP ----------------------------------------------------------------------------------


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


def raw_http(port: int, request: bytes, timeout: float = 5.0) -> HttpReply | None:
    """Sends ``request`` as is and reads the answer until the server closes; None if none."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before reading all
            sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    raw = b"".join(chunks)
    return parse_reply(raw)


def http_request(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    newline: bytes = b"\r\n",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """One HTTP/1.1 request as bytes, exactly as given (no header is added or checked)."""
    head = [method + b" " + target + b" " + version]
    head += [name + b": " + value for name, value in headers]
    return newline.join(head) + newline + newline + body


def parse_reply(raw: bytes) -> HttpReply | None:
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunked(body)
    return HttpReply(int(parts[1]), headers, body, raw)


def _unchunked(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def _envelope_reason(reply: HttpReply) -> str | None:
    if not reply.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = json.loads(reply.body)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("success") is not False:
        return None
    error = body.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    reason = error.get("reason")
    return reason if isinstance(reason, str) else None


def _rest_status_is_the_catalogues(status: int, reason: str | None) -> bool:
    entry = CATALOGUE.get(reason or "")
    if entry is None or not entry.edges & Edge.REST:
        return False
    # HTTP_ERROR is any other refusal of the HTTP layer, with the status that layer chose.
    return entry.http_status == status or entry.name == "HTTP_ERROR"


def _rest_success_shape(reply: HttpReply) -> bool:
    kind = reply.headers.get("content-type", "")
    if kind.startswith("application/x-ndjson"):
        return True
    if not kind.startswith("application/json"):
        return False
    if not reply.body:  # HEAD
        return True
    try:
        body = json.loads(reply.body)
    except ValueError:
        return False
    return isinstance(body, dict)


# -- the gateway on its own thread -------------------------------------------------------------


class GatewayThread:
    """The ``gateway`` fixture's gateway (both edges), on an event loop of its own thread."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self._config = gateway_config(data_dir=str(data_dir), **overrides)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.gateway: Gateway
        self.grpc: RunningServer
        self.http: HttpServer

    def start(self) -> GatewayThread:
        self._thread.start()
        self.run(self._start())
        return self

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> None:
        self.gateway = build_gateway(from_mapping(self._config, env={}))
        await self.gateway.start()
        self.grpc = await start_server(self.gateway, "127.0.0.1:0")
        self.http = HttpServer(self.gateway)
        await self.http.start("127.0.0.1:0")
        # Each session fetches its settings once, on the first read: done here, so that any
        # stanza after this is one a hostile call caused.
        for instance in self.gateway.instances:
            await instance.session.read_settings()

    async def _stop(self) -> None:
        await self.http.stop()
        await self.grpc.stop(None)
        await self.gateway.close()

    def stop(self) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc.port}"

    @property
    def http_port(self) -> int:
        return self.http.port
