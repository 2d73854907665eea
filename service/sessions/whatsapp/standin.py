"""A stand-in for neonize's Go library that plays WhatsApp's part, for tests and benchmarks.

It answers the same serialized neonize messages as the real library and blocks the calling thread
for a stanza's round trip the way the real call does, so ``WhatsAppSession`` runs its real code
path, executor hops included. It keeps whatsmeow's habits: a settings cache fetched by one stanza
the first time, ``client is nil`` for an unknown session, ``websocket not connected`` when the
connection is down, QR codes for an unpaired device until it is scanned.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field

from neonize.proto import Neonize_pb2 as npb

from service.sessions.whatsapp.ffi import EVENT_CODES, LinkCallbacks
from service.sessions.whatsapp.codec import neonize_field, settings_to_neonize
from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import Field, Settings, by_category


@dataclass
class StandInAccount:
    """What "WhatsApp" holds for one session id."""

    settings: Settings = DEFAULT_SETTINGS
    #: The linked account; empty until a QR code is scanned (``scan``).
    jid: str = ""
    cached: bool = False
    connected: bool = False
    callbacks: LinkCallbacks | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    failures: dict[Field, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=4096)
def _set_reply(settings: tuple[tuple[Field, str], ...]) -> bytes:
    """A successful ``SetPrivacySetting`` reply. Go builds it without holding the GIL; the
    stand-in builds each one once, so its own Python does not weigh on what is measured."""
    reply = npb.SetPrivacySettingReturnFunction()
    reply.settings.ParseFromString(settings_to_neonize(Settings(dict(settings))))
    return reply.SerializeToString()


class StandInFFI:
    """Implements ``service.sessions.whatsapp.ffi.WhatsAppFFI`` without WhatsApp."""

    def __init__(
        self,
        *,
        latency: float = 0.05,
        dial_error: str = "",
        qr_interval: float = 0.05,
        qr_codes: int = 6,
    ) -> None:
        self.latency = latency
        #: When set, every ``connect`` fails at once with it, as an unreachable WhatsApp does.
        self.dial_error = dial_error
        self.qr_interval = qr_interval
        self.qr_codes = qr_codes
        self.accounts: dict[bytes, StandInAccount] = {}
        self.stanzas = 0
        self._lock = threading.Lock()

    # -- the WhatsAppFFI interface -----------------------------------------------------------

    def connect(
        self, session_id: bytes, store: str, proxy: str | None, callbacks: LinkCallbacks
    ) -> str:
        if self.dial_error:
            return self.dial_error
        account = self.account(session_id)
        account.stopped.clear()
        account.callbacks = callbacks
        if account.jid:
            self._go_online(account)
        else:
            self._show_qr_codes(account)
        account.stopped.wait()
        account.connected = False
        account.callbacks = None
        return ""

    def set_privacy_setting(self, session_id: bytes, category: str, value: str) -> bytes:
        account = self.accounts.get(session_id)
        reply = npb.SetPrivacySettingReturnFunction()
        if account is None or account.callbacks is None:
            reply.Error = "client is nil"
        elif not account.connected:
            reply.Error = "websocket not connected"
        else:
            if not account.cached:
                self._round_trip(account)  # whatsmeow fetches the settings before the first set
            self._round_trip(account)
            field_ = by_category(category).field
            if field_ in account.failures:
                reply.Error = account.failures[field_]
            elif value not in field_.spec.values:
                reply.Error = "server returned error 400"
            else:
                account.settings = account.settings.with_value(field_, value)
        if not reply.Error:
            return _set_reply(tuple(account.settings.items()))  # type: ignore[union-attr]
        # whatsmeow returns the zero-valued struct along with an error.
        reply.settings.ParseFromString(settings_to_neonize(Settings()))
        return reply.SerializeToString()

    def get_privacy_settings(self, session_id: bytes) -> bytes:
        account = self.accounts.get(session_id)
        if account is None or (not account.cached and not account.connected):
            return settings_to_neonize(Settings())
        if not account.cached:
            self._round_trip(account)
        return settings_to_neonize(account.settings)

    def pair_phone(self, session_id: bytes, phone: str) -> bytes:
        account = self.accounts.get(session_id)
        reply = npb.PairPhoneReturnFunction()
        if account is None or account.callbacks is None:
            reply.Error = "client is nil"
        elif len(phone) < 7:
            reply.Error = "phone number too short"
        else:
            reply.Code = "GATE-WAY1"
        return reply.SerializeToString()

    def stop(self, session_id: bytes) -> None:
        account = self.accounts.get(session_id)
        if account is not None:
            account.stopped.set()

    # -- what tests do as WhatsApp or as the account's owner ---------------------------------

    def account(self, session_id: bytes) -> StandInAccount:
        with self._lock:
            return self.accounts.setdefault(session_id, StandInAccount())

    def scan(self, session_id: bytes, jid: str) -> None:
        """The owner scans the QR code: the device is paired and comes online."""
        account = self.account(session_id)
        account.jid = jid
        self._emit(account, "PairStatus", _pair_success(jid))
        self._go_online(account)

    def change_on_phone(self, session_id: bytes, field_: Field, value: str) -> None:
        """The owner changes a setting on the phone; WhatsApp notifies the linked device."""
        account = self.account(session_id)
        account.settings = account.settings.with_value(field_, value)
        account.cached = True
        event = npb.privacySettingsEvent()
        setattr(event, f"{neonize_field(field_)}Changed", True)
        event.NewSettings.ParseFromString(settings_to_neonize(Settings()))
        self._emit(account, "PrivacySettings", event.SerializePartialToString())

    def drop(self, session_id: bytes) -> None:
        """The connection drops (whatsmeow will reconnect on its own)."""
        account = self.account(session_id)
        account.connected = False
        self._emit(account, "Disconnected", npb.Disconnected(status=True).SerializeToString())

    def reconnect(self, session_id: bytes) -> None:
        self._go_online(self.account(session_id))

    def log_out(self, session_id: bytes) -> None:
        """The owner removes the device from the phone's linked devices."""
        account = self.account(session_id)
        account.connected = False
        account.jid = ""
        self._emit(account, "LoggedOut", npb.LoggedOut(OnConnect=False).SerializePartialToString())

    # -- internals ---------------------------------------------------------------------------

    def _round_trip(self, account: StandInAccount) -> None:
        with self._lock:
            self.stanzas += 1
        if self.latency:
            time.sleep(self.latency)
        account.cached = True

    def _go_online(self, account: StandInAccount) -> None:
        """As neonize does on every connection: the device (with its JID), then Connected."""
        account.connected = True
        if account.jid:
            device = npb.Device()
            user, _, server = account.jid.partition("@")
            device.JID.User = user
            device.JID.Server = server or "s.whatsapp.net"
            self._emit(account, "Device", device.SerializePartialToString())
        self._emit(account, "Connected", npb.Connected(status=True).SerializeToString())

    def _show_qr_codes(self, account: StandInAccount) -> None:
        callbacks = account.callbacks
        assert callbacks is not None

        def rotate() -> None:
            for index in range(self.qr_codes):
                if account.jid or account.stopped.is_set():
                    return
                callbacks.on_qr(f"2@standin-qr-{index}")
                if account.stopped.wait(self.qr_interval):
                    return
            if not account.jid:
                callbacks.on_login_status("timeout")

        threading.Thread(target=rotate, name="standin-qr", daemon=True).start()

    def _emit(self, account: StandInAccount, name: str, payload: bytes) -> None:
        if account.callbacks is not None:
            account.callbacks.on_event(EVENT_CODES[name], payload)


def _pair_success(jid: str) -> bytes:
    user, _, server = jid.partition("@")
    event = npb.PairStatus(Status=npb.PairStatus.SUCCESS)
    event.ID.User = user
    event.ID.Server = server or "s.whatsapp.net"
    return event.SerializePartialToString()
