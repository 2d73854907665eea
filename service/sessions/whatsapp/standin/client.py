"""One whatsmeow ``Client`` as neonize builds it for each ``Neonize`` call.

Modelled on tulir/whatsmeow at 33cfac51 (the closest public commit to what neonize 0.5.2 embeds)
and krypton-byte/neonize's goneonize at fcd96cb; each behaviour names its source:
- a new client per call, with an empty privacy cache (goneonize/main.go:651-654);
- its events go through neonize's handler into a 100-slot channel (main.go:625, blocking sends
  at 658-1096) that only ``CallbackFunction`` drains (main.go:2526-2550), after the QR loop;
- its connection: whatsmeow reconnects by itself after a remote drop (client.go:588-607,
  autoReconnect 623-656, with no Disconnected event after a user ``Disconnect``, 670-683), and
  emits Connected after each login (connectionevents.go:158-207);
- its stanzas (IQs): 75 s timeout ``info query timed out`` (request.go:150, 180-181), after a
  drop a wait of up to 5 s for a reconnect and one resend (request.go:185-235), WhatsApp's error
  codes as ``info query returned status %d: %s`` (errors.go:214-225);
- its privacy settings: fetched once, then the cache (privacysettings.go:20-58); a set patches
  the cache and returns it without a re-read (63-105); a value neonize does not map reads as
  UNDEFINED (goneonize/utils/encoder.go:474-505).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neonize.proto import Neonize_pb2 as npb

from service.sessions.whatsapp.ffi import EMPTY_EVENT_CODES, LinkCallbacks
from service.sessions.whatsapp.standin.gomaps import GoRuntime
from service.sessions.whatsapp.standin.world import Device, Fault, Store

#: neonize's log levels (goneonize/utils/log.go:66-72); an unknown name is DEBUG.
LOG_LEVELS = {"": -1, "DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3}
#: neonize's value numbers (encoder.go:474-505); anything else is 0, read as UNDEFINED.
_VALUE_NUMBERS = {"": 1, "all": 2, "contacts": 3, "contact_blacklist": 4,
                  "match_last_seen": 5, "known": 6, "none": 7}  # fmt: skip
_CATEGORY_FIELDS = {"last": "LastSeen", "status": "Status", "profile": "Profile",
                    "online": "Online", "readreceipts": "ReadReceipts", "calladd": "CallAdd",
                    "groupadd": "GroupAdd"}  # fmt: skip
#: TempBanReason codes neonize maps (encoder.go:608-626); others leave a required field unset.
_BAN_CODES = {101: 1, 102: 2, 103: 3, 104: 4, 106: 5}
#: ConnectFailureReason numbers neonize maps (encoder.go:574-599) to its enum.
_FAILURE_CODES = {400: 1, 401: 2, 402: 3, 403: 4, 406: 5, 405: 6, 409: 7, 500: 8, 501: 9, 503: 10}
CHANNEL_SLOTS = 100
#: Put on a QR channel when the stand-in shuts down: a loop that would never end ends.
EXIT = "\x00exit"


class WhatsAppError(Exception):
    """An error whatsmeow returns (its text is what neonize hands Python)."""


@dataclass
class Timing:
    """The stand-in's clock: whatsmeow's waits, scaled down for tests."""

    #: A stanza's round trip to WhatsApp.
    latency: float = 0.05
    #: whatsmeow's IQ timeout (request.go:150: 75 s).
    iq_timeout: float = 75.0
    #: How long a stanza whose connection dropped waits for a reconnect (request.go:199: 5 s).
    reconnect_wait: float = 5.0
    #: QR code lifetimes: the first, then each later one (qrchan.go:90-93: 60 s, 20 s).
    qr_lifetimes: tuple[float, float] = (60.0, 20.0)
    #: How long a dial takes (and, with ``hang_dial``, whether it never ends).
    dial: float = 0.0


class Client:
    """One whatsmeow client and the neonize event channel it feeds."""

    def __init__(
        self,
        runtime: GoRuntime,
        store: Store,
        device: Device,
        *,
        callbacks: LinkCallbacks,
        subscriptions: frozenset[int],
        log_level: str,
        timing: Timing,
        count_stanza: Callable[[Device], None],
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.device = device
        self.callbacks = callbacks
        self.subscriptions = subscriptions
        self.min_level = LOG_LEVELS.get(log_level.upper(), 0)
        self.timing = timing
        self._count_stanza = count_stanza
        self.cache: dict[str, str] | None = None
        #: neonize's event channel; None is not an event but a wake-up for ``ctx.Done()``.
        self.channel: queue.Queue[tuple[int, bytes] | None] = queue.Queue(CHANNEL_SLOTS + 1)
        self.connected = threading.Event()
        self.expected_disconnect = False
        self.stopped = threading.Event()  # neonize's ctx (main.go:612-614)
        self.qr_channel: queue.Queue[str | None] | None = None
        self._qr_done = threading.Event()
        self.socket_lock = threading.Lock()  # whatsmeow's socketLock (client.go:524-527)

    # -- connection -----------------------------------------------------------------------

    def connect(self, dial_error: str, hang: threading.Event | None) -> None:
        """``Connect`` (client.go:519-581): dial, handshake, then WhatsApp's verdict."""
        with self.socket_lock:
            self.log("DEBUG", "Client/Socket", "Dialing wss://web.whatsapp.com/ws/chat")
            if hang is not None:
                hang.wait()
            if self.timing.dial:
                time.sleep(self.timing.dial)
            if dial_error:
                raise WhatsAppError(dial_error)
            self.expected_disconnect = False
        if self.device.jid:
            self._login()
        else:
            self.connected.set()  # the socket is up before any login: QR codes and PairPhone

    def _login(self) -> None:
        """What WhatsApp answers a paired device's login with (connectionevents.go:102-207)."""
        device = self.device
        if device.banned is not None and device.banned[1] > time.time():
            code, until = device.banned
            expire = math.ceil(until - time.time())  # whole seconds (connectionevents.go:137)
            self.log("WARN", "Client",
                     f'Temporary ban connect failure: <failure reason="402" code="{code}" '
                     f'expire="{expire}"/>')  # fmt: skip
            self.expected_disconnect = True
            ban = npb.TemporaryBan(Expire=expire)
            if code in _BAN_CODES:
                ban.Code = _BAN_CODES[code]  # type: ignore[assignment]
            self.dispatch(8, ban.SerializePartialToString(), complete=code in _BAN_CODES)
            return
        if device.outdated:
            outdated = "Client outdated (405) connect failure (client version: 2.3000.1)"
            self.log("ERROR", "Client", outdated)
            self.expected_disconnect = True
            self.dispatch(10, b"")
            return
        if device.connect_failure is not None:
            reason = device.connect_failure
            if reason in (500, 503):  # auto-reconnect handles it (connectionevents.go:150-151)
                self.log("WARN", "Client", f"Got {reason}/ connect failure, assuming automatic "
                         "reconnect will handle it")  # fmt: skip
                return
            self.log("WARN", "Client", f'Unknown connect failure: <failure reason="{reason}"/>')
            self.expected_disconnect = True
            failure = npb.ConnectFailure(Message="")
            failure.Raw.Tag = "failure"
            known = reason in _FAILURE_CODES
            if known:
                failure.Reason = _FAILURE_CODES[reason]  # type: ignore[assignment]
            self.dispatch(9, failure.SerializePartialToString(), complete=known)
            return
        self.connected.set()
        self.log("INFO", "Client", "Successfully authenticated")
        self.dispatch(3, npb.Connected(status=True).SerializeToString())

    def disconnect(self) -> None:
        """A user ``Disconnect`` (client.go:674-683): expected, silent, no reconnect."""
        with self.socket_lock:
            self.expected_disconnect = True
            self.connected.clear()
        if self.qr_channel is not None and not self._qr_done.is_set():
            # The emitter returns without closing the channel (qrchan.go:112-114).
            self._qr_done.set()

    def remote_drop(self, reconnect_after: float | None) -> None:
        """The server closes the socket: Disconnected, then autoReconnect (client.go:588-656)."""
        if not self.connected.is_set():
            return
        self.connected.clear()
        self.dispatch(12, npb.Disconnected(status=True).SerializeToString())
        if reconnect_after is not None:
            self.reconnect_later(reconnect_after)

    def reconnect_later(self, delay: float) -> None:
        """whatsmeow's ``autoReconnect`` (client.go:623-656). It runs on the client's
        ``BackgroundEventCtx`` (client.go:289, 498), which neonize's stop signal never reaches
        (main.go:593-595): only the expected-disconnect flag a ``Disconnect`` sets ends it
        (client.go:631-633, 643-645). ``Stop`` calls that ``Disconnect`` first (main.go:589-590).
        """

        def again() -> None:
            self.runtime.exiting.wait(delay)  # the sleep; only the stand-in's shutdown ends it
            if self.expected_disconnect or self.runtime.exiting.is_set():
                return
            self._login()

        threading.Thread(target=again, name="standin-reconnect", daemon=True).start()

    # -- QR codes -------------------------------------------------------------------------

    def start_qr(self) -> None:
        """``GetQRChannel`` and the emitter (qrchan.go:60-122, 204-222): six codes, the first
        lasting 60 s and each later one 20 s, then ``timeout`` and the channel closes."""
        channel: queue.Queue[str | None] = queue.Queue()
        self.qr_channel = channel

        def emit() -> None:
            first, later = self.timing.qr_lifetimes
            for index in range(6):
                channel.put(f"code:2@standin-qr-{index}")
                if self._qr_done.wait(first if index == 0 else later):
                    return  # a Disconnect (returns, channel left open) or a terminal event
            self.end_qr("timeout")

        threading.Thread(target=emit, name="standin-qr", daemon=True).start()

    def end_qr(self, status: str) -> None:
        """A terminal QR event: sent, then the channel is closed (qrchan.go:186-195, 75-85)."""
        if self.qr_channel is None or self._qr_done.is_set():
            return
        self._qr_done.set()
        self.qr_channel.put(status)
        self.qr_channel.put(None)
        if status != "success":
            self.disconnect_quietly()

    def disconnect_quietly(self) -> None:
        self.expected_disconnect = True
        self.connected.clear()

    # -- events and logs ------------------------------------------------------------------

    def dispatch(self, code: int, payload: bytes, *, complete: bool = True) -> None:
        """neonize's handler: a subscribed event into the channel (blocking when full)."""
        if code not in self.subscriptions:
            return
        self.channel.put((code if complete else -code, payload))

    def wake(self) -> None:
        """Wakes CallbackFunction's select, as a cancelled context does."""
        self.channel.put(None)

    def log(self, level: str, module: str, message: str) -> None:
        """neonize's logger (utils/log.go:74-91): entries below the level never reach Python."""
        if LOG_LEVELS[level] < self.min_level:
            return
        entry = npb.LogEntry(Message=message, Level=level, Name=module)
        self.callbacks.on_log(entry.SerializeToString())

    def deliver(self, code: int, payload: bytes) -> None:
        """``CallbackFunction`` hands one event to Python (main.go:2540-2547)."""
        if code in EMPTY_EVENT_CODES or not payload:
            # getBytesAndSize takes &data[0] of an empty slice (main.go:410-414).
            raise self.runtime.abort(
                "panic: runtime error: index out of range [0] with length 0 "
                f"(goneonize/main.go:411, event {code})"
            )
        self.callbacks.on_event(code, payload)

    # -- stanzas --------------------------------------------------------------------------

    def iq(self, category: str | None, apply: Callable[[], None]) -> None:
        """One info query, with whatsmeow's timeout, drop, resend and error behaviour."""
        if not self.connected.is_set():
            raise WhatsAppError("websocket not connected")  # errors.go:22
        self._count_stanza(self.device)
        if self.timing.latency:
            time.sleep(self.timing.latency)
        fault = self.device.take_fault(category)
        if fault is None:
            apply()
            return
        if fault.applied and fault.kind != "status":
            apply()
        if fault.kind == "status":
            raise WhatsAppError(f"info query returned status {fault.status}: {fault.text}")
        if fault.kind == "timeout":
            # A Stop's Disconnect clears the response waiters (client.go:705, unlockedDisconnect
            # -> clearResponseWaiters), which ends the wait with request.go:199-202's error; the
            # stop signal is set right after that Disconnect (main.go:589-595).
            if self.stopped.wait(self.timing.iq_timeout) or self.expected_disconnect:
                raise WhatsAppError("websocket disconnected before info query returned response")
            raise WhatsAppError("info query timed out")  # request.go:180-181
        self._dropped_mid_stanza(fault, apply)

    def _dropped_mid_stanza(self, fault: Fault, apply: Callable[[], None]) -> None:
        self.remote_drop(fault.reconnect_after)
        # WaitForConnection(5 s) (request.go:199-202), then the same bytes once more.
        if not self.connected.wait(self.timing.reconnect_wait):
            raise WhatsAppError("websocket disconnected before info query returned response")
        self._count_stanza(self.device)
        if self.timing.latency:
            time.sleep(self.timing.latency)
        apply()

    def fetch_settings(self) -> dict[str, str]:
        """``TryFetchPrivacySettings`` (privacysettings.go:20-43): the cache, or one IQ."""
        if self.cache is None:
            fetched: dict[str, str] = {}
            self.iq(None, lambda: fetched.update(self.device.raw_settings))
            self.cache = dict(fetched)
        return self.cache

    def set_setting(self, category: str, value: str) -> dict[str, str]:
        """``SetPrivacySetting`` (privacysettings.go:63-105)."""
        settings = dict(self.fetch_settings())

        def apply() -> None:
            self.device.raw_settings[category] = value

        self.iq(category, apply)
        settings[category] = value  # patched, not re-read
        self.cache = settings
        return settings


def encode_settings(raw: dict[str, str] | None) -> npb.PrivacySettings:
    """neonize's ``EncodePrivacySettings`` (encoder.go:474-505); None is the zero struct."""
    message = npb.PrivacySettings()
    for category, name in _CATEGORY_FIELDS.items():
        number = _VALUE_NUMBERS.get((raw or {}).get(category, ""), 0)
        if number:
            setattr(message, name, number)
    return message


def serialized(message: Any) -> bytes:
    data: bytes = message.SerializePartialToString()
    return data
