"""A linked WhatsApp account behind the ``Session`` interface, driven through neonize.

Three kinds of work, each on the thread it needs:
- a connection (``link.Link``) is neonize's blocking ``Neonize`` call on a daemon thread of its
  own; its callbacks arrive on Go's threads and are handed to the event loop;
- a stanza (set, fetch, pairing code) blocks for a round trip, so it runs on the gateway's shared
  ``BlockingCalls`` threads, and is waited for at most ``stanza_timeout``;
- everything else (state, cache, listeners) lives on the event loop.

The supervisor keeps the connection up. It dials only a store that holds this instance's device
(``devices``), tries the path itself before neonize does (``probe``), retries a failed dial with
capped exponential backoff, and does not retry what an operator must act on (another client took
the session, the client is outdated, the device was logged out). whatsmeow reconnects a dropped
connection by itself within the same client (client.go:588-656), which the gateway follows
through its events. Every new link is a new whatsmeow client with an empty cache
(goneonize/main.go:653), so the settings are read again after each ``Connected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import asyncpg
from neonize.proto import Neonize_pb2 as npb

from service import errors
from service.sessions.base import (
    SENDING_STATES,
    ChangeListener,
    ChangeNotifier,
    ChangeSource,
    PairEvent,
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
    WHATSAPP_LOG_LEVEL,
)
from service.sessions.whatsapp import codec
from service.sessions.whatsapp.devices import Devices, is_postgres, jid_text
from service.sessions.whatsapp.devices import sqlite_store_has_device as _sqlite_has_device
from service.sessions.whatsapp.ffi import Dial, WhatsAppFFI
from service.sessions.whatsapp.link import Link, Phase
from service.sessions.whatsapp.pairing import Pairing
from service.sessions.whatsapp.postgres import StoreUnavailable, WhatsmeowDatabase
from service.sessions.whatsapp.sqlite_store import store_problem
from service.sessions.whatsapp.threads import BlockingCalls
from service.settings import Field, Settings
from service.waiting import woken_within

log = logging.getLogger(__name__)
Probe = Callable[[str | None], Awaitable[str]]

#: How long after the last KeepAliveTimeout a connection counts as answering pings again.
#: whatsmeow pings every 20-30 s and waits 10 s for the answer (keepalive.go:18-28), and reports
#: every failure (keepalive.go:41-45); neonize cannot forward KeepAliveRestored (``ffi``), so 45 s
#: without a new failure means a ping was answered.
KEEPALIVE_QUIET = 45.0
_GO_LOG_LEVELS = {"WARN": logging.WARNING, "ERROR": logging.ERROR, "INFO": logging.INFO}
#: ``whatsapp_log_level``'s names as Python levels: what of whatsmeow's lines is logged.
_CONFIGURED_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
#: whatsmeow log lines that stand for the events neonize cannot forward (``ffi.EVENT_CODES``).
_REPLACED_LOG = "Got replaced stream error"  # connectionevents.go:50 (Infof)
_OUTDATED_LOG = "Client outdated (405) connect failure"  # connectionevents.go:140 (Errorf)
_TEMP_BAN_LOG = "Temporary ban connect failure"  # connectionevents.go:134 (Warnf), with the node
_EXPIRE = re.compile(r'expire="?(\d+)')
_BAN_CODE = re.compile(r'code="?(\d+)')


def _enum_names(message: Any, field: str) -> dict[int, str]:
    enum_type = message.DESCRIPTOR.fields_by_name[field].enum_type
    return {v.number: v.name.lower().replace("_", " ") for v in enum_type.values}


#: ConnectFailureReason (types/events/events.go:191-211) and TempBanReason (148-156), as
#: neonize's enums name them.
_FAILURE_REASONS = _enum_names(npb.ConnectFailure, "Reason")
_BAN_REASONS = _enum_names(npb.TemporaryBan, "Code")
#: States that wait for an operator (or a pairing) rather than a redial.
_WAITING = frozenset(
    {
        SessionState.NOT_PAIRED,
        SessionState.LOGGED_OUT,
        SessionState.REPLACED,
        SessionState.CLIENT_OUTDATED,
    }
)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff between connection attempts, in seconds."""

    initial: float = RECONNECT_INITIAL_SECONDS
    maximum: float = RECONNECT_MAX_SECONDS

    def next(self, delay: float) -> float:
        return min(self.maximum, max(self.initial, delay * 2))


@dataclass(frozen=True)
class WhatsAppOptions:
    """How a WhatsApp session behaves; the defaults are the gateway's."""

    backoff: Backoff = Backoff()
    #: The longest the gateway waits for one stanza's answer before calling it unconfirmed
    #: (whatsmeow's own wait is 75 s, and 5 s more plus a resend after a drop: request.go).
    stanza_timeout: float = STANZA_TIMEOUT_SECONDS
    #: Which of whatsmeow's lines are logged (``debug`` sends every node through a Python
    #: callback). whatsmeow itself never runs quieter than ``info``: the gateway reads its
    #: StreamReplaced and ClientOutdated lines (Infof and Errorf, connectionevents.go:50, 140),
    #: which neonize cannot forward as events, so ``warn`` and ``error`` only filter the log.
    log_level: str = WHATSAPP_LOG_LEVEL
    #: The longest a re-read after a lost answer may take: a new connection and one fetch.
    confirm_timeout: float = 15.0
    #: On replicas (the lease TTL): a session taken over while this replica holds its lease is
    #: dialled once more after this long, once per time the lease is taken. The other client
    #: may be the instance's previous replica, resumed after a stall: whatsmeow reconnects from
    #: inside Go (client.go:623-656, keepalive.go:48-50), which no lease can gate, and that
    #: replica's watchdog stops it at once. A second takeover waits for an operator.
    replaced_redial: float | None = None


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
        devices: Devices,
        probe: Probe | None = None,
        options: WhatsAppOptions = WhatsAppOptions(),
        database: WhatsmeowDatabase | None = None,
        may_dial: Callable[[], bool] = lambda: True,
    ) -> None:
        """``database``: the PostgreSQL database ``store`` names, for a PostgreSQL store (its
        upgrade, the device check, each call's DSN; ``postgres``). ``may_dial``: asked before
        every dial; a replica dials only while it holds the instance's lease."""
        self._may_dial = may_dial
        self.name = name
        self._ffi = ffi
        self._store = store
        self._proxy = proxy
        self._blocking_calls = blocking
        self._devices = devices
        self._database = database
        self._probe = probe
        self._options = options
        self._status = status_now(SessionState.CONNECTING)
        self._cache: Settings | None = None
        self._fresh = asyncio.Event()  # set once the current link's settings were read
        self._read_attempted = asyncio.Event()  # ... or once reading them was tried
        self._reading: tuple[Link, asyncio.Future[Settings]] | None = None
        self._unconfirmed: set[Field] = set()
        self._notifier = ChangeNotifier()
        self._link: Link | None = None
        self._links = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pairing: Pairing | None = None
        self._recycle = False
        self._keepalive_check: asyncio.TimerHandle | None = None
        self._closing = False
        self._redialled_after_replace = False

    # -- the Session interface ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._status.state in SENDING_STATES

    def status(self) -> SessionStatus:
        return self._status

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        return self._notifier.subscribe(listener)

    async def read_settings(self) -> Settings:
        if self._cache is None:
            settings = self._known(await self._fetch())
            if self._cache is None:
                self._remember(settings, ChangeSource.GATEWAY)
        return self._cache or Settings()

    async def set_setting(self, field: Field, value: str) -> Settings:
        link = self._link
        if not self.connected or link is None:
            raise SessionError("websocket not connected", fate=StanzaFate.NOT_SENT)
        category = field.spec.category
        try:
            reply = await self._blocking_calls.run(
                self._ffi.set_privacy_setting, link.session_id, category, value,
                wait_at_most=self._options.stanza_timeout,
            )  # fmt: skip
            settings = codec.parse_set_reply(reply)
        except TimeoutError:
            self._forget(field)
            seconds = self._options.stanza_timeout
            raise SessionError(
                f"no answer from WhatsApp within {seconds:g} s", fate=StanzaFate.UNCONFIRMED
            ) from None
        except SessionError as error:
            if error.unconfirmed:
                self._forget(field)
            raise
        self._answered()
        self._unconfirmed.discard(field)  # WhatsApp answered this one
        settings = self._known(settings)
        if link is self._link:
            self._remember(settings, ChangeSource.GATEWAY)
        return settings

    async def confirm(self, field: Field) -> str | None:
        """Re-reads ``field`` from WhatsApp itself. neonize's only read is whatsmeow's cache
        (main.go:2094-2098, privacysettings.go:47-58), which a lost answer left as it was, so the
        link is replaced: a new client has no cache and fetches (main.go:653)."""
        if not self.connected or self._link is None:
            return None
        self._fresh.clear()
        self._read_attempted.clear()
        self._recycle = True
        self._link.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._read_attempted.wait(), self._options.confirm_timeout)
        if not self._fresh.is_set() or self._cache is None:
            return None
        return self._cache.get(field)

    async def start(self) -> None:
        """Connects in the background; after ``close`` (a replica's lease lost, then taken
        again), again."""
        if self._supervisor is None:
            if self._closing:  # what it showed before it closed is over
                self._set_state(SessionState.CONNECTING)
            self._closing = False
            self._redialled_after_replace = False
            self._wake.clear()
            if self._database is not None:
                self._database.join()
            self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        link = self._link
        if link is not None:
            link.stop()
            # A dialing link cannot be stopped (``link``); its thread is a daemon: give it up.
            if link.phase is not Phase.DIALING:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(link.finished), 5.0)
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._devices.flush(), 10.0)
        if self._database is not None and self._supervisor is not None:
            if link is not None and link.store_call is not None and link.finished.done():
                await self._database.release(link.store_call)
            await self._database.leave()
        self._supervisor = None

    # -- pairing -----------------------------------------------------------------------------

    async def pair(self, phone: str | None) -> AsyncIterator[PairEvent]:
        """QR codes (or one pairing code for ``phone``) until the device is linked."""
        state = self._status.state
        linked = self._status.jid or state in SENDING_STATES or state is SessionState.REPLACED
        if linked or await self._has_device():
            # A store that holds the device is not paired again (a second device would be made
            # beside it, and GetFirstDevice would go on loading the old one).
            paired_as = self._status.jid or "a linked account"
            raise errors.ALREADY_PAIRED.error(jid=paired_as)
        if self._pairing is not None:
            raise errors.PAIRING_IN_PROGRESS.error()
        pairing = Pairing.new(phone)
        self._pairing = pairing
        paired = False
        try:
            self._wake.set()
            while True:
                event = await pairing.next_event()
                if event is None:
                    continue
                yield event
                if event.jid:
                    paired = True
                    return
        finally:
            if self._pairing is pairing:
                self._pairing = None
            link = self._link
            mine = link is not None and link.pairing is pairing
            if not paired and link is not None and mine and link.phase is not Phase.LIVE:
                link.stop()  # the caller left, or the pairing ended: give the link up
                if self._status.state is SessionState.PAIRING:
                    self._set_state(SessionState.NOT_PAIRED)

    async def _pairing_code(self, link: Link, pairing: Pairing) -> None:
        assert pairing.phone is not None
        try:
            reply = npb.PairPhoneReturnFunction.FromString(
                await self._blocking_calls.run(
                    self._ffi.pair_phone,
                    link.session_id,
                    pairing.phone,
                    wait_at_most=self._options.stanza_timeout,
                )
            )
        except TimeoutError:
            pairing.tell("phone_error", "info query timed out")
            return
        if reply.Error:
            pairing.tell("phone_error", reply.Error)
        else:
            pairing.tell("code", reply.Code)

    # -- the connection ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self._options.backoff.initial
        while not self._closing:
            pairing = self._pairing
            problem = await self._check_store()
            if self._pairing is not pairing:
                continue  # a pairing came (or its caller left) while the store was checked
            if not problem and pairing is None and await self._nothing_to_dial():
                continue
            if not problem and self._probe is not None:
                problem = await self._probe(self._proxy)
            if pairing is not None and self._pairing is not pairing:
                continue  # its caller left during the probe (a newer one, if any, goes next)
            if problem:
                if pairing is not None:
                    pairing.tell("unreachable", problem)
                    self._pairing = None
                self._disconnected(problem, delay)
                await self._wait(delay, for_pairing=True)
                delay = self._options.backoff.next(delay)
                continue
            if not self._may_dial():
                # The lease went (the replica stops the session; ``service.cluster``): no dial.
                self._disconnected("this replica does not hold the instance's lease", delay)
                await self._wait(delay)
                continue
            link = self._dial(pairing)
            # Shielded: cancelling the supervisor (close) must not cancel the link's own future,
            # which close awaits too.
            await asyncio.shield(link.finished)
            if self._database is not None and link.store_call is not None:
                # The call is over (returned, or stopped and given up): its container's
                # connections are left open by neonize (``postgres``).
                self._spawn(self._release(link.store_call))
            self._link = None
            self._cache = None
            self._fresh.clear()
            if self._closing:
                return
            delay = await self._after(link, pairing, delay)

    async def _after(self, link: Link, pairing: Pairing | None, delay: float) -> float:
        """What follows a link's end: a redial at once (a re-read), after a ban, after the
        backoff (a failure), or at the next turn (the backoff starts over); the next delay."""
        if self._recycle:
            self._recycle = False
            return delay
        if self._status.state is SessionState.BANNED:
            # A ban that is over at once (WhatsApp counts its expiry in whole seconds) must not
            # become a redial loop: the backoff is its floor.
            floor = time.time() + delay
            if (self._status.retry_at or 0) < floor:
                self._status = replace(self._status, retry_at=floor)
            return self._options.backoff.next(delay)
        failure = link.result or ""
        if not failure and self._status.state is SessionState.DISCONNECTED:
            failure = self._status.last_error  # WhatsApp refused it (ConnectFailure)
        if not failure:
            return self._options.backoff.initial
        if pairing is not None and self._pairing is pairing:
            pairing.tell("unreachable", failure)
            self._pairing = None
        self._disconnected(failure, delay)
        await self._wait(delay, for_pairing=True)
        return self._options.backoff.next(delay)

    async def _check_store(self) -> str:
        """For a SQLite store: no lock another process holds (``sqlite_store``). For a
        PostgreSQL store: the shared book's row read again, whatsmeow's schema made
        current (once, one replica at a time), and this instance's device looked for in
        ``whatsmeow_device``. A recorded device the store no longer holds (deleted, or logged
        out from another replica) is forgotten: dialling its JID would abort the process, and
        dialling none would load another instance's device (``postgres``). What keeps the store
        from being used, or ""."""
        database = self._database
        if database is None:
            return await self._blocking_calls.run(store_problem, self._store)
        try:
            await self._devices.refresh(self.name)
            await database.ready()
            jid = self._devices.jid(self.name)
            if jid is None or await database.has_device(jid):
                return ""
        except StoreUnavailable as exc:
            return str(exc)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return f"the device book: {type(exc).__name__}: {exc}"
        self._devices.record(self.name, None)
        self._status = replace(self._status, jid="")
        self._set_state(
            SessionState.NOT_PAIRED,
            f"the store no longer holds this instance's device {jid_text(jid)} (deleted, or "
            "logged out elsewhere): pair again",
        )
        return ""

    async def _release(self, call: str) -> None:
        assert self._database is not None
        ended = await self._database.release(call)
        if ended:
            log.debug("%s: %d store connection(s) of a finished call ended", self.name, ended)

    async def _nothing_to_dial(self) -> bool:
        """Waits (and says so) while there is nothing to dial: no device, an operator's turn,
        or a ban that has not expired."""
        keep = (SessionState.NOT_PAIRED, SessionState.LOGGED_OUT, SessionState.CLIENT_OUTDATED)
        has_device = await self._has_device()
        if self._pairing is not None:
            return True  # one came meanwhile: the next turn dials it (a wait would miss its wake)
        if self._status.state not in keep and not has_device:
            # Never dialled: a store without this instance's device would show QR codes.
            self._set_state(SessionState.NOT_PAIRED)
        elif self._status.state is SessionState.NOT_PAIRED and has_device:
            self._set_state(SessionState.CONNECTING)  # paired meanwhile (by another path)
        state = self._status.state
        if state is SessionState.REPLACED and self._status.retry_at is not None:
            until = self._status.retry_at - time.time()
            if until > 0:
                await self._wait(until)
                return True
            return False
        if state in _WAITING:
            await self._wait()
            return True
        if state is SessionState.BANNED:
            until = (self._status.retry_at or 0) - time.time()
            if until > 0:
                await self._wait(until)
                return True
        return False

    def _dial(self, pairing: Pairing | None) -> Link:
        self._links += 1
        session_id = f"{self.name}#{self._links}".encode()
        jid = self._devices.jid(self.name)
        self._set_state(SessionState.CONNECTING if pairing is None else SessionState.PAIRING)
        # A PostgreSQL store holds other instances' devices too: always name ours (a dial with
        # no JID is a pairing's, for a new device: never the store's first one).
        named = pairing is None and jid is not None and is_postgres(self._store)
        store, call = self._store, None
        if self._database is not None:
            call, store = self._database.new_call()
        dial = Dial(
            session_id, store, jid.SerializePartialToString() if named and jid else b"",
            self._proxy, "debug" if self._options.log_level == "debug" else "info",
            new_device=pairing is not None or (is_postgres(store) and not named),
        )  # fmt: skip
        self._link = Link(self._ffi, self._blocking_calls, dial, self._on_link)
        self._link.pairing = pairing
        self._link.store_call = call
        return self._link

    async def _has_device(self) -> bool:
        if is_postgres(self._store):
            return self._devices.jid(self.name) is not None
        # Off the loop: the store is a file another process may hold a lock on.
        return await self._blocking_calls.run(_sqlite_has_device, self._store)

    async def _wait(self, delay: float | None = None, *, for_pairing: bool = False) -> None:
        """Waits to be woken (a pairing, a close), or ``delay``; a pairing cuts a backoff short."""
        if for_pairing and self._pairing is not None:
            return
        self._wake.clear()
        await woken_within(self._wake, delay)

    def _disconnected(self, error: str, delay: float) -> None:
        retry_at = time.time() + delay
        self._set_state(SessionState.DISCONNECTED, error, retry_at=retry_at)

    # -- what a link reports -----------------------------------------------------------------

    def _on_link(self, link: Link, kind: str, data: Any) -> None:
        """A link's callback, on the event loop. A replaced link's events are dropped."""
        if link is not self._link:
            return
        handler = self._HANDLERS.get(kind)
        if handler is not None:
            handler(self, link, data)

    def _for(self, link: Link) -> Pairing | None:
        """The pairing ``link`` was dialled for, if its caller is still there."""
        pairing = link.pairing
        return pairing if pairing is not None and pairing is self._pairing else None

    def _on_qr(self, link: Link, code: str) -> None:
        pairing = self._for(link)
        if pairing is None:
            link.stop()
            if link.pairing is None:
                # Dialled as linked, yet showing codes: the store lost its device (whatsmeow
                # deletes it on a logout). Nothing to dial until a pairing asks.
                self._devices.record(self.name, None)
                self._set_state(SessionState.NOT_PAIRED, "the store holds no device: pair again")
            return
        pairing.tell("qr", code)
        if pairing.phone and not pairing.code_requested:
            # PairPhone needs the websocket up, which the first QR code shows (pair-code.go:76-90).
            pairing.code_requested = True
            self._spawn(self._pairing_code(link, pairing))

    def _on_login_status(self, link: Link, status: str) -> None:
        if status == "success":
            return  # the device follows (Device, then PairStatus), once FetchMe has its ID
        self._set_state(SessionState.NOT_PAIRED, f"pairing ended: {status}")
        if status == "err-client-outdated":
            self._set_state(SessionState.CLIENT_OUTDATED, "WhatsApp says this client is outdated")
        pairing = self._for(link)
        if pairing is not None:
            pairing.tell("qr_status", status)
            self._pairing = None
        link.stop()

    def _on_device(self, link: Link, payload: bytes) -> None:
        device = npb.Device.FromString(payload)
        jid = jid_text(device.JID)
        if jid and link.pairing is not None:
            self._devices.record(self.name, device.JID)
        self._status = replace(self._status, jid=jid or self._status.jid)

    def _on_pair_status(self, link: Link, payload: bytes) -> None:
        event = npb.PairStatus.FromString(payload)
        pairing = self._for(link)
        if event.Status == npb.PairStatus.SUCCESS:
            self._devices.record(self.name, event.ID)
            jid = jid_text(event.ID)
            self._status = replace(self._status, jid=jid)
            if pairing is not None:
                pairing.tell("paired", jid)
                self._pairing = None
        elif pairing is not None:
            pairing.tell("pair_error", event.Error or "pairing failed")
            self._pairing = None

    def _on_connected(self, link: Link, _: bytes) -> None:
        pairing = self._for(link)
        if pairing is not None:  # the store held a linked device after all
            pairing.tell("already_paired", self._status.jid or "a linked account")
            self._pairing = None
        self._set_state(SessionState.CONNECTED)
        # Every connection is read afresh: a new link is a new client with an empty cache, and
        # a reconnect may follow changes made while it was away.
        self._cache = None
        self._fresh.clear()
        # Only a link's first Connected is a new client; a later one is whatsmeow's reconnect
        # within the client, whose cache still holds what a lost answer left there.
        fresh, link.connected_once = not link.connected_once, True
        self._spawn(self._refresh(link, ChangeSource.PHONE, fresh=fresh))

    def _on_disconnected(self, link: Link, _: bytes) -> None:
        # whatsmeow reconnects on its own (client.go:595-600, autoReconnect 623-656).
        self._set_state(SessionState.DISCONNECTED, "connection lost; whatsmeow is reconnecting")

    def _on_keepalive_timeout(self, link: Link, payload: bytes) -> None:
        event = npb.KeepAliveTimeout.FromString(payload)
        since = time.strftime("%H:%M:%S", time.gmtime(event.LastSuccess))
        self._set_state(
            SessionState.DEGRADED,
            f"{event.ErrorCount} keepalive ping(s) unanswered since {since} UTC",
        )
        if self._keepalive_check is not None:
            self._keepalive_check.cancel()
        loop = asyncio.get_running_loop()
        self._keepalive_check = loop.call_later(KEEPALIVE_QUIET, self._answered)

    def _on_logged_out(self, link: Link, _: bytes) -> None:
        self._cache = None
        self._devices.record(self.name, None)
        self._set_state(SessionState.LOGGED_OUT, "logged out from the phone: pair again")
        self._status = replace(self._status, jid="")
        link.stop()

    def _on_temporary_ban(self, link: Link, payload: bytes) -> None:
        event = npb.TemporaryBan.FromString(payload)
        self._banned(link, _BAN_REASONS.get(event.Code, str(event.Code)), event.Expire)

    def _banned(self, link: Link, reason: str, expire: int) -> None:
        until = time.time() + expire
        shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
        self._set_state(
            SessionState.BANNED,
            f"temporarily banned by WhatsApp ({reason}) until {shown}",
            retry_at=until,
        )
        link.stop()

    def _on_connect_failure(self, link: Link, payload: bytes) -> None:
        event = npb.ConnectFailure.FromString(payload)
        reason = _FAILURE_REASONS.get(event.Reason, str(event.Reason))
        detail = f": {event.Message}" if event.Message else ""
        self._set_state(
            SessionState.DISCONNECTED, f"WhatsApp refused the connection ({reason}{detail})"
        )
        link.stop()  # whatsmeow does not reconnect after it (connectionevents.go:106-111)

    def _replaced(self) -> None:
        delay = self._options.replaced_redial
        if delay is not None and not self._redialled_after_replace and self._may_dial():
            self._redialled_after_replace = True
            self._set_state(
                SessionState.REPLACED,
                "another client connected with this session (perhaps this instance's previous "
                "replica): dialling once more",
                retry_at=time.time() + delay,
            )
            return
        self._set_state(
            SessionState.REPLACED,
            "another client connected with this session: stop it, then restart the gateway",
        )

    def _on_privacy_settings(self, link: Link, payload: bytes) -> None:
        self._spawn(self._refresh(link, ChangeSource.PHONE))

    def _on_log(self, link: Link, entry: bytes) -> None:
        message = npb.LogEntry.FromString(entry)
        level = _GO_LOG_LEVELS.get(message.Level, logging.DEBUG)
        if level >= _CONFIGURED_LEVELS.get(self._options.log_level, logging.INFO):
            logger = logging.getLogger(f"whatsmeow.{message.Name}")
            logger.log(level, "%s", message.Message[:2000])
        text = message.Message
        if text.startswith(_REPLACED_LOG):
            self._replaced()
            link.stop()
        elif text.startswith(_OUTDATED_LOG):
            self._set_state(
                SessionState.CLIENT_OUTDATED,
                "WhatsApp says this client is outdated: upgrade the gateway",
            )
            link.stop()
        elif text.startswith(_TEMP_BAN_LOG) and (match := _EXPIRE.search(text)):
            code = _BAN_CODE.search(text)
            self._banned(link, f"code {code.group(1) if code else 'unknown'}", int(match.group(1)))

    _HANDLERS: ClassVar[dict[str, Callable[[WhatsAppSession, Link, Any], None]]] = {
        "qr": _on_qr,
        "login_status": _on_login_status,
        "Device": _on_device,
        "PairStatus": _on_pair_status,
        "Connected": _on_connected,
        "Disconnected": _on_disconnected,
        "KeepAliveTimeout": _on_keepalive_timeout,
        "LoggedOut": _on_logged_out,
        "TemporaryBan": _on_temporary_ban,
        "ConnectFailure": _on_connect_failure,
        "PrivacySettings": _on_privacy_settings,
        "log": _on_log,
    }

    # -- settings ----------------------------------------------------------------------------

    async def _fetch(self) -> Settings:
        """The settings from whatsmeow; one read at a time per link (a second caller shares
        it: whatsmeow's own fetch has no lock, privacysettings.go:20-43, and would send two)."""
        link = self._link
        if link is None or not self.connected:
            raise SessionError("websocket not connected", fate=StanzaFate.NOT_SENT)
        reading = self._reading
        if reading is None or reading[0] is not link:
            reading = (link, asyncio.ensure_future(self._fetch_from(link)))
            self._reading = reading
            reading[1].add_done_callback(lambda _: self._done_reading(reading))
        return await asyncio.shield(reading[1])

    def _done_reading(self, reading: tuple[Link, asyncio.Future[Settings]]) -> None:
        if self._reading is reading:
            self._reading = None

    async def _fetch_from(self, link: Link) -> Settings:
        try:
            reply = await self._blocking_calls.run(
                self._ffi.get_privacy_settings, link.session_id,
                wait_at_most=self._options.stanza_timeout,
            )  # fmt: skip
        except TimeoutError:
            raise SessionError("WhatsApp did not answer with the settings") from None
        settings = codec.parse_settings(reply)
        if not settings:
            # whatsmeow logs the failure and answers an empty struct (privacysettings.go:47-58).
            raise SessionError(
                "WhatsApp did not answer with the settings",
                fate=StanzaFate.REFUSED if self.connected else StanzaFate.NOT_SENT,
            )
        return settings

    async def _refresh(self, link: Link, source: ChangeSource, *, fresh: bool = False) -> None:
        """Reads the settings (whatsmeow's cache, or one fetch for a new client: ``fresh``) and
        tells listeners what changed."""
        try:
            settings = await self._fetch()
        except SessionError as error:
            log.warning("%s: the settings could not be read: %s", self.name, error.reason)
            return
        finally:
            if link is self._link:
                self._read_attempted.set()
        if link is self._link:
            if fresh:
                self._unconfirmed.clear()  # a new client fetched them from WhatsApp itself
            self._remember(self._known(settings), source)
            self._fresh.set()

    def _remember(self, settings: Settings, source: ChangeSource) -> None:
        self._cache = settings
        self._notifier.publish(settings, source)

    def _forget(self, field: Field) -> None:
        """A stanza whose answer was lost leaves ``field`` unknown until a new client reads it:
        whatsmeow's cache keeps the value from before (privacysettings.go:63-105)."""
        self._unconfirmed.add(field)
        if self._cache is not None:
            self._cache = self._known(self._cache)

    def _known(self, settings: Settings) -> Settings:
        """``settings`` without the fields whose last stanza went unconfirmed."""
        if not self._unconfirmed or not any(f in settings for f in self._unconfirmed):
            return settings
        return Settings({f: v for f, v in settings.items() if f not in self._unconfirmed})

    def _answered(self) -> None:
        """WhatsApp answered: a degraded connection is healthy again."""
        if self._status.state is SessionState.DEGRADED:
            self._set_state(SessionState.CONNECTED)

    # -- small helpers -----------------------------------------------------------------------

    def _set_state(
        self, state: SessionState, last_error: str | None = None, *, retry_at: float | None = None
    ) -> None:
        error = self._status.last_error if last_error is None else last_error
        if state is SessionState.CONNECTED:
            error = ""
        changed = (state, error) != (self._status.state, self._status.last_error)
        if changed or retry_at != self._status.retry_at:
            self._status = status_now(state, error, self._status.jid, retry_at)
        if changed:
            quiet = state in (SessionState.CONNECTING, SessionState.PAIRING)
            detail = f": {error}" if error and state is not SessionState.CONNECTED else ""
            log.log(
                logging.DEBUG if quiet else logging.INFO, "%s %s%s", self.name, state.value, detail
            )
        if state not in _WAITING and state is not SessionState.BANNED:
            return
        self._wake.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs ``work`` in the background, holding a reference until it ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
