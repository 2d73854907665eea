"""A session whose WhatsApp is the ``SimulatorServer``, reached over a loopback socket.

It behaves at the gateway's boundary as ``SimulatedSession`` does (the settings fetched with one
stanza and cached after, as whatsmeow's ``TryFetchPrivacySettings``; one stanza per set; a set's
answer is the new cache), and at the connection as the WhatsApp session does: ``start`` connects
in the background, a dropped connection is redialled with capped exponential backoff, and a
connection another client took over (``replaced``) is not redialled, because a second client of
the same device would only take it back and be taken over in turn (whatsmeow does not reconnect
after ``StreamReplaced`` either). Each new connection is a new client with an empty cache, which
reads the settings at once, so a change made while it was away reaches the listeners.

``may_connect`` is the replicas' gate: asked before every dial and every stanza, it lets a
replica that no longer holds an instance's lease neither connect nor send, even one that was
stalled and resumes with its socket still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from service.sessions.base import (
    ChangeListener,
    ChangeNotifier,
    ChangeSource,
    SessionError,
    SessionState,
    SessionStatus,
    StanzaFate,
    status_now,
)
from service.sessions.defaults import (
    RECONNECT_INITIAL_SECONDS,
    RECONNECT_MAX_SECONDS,
    STANZA_TIMEOUT_SECONDS,
)
from service.sessions.simulated import NOT_CONNECTED_REASON
from service.sessions.simulator.protocol import (
    MAX_LINE,
    ProtocolError,
    decode,
    encode,
    field_from_wire,
    settings_from_wire,
    settings_to_wire,
)
from service.sessions.whatsapp.stanza_errors import stanza_error
from service.settings import Field, Settings
from service.waiting import woken_within

log = logging.getLogger(__name__)

#: whatsmeow's error for a stanza whose connection dropped before its answer (errors.go:250,
#: request.go:199-202): it went out, so WhatsApp may have applied it.
DISCONNECTED_BEFORE_ANSWER = "websocket disconnected before info query returned response"
#: ... and for one whose answer did not come in time (errors.go:21, request.go:180-181).
TIMED_OUT = "info query timed out"
#: Why a gated session neither dials nor sends.
NO_LEASE_REASON = "this replica no longer holds the instance's lease"
REPLACED_REASON = "another client connected with this session: stop it, then restart the gateway"
CLOSED_REASON = "the session was closed"
#: How long a dial (TCP connect, hello, answer) may take.
DIAL_TIMEOUT = 5.0


def _always() -> bool:
    return True


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Link:
    """One connection to the simulator: its stanzas in flight, and how it ended."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_notification: Callable[[_Link, Field, str], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_notification = on_notification
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        #: "replaced", "dropped" or "closed", once the connection is over.
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._read())

    @property
    def open(self) -> bool:
        return not self.ended.done()

    async def request(self, message: Mapping[str, Any], wait_at_most: float) -> dict[str, Any]:
        """Sends one stanza and waits for its answer (a ``result`` or an ``error``)."""
        if not self.open or self._writer.is_closing():
            raise SessionError(NOT_CONNECTED_REASON, fate=StanzaFate.NOT_SENT)
        self._ids += 1
        stanza_id = self._ids
        answer = asyncio.get_running_loop().create_future()
        self._pending[stanza_id] = answer
        try:
            self._writer.write(encode({**message, "id": stanza_id}))
            try:
                return await asyncio.wait_for(asyncio.shield(answer), wait_at_most)
            except TimeoutError:
                raise SessionError(TIMED_OUT, fate=StanzaFate.UNCONFIRMED) from None
        finally:
            self._pending.pop(stanza_id, None)

    def close(self) -> None:
        self._finish("closed")

    async def _read(self) -> None:
        ending = "dropped"
        try:
            while line := await self._reader.readline():
                message = decode(line)
                kind = message["type"]
                if kind in ("result", "error"):
                    answer = self._pending.get(int(message["id"]))
                    if answer is not None and not answer.done():
                        answer.set_result(message)
                elif kind == "notification":
                    field = field_from_wire(message.get("field"))
                    self._on_notification(self, field, str(message.get("value")))
                elif kind == "replaced":
                    ending = "replaced"
                    break
        except (OSError, ProtocolError, ValueError, KeyError, asyncio.LimitOverrunError) as exc:
            log.info("simulator connection lost: %s", exc)
        finally:
            self._finish(ending)

    def _finish(self, ending: str) -> None:
        if not self.ended.done():
            self.ended.set_result(ending)
        lost = SessionError(DISCONNECTED_BEFORE_ANSWER, fate=StanzaFate.UNCONFIRMED)
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(lost)
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()
        if self._task is not asyncio.current_task():
            self._task.cancel()


class SimulatorSession:
    """One account of the simulator at ``address``, behind the ``Session`` interface.

    ``client`` labels this process's connections in the simulator's history (the replica id);
    ``initial`` is the account's settings if the simulator does not know it yet. The backoff
    between dials starts at ``reconnect_initial`` seconds and doubles up to ``reconnect_max``.
    """

    kind = "simulated"

    def __init__(
        self,
        name: str,
        address: str,
        *,
        client: str = "gateway",
        initial: Mapping[Field, str] | None = None,
        may_connect: Callable[[], bool] = _always,
        reconnect_initial: float = RECONNECT_INITIAL_SECONDS,
        reconnect_max: float = RECONNECT_MAX_SECONDS,
        stanza_timeout: float = STANZA_TIMEOUT_SECONDS,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.name = name
        self.address = address
        self._host = host.strip("[]")
        self._port = int(port)
        #: This process's label in the simulator's history (the replica id).
        self.client = client
        self._initial = dict(initial or {})
        self._may_connect = may_connect
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._stanza_timeout = stanza_timeout
        self._status = status_now(SessionState.DISCONNECTED, "not started")
        self._link: _Link | None = None
        self._cache: Settings | None = None
        self._reading: tuple[_Link, asyncio.Future[Settings]] | None = None
        self._notifier = ChangeNotifier()
        self._supervisor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: How many connections this session has made (a test can wait for the next one).
        self.connections_made = 0

    # -- the Session interface -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._status.state is SessionState.CONNECTED

    def status(self) -> SessionStatus:
        return self._status

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        return self._notifier.subscribe(listener)

    async def start(self) -> None:
        """Connects in the background; after ``close`` (a lease lost, then regained), again."""
        if self._supervisor is None or self._supervisor.done():
            self._set_state(SessionState.CONNECTING)
            self._supervisor = asyncio.create_task(self._supervise(), name=f"simulator-{self.name}")
        else:
            self._wake.set()  # waiting out a backoff or the gate: try now

    async def close(self) -> None:
        """Disconnects now and stops redialling until the next ``start``."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        link, self._link = self._link, None
        if link is not None:
            link.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._cache = None
        self._set_state(SessionState.DISCONNECTED, CLOSED_REASON)

    async def read_settings(self) -> Settings:
        if self._cache is None:
            settings = await self._fetch()
            if self._cache is None:
                self._remember(settings, ChangeSource.GATEWAY)
        return self._cache or Settings()

    async def set_setting(self, field: Field, value: str) -> Settings:
        if value not in field.spec.values:
            raise ValueError(f"{value!r} is not a value of {field.value}")
        await self.read_settings()
        link = self._sending_link()
        try:
            answer = await link.request(
                {"type": "set", "field": field.value, "value": value}, self._stanza_timeout
            )
        except SessionError as error:
            if error.unconfirmed and self._cache is not None and link is self._link:
                # Sent, answer lost: WhatsApp may hold either value; the cache no longer knows.
                self._cache = Settings({f: v for f, v in self._cache.items() if f is not field})
            raise
        if answer["type"] == "error":
            raise stanza_error(str(answer.get("reason")))
        settings = settings_from_wire(answer.get("settings"))
        if link is self._link:
            self._remember(settings, ChangeSource.GATEWAY)
        return settings

    async def confirm(self, field: Field) -> str | None:
        """One fetch from the simulator itself (never the cache), which the cache then takes."""
        if not self.connected or not self._may_connect():
            return None
        link = self._sending_link()
        settings = await self._fetch_from(link)
        if link is self._link:
            self._remember(settings, ChangeSource.GATEWAY)
        return settings.get(field)

    # -- the connection --------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self._reconnect_initial
        while True:
            if not self._may_connect():
                # Asking the gate costs nothing: it is asked again at the first delay, not a
                # growing one, so a lease regained is used soon (``start`` asks at once).
                retry_at = time.time() + self._reconnect_initial
                self._set_state(SessionState.DISCONNECTED, NO_LEASE_REASON, retry_at=retry_at)
                await self._wait(self._reconnect_initial)
                continue
            self._set_state(SessionState.CONNECTING)
            try:
                link = await self._dial()
            except (OSError, TimeoutError, ProtocolError, ValueError, KeyError) as exc:
                reason = str(exc) or type(exc).__name__
                self._set_state(SessionState.DISCONNECTED, reason, retry_at=time.time() + delay)
                await self._wait(delay)
                delay = self._next(delay)
                continue
            self._link = link
            self._cache = None
            self.connections_made += 1
            self._set_state(SessionState.CONNECTED)
            delay = self._reconnect_initial
            self._spawn(self._refresh(link))
            ending = await asyncio.shield(link.ended)
            if self._link is link:
                self._link = None
            self._cache = None
            if ending == "replaced":
                self._set_state(SessionState.REPLACED, REPLACED_REASON)
                return
            self._set_state(
                SessionState.DISCONNECTED,
                "connection lost; reconnecting",
                retry_at=time.time() + delay,
            )
            await self._wait(delay)
            delay = self._next(delay)

    async def _dial(self) -> _Link:
        async with asyncio.timeout(DIAL_TIMEOUT):
            reader, writer = await asyncio.open_connection(self._host, self._port, limit=MAX_LINE)
            try:
                hello: dict[str, Any] = {
                    "type": "hello",
                    "account": self.name,
                    "client": self.client,
                }
                if self._initial:
                    hello["settings"] = settings_to_wire(self._initial)
                writer.write(encode(hello))
                line = await reader.readline()
                if not line:
                    raise ConnectionError("the simulator closed the connection")
                answer = decode(line)
                if answer["type"] == "refused":
                    raise ConnectionError(f"refused: {answer.get('reason')}")
                if answer["type"] != "connected":
                    raise ProtocolError(f"unexpected answer to hello: {answer['type']!r}")
            except BaseException:
                writer.close()
                raise
        return _Link(reader, writer, self._on_notification)

    async def _wait(self, delay: float) -> None:
        """Sleeps ``delay``, or until ``start`` asks for a dial now."""
        self._wake.clear()
        await woken_within(self._wake, delay)

    def _next(self, delay: float) -> float:
        return min(self._reconnect_max, max(self._reconnect_initial, delay * 2))

    # -- settings --------------------------------------------------------------------------

    def _sending_link(self) -> _Link:
        """The link a stanza may go out on now, or the reason none may."""
        if not self._may_connect():
            raise SessionError(NO_LEASE_REASON, fate=StanzaFate.NOT_SENT)
        link = self._link
        if link is None or not link.open or not self.connected:
            raise SessionError(NOT_CONNECTED_REASON, connection_lost=True)
        return link

    async def _fetch(self) -> Settings:
        """One fetch per link at a time: a second reader shares the first one's stanza."""
        link = self._sending_link()
        reading = self._reading
        if reading is None or reading[0] is not link or reading[1].done():
            reading = (link, asyncio.ensure_future(self._fetch_from(link)))
            self._reading = reading
            # Read by whoever awaits it; retrieved here too, should they all have left.
            reading[1].add_done_callback(_retrieved)
        return await asyncio.shield(reading[1])

    async def _fetch_from(self, link: _Link) -> Settings:
        try:
            answer = await link.request({"type": "fetch"}, self._stanza_timeout)
        except SessionError as error:
            # A fetch changes nothing: a lost answer is a connection that went down.
            raise SessionError(error.reason, fate=StanzaFate.NOT_SENT) from None
        if answer["type"] == "error":
            raise stanza_error(str(answer.get("reason")))
        return settings_from_wire(answer.get("settings"))

    async def _refresh(self, link: _Link) -> None:
        """A new connection's first read; what changed while away is the phone's doing."""
        try:
            settings = await self._fetch()
        except SessionError as error:
            log.info("%s: the settings could not be read: %s", self.name, error.reason)
            return
        if link is self._link:
            self._remember(settings, ChangeSource.PHONE)

    def _on_notification(self, link: _Link, field: Field, value: str) -> None:
        """WhatsApp's privacy-settings notification: the cache takes the new value (whatsmeow
        fetches the rest first when it had none)."""
        if link is not self._link:
            return
        if self._cache is None:
            self._spawn(self._refresh(link))
            return
        self._remember(self._cache.with_value(field, value), ChangeSource.PHONE)

    def _remember(self, settings: Settings, source: ChangeSource) -> None:
        self._cache = settings
        self._notifier.publish(settings, source)

    # -- small helpers ---------------------------------------------------------------------

    def _set_state(
        self, state: SessionState, last_error: str = "", *, retry_at: float | None = None
    ) -> None:
        current = self._status
        if (state, last_error, retry_at) != (current.state, current.last_error, current.retry_at):
            if state is not current.state:
                log.log(
                    logging.DEBUG if state is SessionState.CONNECTING else logging.INFO,
                    "%s %s%s", self.name, state.value, f": {last_error}" if last_error else "",
                )  # fmt: skip
            self._status = status_now(state, last_error, retry_at=retry_at)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
