"""WhatsApp's side of many accounts, reached over loopback, with a history tests can read.

The in-process ``SimulatedSession`` keeps "WhatsApp" inside the gateway, so it cannot show what
matters once several replicas share the accounts: which replica is connected to an account, which
stanzas each one sent, and what WhatsApp does when a second client connects with the same device.
This server plays that side for every account (keyed by instance name) behind one TCP port:

- an account holds its settings (``DEFAULT_SETTINGS``, or the initial values it was given); a
  fetch answers them, a set applies one field and answers the settings after, both after the
  configured latency (the set is applied on arrival: an answer lost on the way back leaves the
  change made, as on WhatsApp);
- **one connection per account**: a second client connecting for an account takes it, and the
  first is sent ``replaced`` and closed. That is WhatsApp's ``<stream:error><conflict
  type="replaced"/>``, which whatsmeow handles in connectionevents.go (handleStreamError:
  ``expectDisconnect()``, "Got replaced stream error, sending StreamReplaced event", then
  ``events.StreamReplaced``), without reconnecting;
- every connection and every stanza is recorded (``connections``, ``stanzas``), with monotonic
  times (``time.monotonic`` is system-wide on Linux, so comparable with other processes') and
  wall-clock times;
- tests steer it: ``change_on_phone``, ``drop``, ``fail_field``, ``refuse``, ``set_latency``.

A connection's stanzas are answered in the order they came, one at a time, as the gateway sends
at most one per instance at a time anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from service.sessions.simulated import DEFAULT_SETTINGS
from service.sessions.simulator.protocol import (
    MAX_LINE,
    ProtocolError,
    decode,
    encode,
    field_from_wire,
    settings_from_wire,
    settings_to_wire,
)
from service.settings import Field, Settings

log = logging.getLogger(__name__)

#: How long a new connection may take to say hello before it is closed.
HELLO_TIMEOUT = 10.0


class Ending(enum.Enum):
    """How a connection ended."""

    #: Another client connected for the same account (WhatsApp's stream error ``replaced``).
    REPLACED = "replaced"
    #: The simulator closed it without a word (``drop``): the client may reconnect.
    DROPPED = "dropped"
    #: The client closed it (or went away).
    CLIENT_CLOSED = "client_closed"
    #: The simulator stopped.
    SERVER_CLOSED = "server_closed"
    #: The account refused the connection (``refuse``); it never carried a stanza.
    REFUSED = "refused"


@dataclass(slots=True)
class ConnectionRecord:
    """One connection of a client to an account; ``closed*`` and ``ended`` are set when it ends.

    ``opened``/``closed`` are ``time.monotonic()`` instants, ``*_wall`` ``time.time()`` ones.
    """

    account: str
    client: str
    opened: float
    opened_wall: float
    closed: float | None = None
    closed_wall: float | None = None
    ended: Ending | None = None

    @property
    def open(self) -> bool:
        return self.ended is None

    def to_wire(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "client": self.client,
            "opened": self.opened,
            "opened_wall": self.opened_wall,
            "closed": self.closed,
            "closed_wall": self.closed_wall,
            "ended": None if self.ended is None else self.ended.value,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> ConnectionRecord:
        ended = raw.get("ended")
        return cls(
            str(raw["account"]),
            str(raw["client"]),
            float(raw["opened"]),
            float(raw["opened_wall"]),
            None if raw.get("closed") is None else float(raw["closed"]),
            None if raw.get("closed_wall") is None else float(raw["closed_wall"]),
            None if ended is None else Ending(ended),
        )


StanzaKind = Literal["fetch", "set"]


@dataclass(frozen=True, slots=True)
class StanzaRecord:
    """One stanza that reached an account: a fetch (no ``field``/``value``) or a set.

    ``at`` is its arrival (``time.monotonic()``), ``wall`` the same instant as ``time.time()``;
    ``error`` is the error string it was answered with (``fail_field``), None when it was
    answered with the settings (or its connection ended first).
    """

    account: str
    client: str
    kind: StanzaKind
    field: Field | None
    value: str | None
    at: float
    wall: float
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "client": self.client,
            "kind": self.kind,
            "field": None if self.field is None else self.field.value,
            "value": self.value,
            "at": self.at,
            "wall": self.wall,
            "error": self.error,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> StanzaRecord:
        kind: StanzaKind = "set" if raw["kind"] == "set" else "fetch"
        return cls(
            str(raw["account"]),
            str(raw["client"]),
            kind,
            None if raw.get("field") is None else Field(raw["field"]),
            None if raw.get("value") is None else str(raw["value"]),
            float(raw["at"]),
            float(raw["wall"]),
            None if raw.get("error") is None else str(raw["error"]),
        )


@dataclass(eq=False)
class _Peer:
    """One client's open connection, as the server holds it."""

    writer: asyncio.StreamWriter
    record: ConnectionRecord

    def end(self, ending: Ending) -> None:
        """Ends the connection (once): records how, and closes the socket."""
        if self.record.ended is not None:
            return
        self.record.ended = ending
        self.record.closed, self.record.closed_wall = time.monotonic(), time.time()
        if ending is Ending.REPLACED:
            self.send({"type": "replaced"})
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.close()

    def send(self, message: Mapping[str, Any]) -> None:
        if self.writer.is_closing():
            return
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.write(encode(message))


@dataclass
class _Account:
    settings: Settings
    peer: _Peer | None = None
    faults: dict[Field, str] = field(default_factory=dict)
    refusal: str | None = None
    latency: float | None = None


class SimulatorServer:
    """A simulated WhatsApp for many accounts on one loopback port.

    ``accounts`` gives accounts their initial settings (unset fields take ``DEFAULT_SETTINGS``);
    an account not named there is made on its first connection, from the values its hello
    carries. ``latency`` is every stanza's round trip in seconds (``set_latency`` changes it,
    for all accounts or one). Use it as ``async with SimulatorServer() as server:`` and dial
    ``server.address``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        accounts: Mapping[str, Mapping[Field, str]] | None = None,
        latency: float = 0.0,
    ) -> None:
        self._host = host
        self._port = port
        self.latency = latency
        self._accounts: dict[str, _Account] = {}
        for name, settings in (accounts or {}).items():
            self.add_account(name, settings)
        self.connections: list[ConnectionRecord] = []
        self.stanzas: list[StanzaRecord] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._bound = ""

    # -- running ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` as bound (the real port when 0 was asked for)."""
        if not self._bound:
            raise RuntimeError("the simulator is not started")
        return self._bound

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=MAX_LINE
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self._bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def close(self) -> None:
        """Stops listening and ends every connection (``SERVER_CLOSED``)."""
        if self._server is not None:
            self._server.close()
        for account in self._accounts.values():
            if account.peer is not None:
                account.peer.end(Ending.SERVER_CLOSED)
                account.peer = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what tests steer and read ---------------------------------------------------------

    def add_account(self, account: str, settings: Mapping[Field, str] | None = None) -> None:
        """Registers ``account`` with ``settings`` over the defaults (replacing any it had)."""
        self._accounts[account] = _Account(Settings({**DEFAULT_SETTINGS, **(settings or {})}))

    def settings(self, account: str) -> Settings:
        """What WhatsApp holds for ``account``."""
        return self._account(account).settings

    def connected_client(self, account: str) -> str | None:
        """The label of the client connected to ``account`` now, if any."""
        peer = self._accounts[account].peer if account in self._accounts else None
        return None if peer is None else peer.record.client

    def connections_of(self, account: str) -> list[ConnectionRecord]:
        return [c for c in self.connections if c.account == account]

    def stanzas_of(self, account: str, client: str | None = None) -> list[StanzaRecord]:
        return [
            s
            for s in self.stanzas
            if s.account == account and (client is None or s.client == client)
        ]

    def change_on_phone(self, account: str, field: Field, value: str) -> None:
        """The account's owner changes ``field`` on the phone: WhatsApp holds the new value and
        notifies the connected client, as its privacy-settings notification does."""
        held = self._account(account)
        held.settings = held.settings.with_value(field, value)
        if held.peer is not None:
            held.peer.send({"type": "notification", "field": field.value, "value": value})

    def drop(self, account: str) -> bool:
        """Closes ``account``'s connection without a word (a network failure); False if none."""
        held = self._account(account)
        if held.peer is None:
            return False
        held.peer.end(Ending.DROPPED)
        held.peer = None
        return True

    def fail_field(self, account: str, field: Field, reason: str) -> None:
        """From now on every set of ``field`` is answered with ``reason``, one of whatsmeow's own
        error strings (``info query returned status 500: internal-server-error``...), and
        changes nothing."""
        self._account(account).faults[field] = reason

    def clear_faults(self, account: str) -> None:
        held = self._account(account)
        held.faults.clear()
        held.refusal = None

    def refuse(self, account: str, reason: str | None = "connection refused") -> None:
        """Refuses every new connection for ``account`` (None: accepts them again); an open one
        stays. A dial that fails, for the backoff between attempts to show."""
        self._account(account).refusal = reason

    def set_latency(self, seconds: float, account: str | None = None) -> None:
        """Every stanza's round trip from now on, for ``account`` or (None) for all."""
        if account is None:
            self.latency = seconds
        else:
            self._account(account).latency = seconds

    def history(self) -> dict[str, Any]:
        """The connections and stanzas as JSON-ready data (what the control channel answers)."""
        return {
            "connections": [c.to_wire() for c in self.connections],
            "stanzas": [s.to_wire() for s in self.stanzas],
        }

    def _account(self, account: str) -> _Account:
        if account not in self._accounts:
            self.add_account(account)
        return self._accounts[account]

    # -- connections -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._converse(reader, writer)
        except (ProtocolError, ValueError, KeyError) as exc:
            log.info("simulator: closing a connection that broke the protocol: %s", exc)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Only ``close`` cancels a handler; ending quietly keeps asyncio's stream callback
            # (which asks a finished handler for its exception) from logging the cancellation.
            pass
        finally:
            self._handlers.discard(task)
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT)
        if not line:
            return
        first = decode(line)
        if first["type"] == "control":
            writer.write(encode(self._control(first)))
            await writer.drain()
            return
        if first["type"] != "hello":
            raise ProtocolError(f"expected a hello, got {first['type']!r}")
        name, client = str(first["account"]), str(first.get("client") or "gateway")
        if name not in self._accounts:
            initial = first.get("settings")
            self.add_account(name, settings_from_wire(initial) if initial else None)
        held = self._accounts[name]
        record = ConnectionRecord(name, client, time.monotonic(), time.time())
        self.connections.append(record)
        peer = _Peer(writer, record)
        if held.refusal is not None:
            peer.send({"type": "refused", "reason": held.refusal})
            peer.end(Ending.REFUSED)
            return
        if held.peer is not None:
            held.peer.end(Ending.REPLACED)
        held.peer = peer
        peer.send({"type": "connected"})
        try:
            await self._serve(name, peer, reader)
        finally:
            if held.peer is peer:
                held.peer = None
            peer.end(Ending.CLIENT_CLOSED)

    async def _serve(self, name: str, peer: _Peer, reader: asyncio.StreamReader) -> None:
        while (line := await reader.readline()) and peer.record.open:
            message = decode(line)
            kind = message["type"]
            if kind not in ("fetch", "set"):
                raise ProtocolError(f"unknown stanza {kind!r}")
            answer = self._stanza(name, peer.record.client, message)
            latency = self._accounts[name].latency
            delay = self.latency if latency is None else latency
            if delay > 0:
                await asyncio.sleep(delay)
            # Answered only on the connection that asked, and only while it lasts.
            peer.send(answer)

    def _stanza(self, name: str, client: str, message: Mapping[str, Any]) -> dict[str, Any]:
        held = self._accounts[name]
        stanza_id = message.get("id")
        now, wall = time.monotonic(), time.time()
        if message["type"] == "fetch":
            self.stanzas.append(StanzaRecord(name, client, "fetch", None, None, now, wall))
            return {"type": "result", "id": stanza_id, "settings": settings_to_wire(held.settings)}
        field = field_from_wire(message.get("field"))
        value = str(message.get("value"))
        reason = held.faults.get(field)
        if reason is None and value not in field.spec.values:
            reason = "info query returned status 400: bad-request"
        self.stanzas.append(StanzaRecord(name, client, "set", field, value, now, wall, reason))
        if reason is not None:
            return {"type": "error", "id": stanza_id, "reason": reason}
        held.settings = held.settings.with_value(field, value)
        return {"type": "result", "id": stanza_id, "settings": settings_to_wire(held.settings)}

    # -- the control channel (a simulator in a process of its own) -------------------------

    def _control(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Answers one control request: the same steering and reading as the methods above."""
        op = str(request.get("op"))
        handler = _CONTROLS.get(op)
        if handler is None:
            return {"type": "error", "reason": f"unknown control op {op!r}"}
        try:
            return {"type": "ok", **handler(self, str(request.get("account", "")), request)}
        except (ProtocolError, ValueError, KeyError, TypeError) as exc:
            return {"type": "error", "reason": str(exc)}


_Control = Callable[[SimulatorServer, str, Mapping[str, Any]], dict[str, Any]]


def _set_latency(server: SimulatorServer, account: str, request: Mapping[str, Any]) -> None:
    server.set_latency(float(request["seconds"]), account if request.get("account") else None)


def _done(action: Callable[[SimulatorServer, str, Mapping[str, Any]], None]) -> _Control:
    def control(server: SimulatorServer, account: str, req: Mapping[str, Any]) -> dict[str, Any]:
        action(server, account, req)
        return {}

    return control


_CONTROLS: dict[str, _Control] = {
    "history": lambda server, _, __: server.history(),
    "settings": lambda server, account, _: {"settings": settings_to_wire(server.settings(account))},
    "connected_client": lambda server, account, _: {"client": server.connected_client(account)},
    "drop": lambda server, account, _: {"dropped": server.drop(account)},
    "change_on_phone": _done(
        lambda server, account, request: server.change_on_phone(
            account, field_from_wire(request.get("field")), str(request.get("value"))
        )
    ),
    "fail_field": _done(
        lambda server, account, request: server.fail_field(
            account, field_from_wire(request.get("field")), str(request.get("reason"))
        )
    ),
    "clear_faults": _done(lambda server, account, _: server.clear_faults(account)),
    "refuse": _done(
        lambda server, account, request: server.refuse(
            account, None if request.get("reason") is None else str(request.get("reason"))
        )
    ),
    "set_latency": _done(_set_latency),
}
