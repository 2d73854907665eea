"""A stand-in for neonize's Go library that plays whatsmeow and WhatsApp, built from their source.

WhatsApp's servers cannot be reached from a test, so this answers the same serialized neonize
messages as the real library, and blocks, returns, never returns or aborts where the real code
does. Each behaviour cites the Go it models (krypton-byte/neonize goneonize/main.go at fcd96cb,
tulir/whatsmeow at 33cfac51): ``gomaps`` neonize's unlocked maps, ``client`` one whatsmeow client,
``world`` what WhatsApp and the stores hold. ``StandInFFI`` is neonize's exports; its other
methods are what a test does as WhatsApp or as the account's owner.

Where the real process would abort (a Go panic, a concurrent map access), the stand-in records
it in ``runtime.fatal`` and raises ``GoFatal`` on that thread; the test harness fails any test
that leaves one.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections import deque
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from neonize.proto import Neonize_pb2 as npb

from service.sessions.whatsapp.ffi import Dial, LinkCallbacks
from service.sessions.whatsapp.standin.client import (
    EXIT,
    Client,
    Timing,
    WhatsAppError,
    encode_settings,
    serialized,
)
from service.sessions.whatsapp.standin.gomaps import ACCESS_WINDOW, GoFatal, GoMaps, GoRuntime
from service.sessions.whatsapp.standin.world import Device, Fault, Store
from service.settings import Field

__all__ = ["Device", "Fault", "GoFatal", "StandInFFI", "Timing"]


class StandInFFI:
    """Implements ``service.sessions.whatsapp.ffi.WhatsAppFFI`` without WhatsApp."""

    def __init__(
        self,
        *,
        latency: float = 0.05,
        dial_error: str = "",
        timing: Timing | None = None,
        map_window: float = ACCESS_WINDOW,
    ) -> None:
        self.timing = timing or Timing(latency=latency, qr_lifetimes=(0.15, 0.05))
        self.qr_lifetimes = self.timing.qr_lifetimes
        #: When set, every dial fails at once with it, as an unreachable WhatsApp does
        #: (socket/framesocket.go:105-111).
        self.dial_error = dial_error
        #: When set (an Event), dials block until it is set: a proxy that never answers.
        self.hang_dial: threading.Event | None = None
        self.runtime = GoRuntime()
        self.maps = GoMaps(self.runtime, map_window)
        self.stores: dict[str, Store] = {}
        self._pending: dict[str, Device] = {}
        self._devices: dict[str, Device] = {}
        self._clients: dict[str, Client] = {}  # each device's newest client
        self._fault_queues: dict[str, deque[Fault]] = {}
        self._every_client: list[Client] = []
        self._by_session: dict[bytes, Client] = {}
        self.stanzas = 0
        self.connects = 0
        self._lock = threading.Lock()

    # -- neonize's exports -------------------------------------------------------------------

    def connect(self, dial: Dial, callbacks: LinkCallbacks) -> str:
        """``Neonize`` (goneonize/main.go:607-1178)."""
        session_id, log_level = dial.session_id, dial.log_level
        from service.sessions.whatsapp.ffi import SUBSCRIPTIONS  # noqa: PLC0415

        self.connects += 1
        stopped = threading.Event()
        with self.maps.write() as maps:  # main.go:613-614
            maps.stop_signals[session_id] = stopped
        container = self.store(dial.store)
        container.open()  # main.go:623, getDB 58-64: opened, never closed
        with self.maps.write() as maps:  # main.go:625-626
            maps.event_channels[session_id] = session_id
        device = self._choose_device(container, dial.jid, dial.new_device)
        client = Client(
            self.runtime, container, device, callbacks=callbacks,
            subscriptions=frozenset(SUBSCRIPTIONS) | {0}, log_level=log_level,
            timing=self.timing, count_stanza=self._count_stanza,
        )  # fmt: skip
        client.stopped = stopped
        with self.maps.write() as maps:  # main.go:653-654
            maps.clients[session_id] = client
        self._clients[device.label] = client
        self._by_session[session_id] = client
        self._every_client.append(client)
        try:
            if not device.jid:
                client.connect(self.dial_error, self.hang_dial)  # main.go:1138-1142
                client.start_qr()
                if not self._range_qr_channel(client):
                    return ""  # (only when the stand-in shuts down: the real call never returns)
            else:
                client.connect(self.dial_error, self.hang_dial)  # main.go:1156-1161
        except WhatsAppError as error:
            return str(error)
        return self._callback_function(session_id, client, stopped)

    def set_privacy_setting(self, session_id: bytes, category: str, value: str) -> bytes:
        """main.go:1965-1974 over privacysettings.go:63-105."""
        reply = npb.SetPrivacySettingReturnFunction()
        client = self._client(session_id)
        try:
            if client is None:
                raise WhatsAppError("client is nil")  # privacysettings.go:21-22
            settings = client.set_setting(category, value)
            # Go builds this without the GIL; built once per value here, so that the stand-in's
            # own Python does not weigh on what benchmarks measure.
            return _set_reply(tuple(sorted(settings.items())))
        except WhatsAppError as error:
            reply.Error = str(error)
            reply.settings.CopyFrom(encode_settings(None))
        return serialized(reply)

    def get_privacy_settings(self, session_id: bytes) -> bytes:
        """main.go:2094-2098 over privacysettings.go:47-58: no error channel at all."""
        client = self._client(session_id)
        if client is None:
            return serialized(encode_settings(None))
        try:
            return serialized(encode_settings(client.fetch_settings()))
        except WhatsAppError as error:
            client.log("ERROR", "Client", f"Failed to fetch privacy settings: {error}")
            return serialized(encode_settings(None))

    def pair_phone(self, session_id: bytes, phone: str) -> bytes:
        """main.go:1852-1879 over pair-code.go:92-143."""
        reply = npb.PairPhoneReturnFunction()
        client = self._client(session_id)
        digits = re.sub(r"[^0-9]", "", phone)
        try:
            if client is None:
                raise WhatsAppError("client is nil")
            if len(digits) <= 6:
                raise WhatsAppError("phone number too short")  # errors.go:28
            if digits.startswith("0"):
                raise WhatsAppError("international phone number required (must not start with 0)")
            client.iq("link_code", lambda: None)
            reply.Code = "GATE-WAY1"
        except WhatsAppError as error:
            reply.Error = str(error)
        return serialized(reply)

    def stop(self, session_id: bytes) -> None:
        """``Stop`` (main.go:586-605): Disconnect, then the three map deletes."""
        with self.maps.write() as maps:
            client = maps.clients.pop(session_id, None)
        if isinstance(client, Client):
            client.disconnect()  # waits for a dial in progress (its socket lock)
        with self.maps.write() as maps:
            signal = maps.stop_signals.pop(session_id, None)
            maps.event_channels.pop(session_id, None)
        if signal is not None:
            signal.set()
        if isinstance(client, Client):
            client.wake()

    # -- what tests do as WhatsApp, the stores, or the account's owner ------------------------

    def link_account(self, name: str, jid: str, *, store: str | None = None) -> Device:
        """A device already paired as ``jid`` in ``name``'s store (``place`` puts it there)."""
        device = Device(label=name, jid=jid, faults=self._faults(name))
        self._devices[name] = device
        if store is not None:
            self.store(store).save(device)
        else:
            self._pending[name] = device
        return device

    def place(self, data_dir: Path) -> None:
        """Stores the devices ``link_account`` made in their default stores under ``data_dir``."""
        for name, device in self._pending.items():
            self.store(str(data_dir / f"{name}.db")).save(device)
        self._pending.clear()

    def device(self, name: str) -> Device:
        return self._devices[name]

    def client(self, name: str) -> Client:
        """The newest whatsmeow client of ``name``'s device, or (for a device a pairing is
        making in a shared store, which has no name yet) of the gateway's session ``name#n``."""
        if name in self._clients:
            return self._clients[name]
        for session_id, client in reversed(self._by_session.items()):
            if session_id.decode().partition("#")[0] == name:
                return client
        raise KeyError(name)

    def open_store(self, store: str) -> str:
        """``GetAllDevices`` (main.go:2376-2402): ``getDB`` opens the store, running whatsmeow's
        upgrade (store/sqlstore/container.go:46-58), and nothing more is done with it here."""
        self.store(store).open()
        return ""

    def store(self, name: str) -> Store:
        """The store a store string names; for PostgreSQL, whatever ``application_name`` and
        ``connect_timeout`` the gateway's DSN for one call carries (``postgres.neonize_dsn``)."""
        key = _database_key(name)
        with self._lock:
            return self.stores.setdefault(key, Store(key))

    def scan(self, name: str, jid: str) -> None:
        """The owner scans the QR code (pair.go:147, qrchan.go:172-173, then the 515 reconnect,
        connectionevents.go:26-39)."""
        client = self.client(name)
        device = client.device
        device.jid = jid
        client.store.save(device)
        pair = npb.PairStatus(Status=npb.PairStatus.SUCCESS, BusinessName="", Platform="")
        pair.ID.CopyFrom(_jid(jid, device.device_number))
        client.dispatch(2, serialized(pair))
        client.end_qr("success")
        client.connected.clear()
        client.reconnect_later(0.0)

    def end_qr(self, name: str, status: str) -> None:
        """The QR loop ends with ``status`` (qrchan.go:43-55, 170-195)."""
        self.client(name).end_qr(status)

    def change_on_phone(self, name: str, field: Field, value: str) -> None:
        """The owner changes a setting on the phone (privacysettings.go:168-178)."""
        client = self.client(name)
        device = client.device
        device.raw_settings[field.spec.category] = value
        if client.cache is not None:
            client.cache[field.spec.category] = value
        else:
            client.cache = dict(device.raw_settings)
        event = npb.privacySettingsEvent()
        setattr(event, f"{_neonize_field(field)}Changed", True)
        client.dispatch(25, event.SerializePartialToString())

    def drop(self, name: str, reconnect_after: float | None = None) -> None:
        """The server closes the connection; whatsmeow reconnects after ``reconnect_after``."""
        self.client(name).remote_drop(reconnect_after)

    def reconnect(self, name: str) -> None:
        self.client(name).reconnect_later(0.0)

    def log_out(self, name: str) -> None:
        """The owner removes the device (connectionevents.go:40-47: 401 device_removed)."""
        client = self.client(name)
        client.log("INFO", "Client", "Got device removed stream error, sending LoggedOut event "
                   "and deleting session")  # fmt: skip
        client.disconnect_quietly()
        client.dispatch(6, serialized(npb.LoggedOut(OnConnect=False, Reason=npb.LOGGED_OUT)))
        client.store.delete(client.device)

    def replace(self, name: str) -> None:
        """Another client connects with this session: stream error ``conflict replaced``
        (connectionevents.go:48-51): StreamReplaced, no reconnect."""
        client = self.client(name)
        client.log("INFO", "Client", "Got replaced stream error, sending StreamReplaced event")
        client.disconnect_quietly()
        client.dispatch(7, b"")

    def ban(self, name: str, code: int, seconds: float) -> None:
        """WhatsApp bans the account for ``seconds``: the next login fails with 402 and the
        ban's code and expiry (connectionevents.go:133-138). Drops the connection so that
        whatsmeow's reconnect meets it."""
        device = self.device(name)
        device.banned = (code, time.time() + seconds)
        self.client(name).remote_drop(0.0)

    def outdate(self, name: str) -> None:
        """WhatsApp refuses this client version: 405 on the next login (connectionevents.go:139)."""
        self.device(name).outdated = True
        self.client(name).remote_drop(0.0)

    def refuse_connect(self, name: str, reason: int) -> None:
        """The next logins fail with ``reason`` (connectionevents.go:150-155)."""
        self.device(name).connect_failure = reason
        self.client(name).remote_drop(0.0)

    def keepalive_fails(self, name: str, count: int = 1) -> None:
        """Keepalive pings go unanswered: one KeepAliveTimeout per failure (keepalive.go:41-45)."""
        client = self.client(name)
        last_success = int(time.time()) - 30 * count
        for number in range(1, count + 1):
            event = npb.KeepAliveTimeout(ErrorCount=number, LastSuccess=last_success)
            client.dispatch(4, serialized(event))

    def keepalive_restored(self, name: str) -> None:
        """A ping is answered again: KeepAliveRestored (keepalive.go:53-56), which neonize can
        only forward as an empty message (code 5)."""
        self.client(name).dispatch(5, b"")

    def keepalive_forces_reconnect(self, name: str) -> None:
        """Over 3 min without an answered ping, whatsmeow reconnects with no event but the
        next Connected (keepalive.go:46-51)."""
        client = self.client(name)
        client.disconnect_quietly()
        client.expected_disconnect = False
        client.reconnect_later(0.0)

    def arrange(self, name: str, fault: Fault) -> None:
        """What happens to the next matching stanza of ``name``'s device (see ``Fault``), also
        of a device still to be made by a pairing."""
        self._faults(name).append(fault)

    def shutdown(self) -> None:
        """Releases the threads that model calls that never return."""
        self.runtime.exiting.set()
        for client in self._every_client:
            client.stopped.set()
            client.wake()
            if client.qr_channel is not None:
                client.qr_channel.put(EXIT)

    # -- internals ---------------------------------------------------------------------------

    def _choose_device(self, container: Store, jid: bytes, new_device: bool) -> Device:
        """main.go:634-650 over store/sqlstore/container.go:165-187."""
        if jid:
            wanted = npb.JID.FromString(jid)
            found = container.by_jid(wanted.User)
            if found is None:
                raise self.runtime.abort(
                    "panic: runtime error: invalid memory address or nil pointer dereference "
                    "(GetDevice found no device; whatsmeow.NewClient(nil), client.go:294)"
                )
            return found
        if container.devices and not new_device:
            return container.devices[0]
        label = Path(container.name).stem if container.path is not None else container.name
        device = Device(label=label, faults=self._faults(label))
        self._devices.setdefault(label, device)
        if self._devices[label] is not device and not self._devices[label].jid:
            self._devices[label] = device
        return device

    def _range_qr_channel(self, client: Client) -> bool:
        """``for evt := range qrChan`` (main.go:1143-1154). False if it never ends."""
        channel = client.qr_channel
        assert channel is not None
        while True:
            item = channel.get()  # as Go's range: blocks until an item, or the channel closes
            if item == EXIT:
                return False
            if item is None:
                return True
            if item.startswith("code:"):
                client.callbacks.on_qr(item.removeprefix("code:"))
            else:
                client.callbacks.on_login_status(item)

    def _callback_function(
        self, session_id: bytes, client: Client, stopped: threading.Event
    ) -> str:
        """``CallbackFunction`` (main.go:2526-2550) and ``FetchMe`` (2503-2523)."""
        with self.maps.read() as maps:
            maps.event_channels.get(session_id)
        with self.maps.read() as maps:
            found = maps.clients.get(session_id)
        if found is None:
            raise self.runtime.abort(
                "panic: runtime error: invalid memory address or nil pointer dereference "
                "(FetchMe: clients[id].Store after Stop deleted it, main.go:2504)"
            )
        while not client.device.jid:  # main.go:2507-2509: no context check
            if self.runtime.exiting.wait(0.1):
                return ""
        device = npb.Device(Platform="", BussinessName="", PushName="", Initialized=True)
        device.JID.CopyFrom(_jid(client.device.jid, client.device.device_number))
        client.deliver(0, serialized(device))
        while not stopped.is_set():
            item = client.channel.get()  # select on ctx.Done() and the channel (2536-2548)
            if item is None:
                continue  # ctx.Done(): Stop, or the stand-in shutting down
            code, payload = item
            if code < 0:  # a required field neonize left unset: Marshal fails (main.go:2541-2544)
                return f"proto: required field not set (event {-code})"
            client.deliver(code, payload)
        return ""

    def _faults(self, label: str) -> deque[Fault]:
        return self._fault_queues.setdefault(label, deque())

    def _client(self, session_id: bytes) -> Client | None:
        with self.maps.read() as maps:
            found = maps.clients.get(session_id)
        return found if isinstance(found, Client) else None

    def _count_stanza(self, device: Device) -> None:
        with self._lock:
            self.stanzas += 1
            device.stanzas += 1


def _database_key(name: str) -> str:
    if not name.startswith("postgres"):
        return name
    parts = urlsplit(name)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _PER_CALL]
    return urlunsplit(parts._replace(query=urlencode(query)))


_PER_CALL = frozenset({"application_name", "connect_timeout"})


def _jid(jid: str, device: int) -> npb.JID:
    """neonize's ``EncodeJidProto``: every field set (goneonize/utils/encoder.go:32-42)."""
    user, _, server = jid.partition("@")
    return npb.JID(
        User=user, Server=server or "s.whatsapp.net", RawAgent=0, Device=device, Integrator=0,
        IsEmpty=False,
    )  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _set_reply(settings: tuple[tuple[str, str], ...]) -> bytes:
    reply = npb.SetPrivacySettingReturnFunction()
    reply.settings.CopyFrom(encode_settings(dict(settings)))
    return serialized(reply)


@functools.cache
def _neonize_field(field: Field) -> str:
    return "".join(part.capitalize() for part in field.value.split("_"))
