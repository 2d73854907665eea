"""A real WhatsApp Web session (a linked device), driven through neonize's Go library.

Three kinds of work, each on the thread it needs:
- a connection (``Link``) is neonize's blocking ``Neonize`` call on a daemon thread of its own
  for as long as it lasts; its callbacks arrive on Go's threads and are handed to the event loop;
- a stanza (set, first fetch, pairing code) blocks for a round trip, so it runs on the gateway's
  shared ``BlockingCalls`` threads, started as needed up to ``stanza_threads``, never the
  default pool;
- everything else (state, cache, listeners) lives on the event loop.

The supervisor keeps the connection up: it dials at start, retries a failed dial or a lost
connection with capped exponential backoff, and stops when the device is not paired or was
logged out, until ``pair`` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from neonize.proto import Neonize_pb2 as npb

from service.errors import Code, GatewayError
from service.sessions.whatsapp import codec
from service.sessions.base import (
    ChangeListener,
    ChangeNotifier,
    ChangeSource,
    PairEvent,
    SessionError,
    SessionState,
    SessionStatus,
    status_now,
)
from service.sessions.whatsapp.threads import BlockingCalls
from service.sessions.whatsapp.ffi import EVENT_CODES, LinkCallbacks, WhatsAppFFI
from service.settings import Field, Settings

log = logging.getLogger(__name__)
#: How long closing a connection may take before the gateway stops waiting for it. A dial stuck
#: on a proxy that never answers blocks neonize's Stop too; the thread is a daemon, so the
#: process can still exit.
STOP_TIMEOUT = 5.0
_EVENT_NAMES = {code: name for name, code in EVENT_CODES.items()}
_GO_LOG_LEVELS = {"WARN": logging.WARNING, "ERROR": logging.ERROR}
_DISCONNECT_REASONS = {
    "Disconnected": "connection lost",
    "StreamReplaced": "another client connected with this session",
    "TemporaryBan": "temporarily banned by WhatsApp",
    "ConnectFailure": "WhatsApp refused the connection",
}


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff between connection attempts, in seconds."""

    initial: float = 1.0
    maximum: float = 60.0

    def next(self, delay: float) -> float:
        return min(self.maximum, max(self.initial, delay * 2))


class Link:
    """One ``Neonize`` call: a connection attempt and, if it succeeds, the connection."""

    def __init__(
        self,
        ffi: WhatsAppFFI,
        session_id: bytes,
        store: str,
        proxy: str | None,
        sink: Callable[[Link, str, Any], None],
    ) -> None:
        self._ffi = ffi
        self._session_id = session_id
        loop = asyncio.get_running_loop()
        self.returned: asyncio.Future[str] = loop.create_future()

        def deliver(kind: str, data: Any) -> None:
            loop.call_soon_threadsafe(sink, self, kind, data)

        callbacks = LinkCallbacks(
            on_qr=lambda code: deliver("qr", code),
            on_login_status=lambda status: deliver("login_status", status),
            on_event=lambda code, payload: deliver(_EVENT_NAMES.get(code, str(code)), payload),
            on_log=_log_go_entry,
        )

        def run() -> None:
            try:
                result = ffi.connect(session_id, store, proxy, callbacks)
            except Exception as exc:  # a crash of the binding itself
                result = f"connection failed: {exc}"
            loop.call_soon_threadsafe(_settle, self.returned, result)

        name = f"whatsapp-{session_id.decode(errors='replace')}"
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    async def stop(self, blocking: BlockingCalls) -> None:
        """Ends the connection and waits, at most ``STOP_TIMEOUT``, for ``Neonize`` to return.

        neonize's Stop itself blocks while a dial is stuck, so both the call and the return are
        waited for under one deadline, and neither is cancelled if it passes.
        """
        if self.returned.done():
            return
        stopping = asyncio.ensure_future(blocking.run(self._ffi.stop, self._session_id))
        stopping.add_done_callback(_log_failure)
        done, _ = await asyncio.wait([self.returned], timeout=STOP_TIMEOUT)
        if not done:
            log.warning("%s: the connection did not end within %.0f s", self._thread.name,
                        STOP_TIMEOUT)  # fmt: skip


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("stopping a connection failed: %s", future.exception())


def _settle(future: asyncio.Future[str], result: str) -> None:
    if not future.done():
        future.set_result(result)


def _log_go_entry(entry: bytes) -> None:
    message = npb.LogEntry.FromString(entry)
    level = _GO_LOG_LEVELS.get(message.Level)
    if level is not None:
        logging.getLogger(f"whatsmeow.{message.Name}").log(level, "%s", message.Message)


class WhatsAppSession:
    """A linked WhatsApp account, behind the ``Session`` interface."""

    kind = "whatsapp"

    def __init__(
        self,
        name: str,
        ffi: WhatsAppFFI,
        *,
        store: str,
        proxy: str | None,
        blocking: BlockingCalls,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.name = name
        self._id = name.encode()
        self._ffi = ffi
        self._store = store
        self._proxy = proxy
        self._blocking_calls = blocking
        self._backoff = backoff
        self._status = status_now(SessionState.CONNECTING)
        self._cache: Settings | None = None
        self._notifier = ChangeNotifier()
        self._link: Link | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pairing: asyncio.Queue[tuple[str, Any]] | None = None
        self._closing = False

    # -- the Session interface ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._status.state is SessionState.CONNECTED

    def status(self) -> SessionStatus:
        return self._status

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        return self._notifier.subscribe(listener)

    async def read_settings(self) -> Settings:
        if self._cache is None:
            reply = await self._blocking(self._ffi.get_privacy_settings, self._id)
            settings = codec.parse_settings(reply)
            if settings is None:
                raise SessionError(
                    "WhatsApp did not answer with the settings",
                    connection_lost=not self.connected,
                )
            self._remember(settings, ChangeSource.GATEWAY)
            return settings
        return self._cache

    async def set_setting(self, field: Field, value: str) -> Settings:
        if not self.connected:
            raise SessionError("websocket not connected", connection_lost=True)
        reply = await self._blocking(
            self._ffi.set_privacy_setting, self._id, field.spec.category, value
        )
        settings = codec.parse_set_reply(reply)
        self._remember(settings, ChangeSource.GATEWAY)
        return settings

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def close(self) -> None:
        # Stop the connection first: the supervisor waits on it, and cancelling the supervisor
        # first would cancel that wait and leave the Go connection running.
        self._closing = True
        self._wake.set()
        if self._link is not None:
            await self._link.stop(self._blocking_calls)
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)

    # -- pairing -----------------------------------------------------------------------------

    async def pair(self, phone: str | None) -> AsyncIterator[PairEvent]:
        """QR codes (or one pairing code for ``phone``) until the device is linked."""
        if self._status.state is SessionState.CONNECTED or self._status.jid:
            paired_as = self._status.jid or "a linked account"
            raise _pair_error(Code.FAILED_PRECONDITION, f"already paired as {paired_as}")
        if self._pairing is not None:
            raise _pair_error(Code.FAILED_PRECONDITION, "a pairing is already in progress")
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._pairing = queue
        try:
            # A dial in progress answers the pairing too (QR codes, or its error); a supervisor
            # waiting out a backoff dials now.
            self._wake.set()
            code_sent = False
            while True:
                kind, data = await queue.get()
                if kind == "qr" and phone:
                    if not code_sent:
                        code_sent = True
                        yield PairEvent(pairing_code=await self._pairing_code(phone))
                elif kind == "qr":
                    yield PairEvent(qr_code=data)
                elif kind == "paired":
                    yield PairEvent(jid=data)
                    return
                elif kind == "connected":  # the store held a linked device after all
                    raise _pair_error(Code.FAILED_PRECONDITION, f"already paired as {data}")
                elif kind == "timeout":
                    raise _pair_error(Code.DEADLINE_EXCEEDED, "no QR code was scanned in time")
                else:
                    raise _pair_error(Code.UNAVAILABLE, f"WhatsApp cannot be reached: {data}")
        finally:
            self._pairing = None

    async def _pairing_code(self, phone: str) -> str:
        reply = npb.PairPhoneReturnFunction.FromString(
            await self._blocking(self._ffi.pair_phone, self._id, phone)
        )
        if reply.Error:
            raise _pair_error(Code.INVALID_ARGUMENT, f"pairing by phone failed: {reply.Error}")
        return reply.Code

    # -- the connection ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self._backoff.initial
        while not self._closing:
            waiting = self._status.state in (SessionState.NOT_PAIRED, SessionState.LOGGED_OUT)
            if waiting and self._pairing is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            pairing = self._pairing is not None
            self._set_state(SessionState.PAIRING if pairing else SessionState.CONNECTING)
            self._link = link = Link(self._ffi, self._id, self._store, self._proxy, self._on_link)
            error = await link.returned
            self._link = None
            if self._closing:
                return
            if error:
                self._set_state(SessionState.DISCONNECTED, error)
                self._tell_pairing("unreachable", error)
                self._pairing = None  # that pairing has its answer; the backoff applies again
                await self._sleep(delay)
                delay = self._backoff.next(delay)
            elif self._status.state is SessionState.CONNECTED:
                delay = self._backoff.initial

    async def _sleep(self, delay: float) -> None:
        """Waits ``delay``, or less if a pairing asks for a connection now."""
        if self._pairing is not None:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _on_link(self, link: Link, kind: str, data: Any) -> None:
        """A connection's callback, on the event loop. Events of an ended link are dropped."""
        if link is not self._link:
            return
        if kind == "qr":
            if self._pairing is None:
                # No one is pairing: the store holds no device, so stop showing codes.
                self._set_state(SessionState.NOT_PAIRED)
                self._spawn(link.stop(self._blocking_calls))
            else:
                self._tell_pairing("qr", data)
        elif kind == "login_status" and data == "timeout":
            self._set_state(SessionState.NOT_PAIRED, "pairing timed out")
            self._tell_pairing("timeout", data)
            self._spawn(link.stop(self._blocking_calls))
        elif kind == "PairStatus":
            self._on_pair_status(npb.PairStatus.FromString(data))
        elif kind == "Connected":
            self._set_state(SessionState.CONNECTED, jid=self._status.jid)
            self._tell_pairing("connected", self._status.jid or "a linked account")
        elif kind == "Device":
            device = npb.Device.FromString(data)
            jid = f"{device.JID.User}@{device.JID.Server}" if device.JID.User else ""
            self._status = replace(self._status, jid=jid)
        elif kind in ("Disconnected", "StreamReplaced", "TemporaryBan", "ConnectFailure"):
            reason = _DISCONNECT_REASONS[kind]
            self._set_state(SessionState.DISCONNECTED, reason)
        elif kind == "LoggedOut":
            self._cache = None
            self._set_state(SessionState.LOGGED_OUT, "logged out from the phone")
            self._status = replace(self._status, jid="")
            self._spawn(link.stop(self._blocking_calls))
        elif kind == "PrivacySettings":
            self._spawn(self._refresh_after_phone_change(codec.changed_fields(data)))

    def _on_pair_status(self, event: Any) -> None:
        if event.Status == npb.PairStatus.SUCCESS:
            jid = f"{event.ID.User}@{event.ID.Server}"
            self._status = replace(self._status, jid=jid)
            self._tell_pairing("paired", jid)
        else:
            self._tell_pairing("unreachable", f"pairing failed: {event.Error}")

    async def _refresh_after_phone_change(self, changed: frozenset[Field]) -> None:
        """whatsmeow updated its cache before telling us; read it (no stanza) for the values."""
        reply = await self._blocking(self._ffi.get_privacy_settings, self._id)
        settings = codec.parse_settings(reply)
        if settings is None:
            log.warning("%s: settings changed on the phone (%s) but could not be read", self.name,
                        ", ".join(sorted(f.value for f in changed)))  # fmt: skip
            self._cache = None
            return
        self._remember(settings, ChangeSource.PHONE)

    # -- small helpers -----------------------------------------------------------------------

    async def _blocking(self, call: Callable[..., bytes], *args: Any) -> bytes:
        return await self._blocking_calls.run(call, *args)

    def _remember(self, settings: Settings, source: ChangeSource) -> None:
        self._cache = settings
        self._notifier.publish(settings, source)

    def _set_state(self, state: SessionState, last_error: str | None = None, jid: str = "") -> None:
        error = self._status.last_error if last_error is None else last_error
        if state is SessionState.CONNECTED:
            error = ""
        if (state, error) != (self._status.state, self._status.last_error):
            self._status = status_now(state, error, jid or self._status.jid)
            quiet = state in (SessionState.CONNECTING, SessionState.PAIRING)
            detail = f": {error}" if error and state is SessionState.DISCONNECTED else ""
            log.log(
                logging.DEBUG if quiet else logging.INFO, "%s %s%s", self.name, state.value, detail
            )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs ``work`` in the background, holding a reference until it ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _tell_pairing(self, kind: str, data: Any) -> None:
        if self._pairing is not None:
            self._pairing.put_nowait((kind, data))


def _pair_error(code: Code, message: str) -> GatewayError:
    return GatewayError(code, f"Pairing failed: {message}", "PAIRING_FAILED")
