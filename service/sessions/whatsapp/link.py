"""One ``Neonize`` call: a connection attempt and, if it succeeds, the connection.

neonize's ``Neonize`` blocks for the life of a connection, on a daemon thread of its own here.
What it does, and therefore when it may be stopped, depends on where it is
(goneonize/main.go at fcd96cb, whatsmeow at 33cfac51):

- DIALING: registered, dialing (``client.Connect``, main.go:1139/1158). neonize's ``Stop`` would
  call ``Disconnect``, which waits for the dial's socket lock (client.go:519-535), while holding
  the map guard: so a dialing link is never stopped; a stop asked meanwhile is carried out at
  the first sign of progress, or not at all if the dial fails (it returns on its own).
- SHOWING_QR: ranging over whatsmeow's QR channel (main.go:1143). ``Stop`` disconnects, and the
  QR emitter then returns *without closing the channel* (qrchan.go:112-114), so the call never
  returns, but never reads neonize's maps again either: safe, if the code on show is not about
  to expire (an expiry closes the channel, qrchan.go:75-85, and the reads below would race the
  Stop). Such a stop waits for the next code when the current one is near its end.
- QR_ENDED: the QR loop ended with a status (``success``, ``timeout``, ``error``, ``err-...``,
  qrchan.go:43-55, 170-195). Next ``CallbackFunction`` reads the maps and ``FetchMe`` reads
  ``clients[id]`` (main.go:2504): a ``Stop`` before that read deletes the client and the read
  dereferences nil, aborting the process. Past it, ``FetchMe`` spins while the device has no ID
  (main.go:2507-2509, no context check): after anything but ``success`` the call never returns.
  A stop waits out the guard's read window first.
- LIVE: ``CallbackFunction`` delivers events (main.go:2536-2549) until ``Stop`` cancels its
  context; then the call returns "".

So a link that is stopped may never return; ``finished`` resolves when it returned or was
given up, and nothing waits on the call itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from service.sessions.whatsapp.ffi import EVENT_CODES, Dial, LinkCallbacks, WhatsAppFFI
from service.sessions.whatsapp.guard import READ_WINDOW
from service.sessions.whatsapp.threads import BlockingCalls

log = logging.getLogger(__name__)
_EVENT_NAMES = {code: name for name, code in EVENT_CODES.items()}
#: How long a LIVE link's ``Stop`` may take to make the call return before it is given up.
STOP_TIMEOUT = 5.0
#: A QR link is stopped only while the code on show has at least this long to live (or this
#: fraction of its lifetime, for the stand-in's short ones), so its expiry cannot race the stop.
QR_STOP_MARGIN = 2.0


class Phase(enum.Enum):
    DIALING = "dialing"
    SHOWING_QR = "showing_qr"
    QR_ENDED = "qr_ended"
    LIVE = "live"
    RETURNED = "returned"


Sink = Callable[["Link", str, Any], None]


class Link:
    """A ``Neonize`` call for one session id; every callback is handed to ``sink`` on the loop."""

    def __init__(
        self,
        ffi: WhatsAppFFI,
        blocking: BlockingCalls,
        dial: Dial,
        sink: Sink,
    ) -> None:
        self.session_id = session_id = dial.session_id
        self._ffi = ffi
        self._blocking = blocking
        self._sink = sink
        self._qr_lifetimes = ffi.qr_lifetimes
        self._loop = asyncio.get_running_loop()
        self.phase = Phase.DIALING
        #: The pairing this link was dialled for (a ``pairing.Pairing``), or None.
        self.pairing: Any = None
        #: A PostgreSQL store: the ``application_name`` of this call's connections.
        self.store_call: str | None = None
        #: Whether a Connected came already (a later one is whatsmeow's own reconnect).
        self.connected_once = False
        self.started = time.monotonic()
        #: The call's result ("" after a stop), once it returned.
        self.result: str | None = None
        #: Resolves once the call returned, or was stopped in a phase it never returns from.
        self.finished: asyncio.Future[None] = self._loop.create_future()
        self._stop_wanted = False
        self._stopping = False
        self._qr_codes = 0
        self._qr_expires = 0.0
        self._ended_at = 0.0

        def deliver(kind: str, data: Any) -> None:
            # A closed loop: the gateway has stopped, and nobody listens any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._arrived, kind, data)

        callbacks = LinkCallbacks(
            on_qr=lambda code: deliver("qr", code),
            on_login_status=lambda status: deliver("login_status", status),
            on_event=lambda code, payload: deliver(_EVENT_NAMES.get(code, str(code)), payload),
            on_log=lambda entry: deliver("log", entry),
        )

        def run() -> None:
            try:
                result = ffi.connect(dial, callbacks)
            except Exception as exc:  # a crash of the binding itself
                result = f"connection failed: {exc}"
            deliver("returned", result)

        name = f"whatsapp-{session_id.decode(errors='replace')}"
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self._thread.name

    def stop(self) -> None:
        """Ends the connection as soon as that is safe (see the module); returns at once."""
        self._stop_wanted = True
        self._try_stop()

    # -- on the loop -----------------------------------------------------------------------

    def _arrived(self, kind: str, data: Any) -> None:
        if kind == "qr":
            lifetime = self._qr_lifetimes[0 if self._qr_codes == 0 else 1]
            self._qr_codes += 1
            self._qr_expires = time.monotonic() + lifetime
            self._enter(Phase.SHOWING_QR)
        elif kind == "login_status":
            self._ended_at = time.monotonic()
            self._enter(Phase.QR_ENDED)
        elif kind == "returned":
            self.result = data
            self.phase = Phase.RETURNED
            if not self._stopping:
                # Returned on its own (a failed dial, a store that would not open): neonize left
                # its client, stop signal and event channel in its maps (main.go:613-654), and
                # only Stop deletes them (586-605). Nothing reads them for this id any more.
                self._call_stop()
            _settle(self.finished)
        elif kind != "log":
            self._enter(Phase.LIVE)  # events come from CallbackFunction only
        self._sink(self, kind, data)
        self._try_stop()

    def _enter(self, phase: Phase) -> None:
        if self.phase is not Phase.RETURNED:
            self.phase = phase

    def _try_stop(self) -> None:
        if not self._stop_wanted or self._stopping or self.phase is Phase.RETURNED:
            return
        if self.phase is Phase.DIALING:
            return  # carried out at the first sign of progress, if the dial does not fail
        if self.phase is Phase.SHOWING_QR:
            lifetime = self._qr_lifetimes[0 if self._qr_codes == 1 else 1]
            margin = min(QR_STOP_MARGIN, lifetime / 4)
            if self._qr_expires - time.monotonic() < margin:
                return  # the next code, or the loop's end, tries again
            self._send_stop(returns=False)
        elif self.phase is Phase.QR_ENDED:
            wait = self._ended_at + READ_WINDOW - time.monotonic()
            if wait > 0:
                self._loop.call_later(wait, self._try_stop)
                return
            # Returns only if the pairing succeeded (FetchMe then finds the ID).
            self._send_stop(returns=False)
        else:
            self._send_stop(returns=True)

    def _call_stop(self) -> None:
        self._stopping = True
        stopping = asyncio.ensure_future(self._blocking.run(self._ffi.stop, self.session_id))
        stopping.add_done_callback(_log_failure)

    def _send_stop(self, *, returns: bool) -> None:
        self._call_stop()
        if not returns:
            _settle(self.finished)
            return
        self._loop.call_later(STOP_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        if not self.finished.done():
            log.warning("%s: the connection did not end within %.0f s", self.name, STOP_TIMEOUT)
            _settle(self.finished)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("stopping a connection failed: %s", future.exception())
