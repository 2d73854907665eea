"""The seam between the WhatsApp session and neonize's Go library (whatsmeow behind a C ABI).

``WhatsAppFFI`` mirrors the handful of Go exports the gateway uses, at their own level: blocking
calls that take a session id and answer neonize's serialized protobuf messages. ``NeonizeFFI``
is the real one, over ``neonize._binder.gocode``; ``standin.StandInFFI`` models the same exports
from their source, so tests and benchmarks drive the real session code.

neonize's high-level ``NewClient`` is bypassed on purpose: its ``set_privacy_setting`` raises on
success as well as on failure (it ``.decode()``s the serialized reply), it needs two threads per
connection, and it prints to the terminal. Calling the exports directly avoids all three.

Neither this nor the stand-in guards neonize's unlocked maps: ``guard.GuardedFFI`` does, around
either, so the stand-in (which aborts on an unguarded overlap, as Go does) checks the guard.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from service.sessions.defaults import WHATSAPP_LOG_LEVEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkCallbacks:
    """What a connection reports while ``connect`` blocks; called on threads Go owns."""

    on_qr: Callable[[str], None]
    on_login_status: Callable[[str], None]
    #: neonize's event code (``neonize.events.EVENT_TO_INT``) and the serialized event.
    on_event: Callable[[int, bytes], None]
    #: A serialized ``Neonize_pb2.LogEntry`` from whatsmeow.
    on_log: Callable[[bytes], None]


@dataclass(frozen=True)
class Dial:
    """What one ``Neonize`` call connects: which session id (one per attempt), which store and
    device (``jid``, a serialized ``JID``; empty: the store's first device, or with
    ``new_device`` a new one to pair), through which proxy, at which log level."""

    session_id: bytes
    store: str
    jid: bytes = b""
    proxy: str | None = None
    log_level: str = WHATSAPP_LOG_LEVEL
    new_device: bool = False


class WhatsAppFFI(Protocol):
    """neonize's Go exports, as the gateway uses them. Every call may block."""

    #: How long whatsmeow shows the first QR code, and each later one.
    qr_lifetimes: tuple[float, float]

    def connect(self, dial: Dial, callbacks: LinkCallbacks) -> str:
        """Runs a connection (``Neonize``) as ``dial`` says. Returns ``""`` once ``stop`` ends
        it, or an error."""
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
        """Ends the connection; ``connect`` then returns (unless neonize is stuck, see
        ``pairing``)."""
        ...

    def open_store(self, store: str) -> str:
        """Opens ``store`` as a ``Neonize`` call would, running whatsmeow's upgrade, with no
        client and no dial (``GetAllDevices``, main.go:2376-2402). ``""``, or the error."""
        ...


#: The events a session subscribes to (neonize.events.EVENT_TO_INT codes). Device (0) is always
#: sent. KeepAliveRestored (5), StreamReplaced (7) and ClientOutdated (10) are left out on purpose:
#: they serialize to zero bytes and neonize's ``getBytesAndSize`` takes ``&data[0]`` of the empty
#: slice (main.go:410-414, called at 2545), which panics and aborts the process. The session
#: learns of them from whatsmeow's log lines instead (``session``).
EVENT_CODES = {
    "Device": 0,
    "PairStatus": 2,
    "Connected": 3,
    "KeepAliveTimeout": 4,
    "LoggedOut": 6,
    "TemporaryBan": 8,
    "ConnectFailure": 9,
    "Disconnected": 12,
    "PrivacySettings": 25,
}
#: Codes that must never be subscribed to (see above).
EMPTY_EVENT_CODES = frozenset({5, 7, 10})
SUBSCRIPTIONS = bytes(sorted(EVENT_CODES.values()))


class NeonizeFFI:
    """The real Go library, loaded from the neonize wheel (imported on first use)."""

    #: qrchan.go:90-93: the first of six codes lives 60 s, each later one 20 s.
    qr_lifetimes = (60.0, 20.0)

    def __init__(self) -> None:
        from neonize._binder import gocode  # noqa: PLC0415 - loads the Go library

        self._go: Any = gocode
        # Stop is declared to return a string that neonize then frees, but the Go function returns
        # nothing: freeing whatever the register held would be undefined. Read nothing instead.
        self._go.Stop.restype = None
        # Go keeps calling a client's callbacks (its logger above all) after Neonize returns: a
        # failed dial leaves the client in neonize's map. The ctypes wrappers must outlive it, so
        # they are kept for the life of the process (one small tuple per connection attempt).
        self._callbacks: list[tuple[Any, ...]] = []

    def connect(self, dial: Dial, callbacks: LinkCallbacks) -> str:
        from neonize._binder import (  # noqa: PLC0415
            ProxySettings,
            func_callback_bytes,
            func_callback_bytes2,
            func_string,
        )
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import (  # noqa: PLC0415
            DeviceProps,
        )

        def on_qr(_: Any, text: Any) -> None:
            callbacks.on_qr(ctypes.string_at(text).decode())

        def on_status(_: Any, text: Any) -> None:
            callbacks.on_login_status(ctypes.string_at(text).decode(errors="replace"))

        def on_event(_: Any, buffer: Any, size: int, code: int) -> None:
            callbacks.on_event(code, ctypes.string_at(buffer, size))

        def on_log(buffer: Any, size: int) -> None:
            callbacks.on_log(ctypes.string_at(buffer, size))

        refs = (func_string(on_qr), func_string(on_status), func_callback_bytes(on_event))
        log_ref = func_callback_bytes2(on_log)
        self._callbacks.append((*refs, log_ref))
        props = DeviceProps(os="privacy-gateway", platformType=DeviceProps.CHROME)
        props_bytes = props.SerializeToString()
        # No proxy means a direct dial ("" for neonize), never the environment's HTTPS_PROXY.
        proxy_struct = ProxySettings(proxy_address=dial.proxy or "")._to_c_struct()
        jid = dial.jid
        result: bytes = self._go.Neonize(
                dial.store.encode(), dial.session_id, jid, len(jid), int(dial.new_device),
                dial.log_level.upper().encode(),
                refs[0], refs[1], refs[2], log_ref, SUBSCRIPTIONS, len(SUBSCRIPTIONS),
                props_bytes, len(props_bytes), b"", 0, ctypes.byref(proxy_struct),
        )  # fmt: skip
        return result.decode(errors="replace")

    def set_privacy_setting(self, session_id: bytes, category: str, value: str) -> bytes:
        reply: bytes = self._go.SetPrivacySetting(session_id, category.encode(), value.encode())
        return reply

    def get_privacy_settings(self, session_id: bytes) -> bytes:
        reply: bytes = self._go.GetPrivacySettings(session_id)
        return reply

    def pair_phone(self, session_id: bytes, phone: str) -> bytes:
        from neonize.proto.Neonize_pb2 import PairPhoneParams  # noqa: PLC0415

        params = PairPhoneParams(
            phone=phone, showPushNotification=True, clientType=1, clientDisplayName="Chrome (Linux)"
        ).SerializeToString()
        reply: bytes = self._go.PairPhone(session_id, params, len(params))
        return reply

    def stop(self, session_id: bytes) -> None:
        self._go.Stop(session_id)

    def open_store(self, store: str) -> str:
        from neonize._binder import func_callback_bytes2  # noqa: PLC0415

        log_ref = func_callback_bytes2(lambda _buffer, _size: None)
        self._callbacks.append((log_ref,))  # the container's logger outlives the call
        # The answer is the devices' list or "error: ..." (main.go:2380-2387); the C string is
        # left unfreed (a few bytes, once per process and database).
        answer = self._go.GetAllDevices(store.encode(), log_ref)
        text = ctypes.string_at(answer).decode(errors="replace") if answer else ""
        return text.removeprefix("error: ") if text.startswith("error: ") else ""
