"""The interface between the gateway and one WhatsApp Web session.

It is deliberately as small as whatsmeow's own boundary: read the settings, send one stanza that
sets one field, say where the connection stands, and tell listeners when the settings change.
Everything about planning, ordering and reporting lives above it, in ``service.engine``, so a new
kind of session only has to honour these members.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from service.settings import Field, Settings


class SessionError(Exception):
    """WhatsApp refused a stanza or it could not be sent.

    ``connection_lost`` tells the caller that retrying after a reconnect may succeed, as opposed to
    WhatsApp answering with an error.
    """

    def __init__(self, reason: str, *, connection_lost: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connection_lost = connection_lost


class SessionState(enum.Enum):
    NOT_PAIRED = "not_paired"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    LOGGED_OUT = "logged_out"
    PAIRING = "pairing"


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """Where a session's connection stands; ``since`` is a ``time.time()`` instant."""

    state: SessionState
    since: float
    last_error: str = ""
    jid: str = ""


class ChangeSource(enum.Enum):
    GATEWAY = "gateway"
    PHONE = "phone"


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """The complete settings after a change, which fields changed, and where it came from."""

    settings: Settings
    changed: frozenset[Field]
    source: ChangeSource


ChangeListener = Callable[[SettingsChange], None]


@dataclass(frozen=True, slots=True)
class PairEvent:
    """One step of pairing: a QR code, a pairing code, or (last) the paired JID."""

    qr_code: str = ""
    pairing_code: str = ""
    jid: str = ""


class Session(Protocol):
    """One linked WhatsApp account's session."""

    kind: str

    @property
    def connected(self) -> bool:
        """Whether stanzas can be sent now."""
        ...

    def status(self) -> SessionStatus:
        """The connection's state, since when, the last error and the paired JID."""
        ...

    async def read_settings(self) -> Settings:
        """The complete settings as WhatsApp holds them.

        Served from the session's cache when it has one; otherwise one stanza fetches them. Raises
        ``SessionError`` when they cannot be known: a partial answer is never returned.
        """
        ...

    async def set_setting(self, field: Field, value: str) -> Settings:
        """Sends one stanza setting ``field`` to ``value`` and returns the settings afterwards.

        Raises ``SessionError`` when WhatsApp refuses it or it cannot be sent.
        """
        ...

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Calls ``listener`` on the event loop after each change; returns the unsubscribe."""
        ...

    async def start(self) -> None:
        """Begins connecting in the background; returns at once."""
        ...

    async def close(self) -> None:
        """Disconnects cleanly."""
        ...


@runtime_checkable
class Pairable(Protocol):
    """A session that can link a WhatsApp account (the simulated kind has none to link)."""

    def pair(self, phone: str | None) -> AsyncIterator[PairEvent]:
        """QR codes (or a pairing code for ``phone``), ending with the paired JID."""
        ...


class ChangeNotifier:
    """Tells listeners about changes of settings, once per real change.

    A set of the value already held, or a server notification echoing a change this gateway made,
    changes nothing and is not reported.
    """

    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []
        self._known: Settings | None = None

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, settings: Settings, source: ChangeSource) -> None:
        previous, self._known = self._known, settings
        if previous is None or not self._listeners:
            return
        changed = frozenset(f for f in settings if previous.get(f) != settings[f])
        if changed:
            change = SettingsChange(settings, changed, source)
            for listener in list(self._listeners):
                listener(change)


def status_now(state: SessionState, last_error: str = "", jid: str = "") -> SessionStatus:
    return SessionStatus(state, time.time(), last_error, jid)
