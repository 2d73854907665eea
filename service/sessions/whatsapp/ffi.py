"""The seam between the WhatsApp session and neonize's Go library (whatsmeow behind a C ABI).

``WhatsAppFFI`` mirrors the handful of Go exports the gateway uses, at their own level: blocking
calls that take a session id and answer neonize's serialized protobuf messages. ``NeonizeFFI``
is the real one, over ``neonize._binder.gocode``; ``service.sessions.whatsapp.standin`` answers the
same messages without WhatsApp, so tests and benchmarks drive the real session code.

neonize's high-level ``NewClient`` is bypassed on purpose: its ``set_privacy_setting`` raises on
success as well as on failure (it ``.decode()``s the serialized reply), it needs two threads per
connection, and it prints to the terminal. Calling the exports directly avoids all three.

neonize keeps its clients in plain Go maps with no lock: a call that reads them while another
writes them (the start of ``Neonize``, or ``Stop``) aborts the whole process with ``fatal error:
concurrent map read and map write``. ``MapGuard`` prevents that: stanzas and reads share it,
registration and ``Stop`` take it alone.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: How long a connection's registration may hold the guard before it is released regardless.
REGISTRATION_TIMEOUT = 3.0


@dataclass(frozen=True)
class LinkCallbacks:
    """What a connection reports while ``connect`` blocks; called on threads Go owns."""

    on_qr: Callable[[str], None]
    on_login_status: Callable[[str], None]
    #: neonize's event code (``neonize.events.EVENT_TO_INT``) and the serialized event.
    on_event: Callable[[int, bytes], None]
    #: A serialized ``Neonize_pb2.LogEntry`` from whatsmeow.
    on_log: Callable[[bytes], None]


class WhatsAppFFI(Protocol):
    """neonize's Go exports, as the gateway uses them. Every call may block."""

    def connect(
        self, session_id: bytes, store: str, proxy: str | None, callbacks: LinkCallbacks
    ) -> str:
        """Runs a connection (``Neonize``): returns ``""`` once ``stop`` ends it, or an error."""
        ...

    def set_privacy_setting(self, session_id: bytes, category: str, value: str) -> bytes:
        """One stanza; a serialized ``SetPrivacySettingReturnFunction``."""
        ...

    def get_privacy_settings(self, session_id: bytes) -> bytes:
        """The cached settings (one stanza if none); a serialized ``PrivacySettings``."""
        ...

    def pair_phone(self, session_id: bytes, phone: str) -> bytes:
        """Asks for a pairing code; a serialized ``PairPhoneReturnFunction``."""
        ...

    def stop(self, session_id: bytes) -> None:
        """Ends the connection; ``connect`` then returns."""
        ...


class MapGuard:
    """A readers-writer guard whose exclusive side can be released from another thread.

    Registration starts inside the blocking ``Neonize`` call, so the thread that takes the guard
    is stuck in Go when the guard must be released; a plain ``threading.Lock`` cannot do that.
    Writers are preferred, so a registration does not wait behind a stream of stanzas.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    def acquire_exclusive(self) -> Callable[[], None]:
        """Takes the guard alone; returns a release callable that is safe to call many times."""
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        released = threading.Event()

        def release() -> None:
            with self._cond:
                if released.is_set():
                    return
                released.set()
                self._writer = False
                self._cond.notify_all()

        return release

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        release = self.acquire_exclusive()
        try:
            yield
        finally:
            release()


#: The events a session needs (neonize.events.EVENT_TO_INT codes).
EVENT_CODES = {
    "Device": 0,
    "PairStatus": 2,
    "Connected": 3,
    "LoggedOut": 6,
    "StreamReplaced": 7,
    "TemporaryBan": 8,
    "ConnectFailure": 9,
    "ClientOutdated": 10,
    "Disconnected": 12,
    "PrivacySettings": 25,
}


class NeonizeFFI:
    """The real Go library, loaded from the neonize wheel (imported on first use)."""

    def __init__(self, guard: MapGuard | None = None) -> None:
        from neonize._binder import gocode  # noqa: PLC0415 - loads the Go library

        self._go: Any = gocode
        self._guard = guard or MapGuard()
        # Stop is declared to return a string that neonize then frees, but the Go function returns
        # nothing: freeing whatever the register held would be undefined. Read nothing instead.
        self._go.Stop.restype = None
        # Go keeps calling a client's callbacks (its logger above all) after Neonize returns: a
        # failed dial leaves the client in neonize's map. The ctypes wrappers must outlive it;
        # the last two connections' are kept per session (the older one is what Go may still
        # hold while the newer registers).
        self._callbacks: dict[bytes, list[tuple[Any, ...]]] = {}

    def connect(
        self, session_id: bytes, store: str, proxy: str | None, callbacks: LinkCallbacks
    ) -> str:
        from neonize._binder import (  # noqa: PLC0415
            ProxySettings,
            func_callback_bytes,
            func_callback_bytes2,
            func_string,
        )
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import (  # noqa: PLC0415
            DeviceProps,
        )

        # Released at the first sign that neonize has registered the client, or when it returns.
        registered = self._guard.acquire_exclusive()

        def on_qr(_: Any, text: Any) -> None:
            registered()
            callbacks.on_qr(ctypes.string_at(text).decode())

        def on_status(_: Any, text: Any) -> None:
            registered()
            callbacks.on_login_status(ctypes.string_at(text).decode(errors="replace"))

        def on_event(_: Any, buffer: Any, size: int, code: int) -> None:
            registered()
            callbacks.on_event(code, ctypes.string_at(buffer, size))

        def on_log(buffer: Any, size: int) -> None:
            entry = ctypes.string_at(buffer, size)
            # whatsmeow logs "Dialing ..." from Connect, after neonize registered the client.
            if b"Dialing" in entry:
                registered()
            callbacks.on_log(entry)

        refs = (func_string(on_qr), func_string(on_status), func_callback_bytes(on_event))
        log_ref = func_callback_bytes2(on_log)
        kept = self._callbacks.setdefault(session_id, [])
        kept[:] = [*kept[-1:], (*refs, log_ref)]
        subscriptions = bytes(sorted(EVENT_CODES.values()))
        props = DeviceProps(os="privacy-gateway", platformType=DeviceProps.CHROME)
        props_bytes = props.SerializeToString()
        # No proxy means a direct dial ("" for neonize), never the environment's HTTPS_PROXY.
        proxy_struct = ProxySettings(proxy_address=proxy or "")._to_c_struct()
        timer = threading.Timer(REGISTRATION_TIMEOUT, registered)
        timer.daemon = True
        timer.start()
        try:
            result: bytes = self._go.Neonize(
                store.encode(), session_id, b"", 0, 0, b"DEBUG", refs[0], refs[1], refs[2],
                log_ref, subscriptions, len(subscriptions), props_bytes, len(props_bytes),
                b"", 0, ctypes.byref(proxy_struct),
            )  # fmt: skip
        finally:
            timer.cancel()
            registered()
        return result.decode(errors="replace")

    def set_privacy_setting(self, session_id: bytes, category: str, value: str) -> bytes:
        with self._guard.shared():
            reply: bytes = self._go.SetPrivacySetting(session_id, category.encode(), value.encode())
        return reply

    def get_privacy_settings(self, session_id: bytes) -> bytes:
        with self._guard.shared():
            reply: bytes = self._go.GetPrivacySettings(session_id)
        return reply

    def pair_phone(self, session_id: bytes, phone: str) -> bytes:
        from neonize.proto.Neonize_pb2 import PairPhoneParams  # noqa: PLC0415

        params = PairPhoneParams(
            phone=phone, showPushNotification=True, clientType=1, clientDisplayName="Chrome (Linux)"
        ).SerializeToString()
        with self._guard.shared():
            reply: bytes = self._go.PairPhone(session_id, params, len(params))
        return reply

    def stop(self, session_id: bytes) -> None:
        with self._guard.exclusive():
            self._go.Stop(session_id)
