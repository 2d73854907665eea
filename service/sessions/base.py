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


class StanzaFate(enum.Enum):
    """What became of a stanza that did not come back with a success."""

    #: It never left: the connection was down (``websocket not connected``, ``client is nil``).
    NOT_SENT = "not_sent"
    #: WhatsApp answered with an error (``info query returned status 4xx/5xx``): not applied.
    REFUSED = "refused"
    #: It was sent and its answer was lost (timed out, or the connection dropped first):
    #: WhatsApp may have applied it.
    UNCONFIRMED = "unconfirmed"


class SessionError(Exception):
    """A stanza that did not succeed, or settings that could not be read.

    ``fate`` says whether WhatsApp may hold the change; ``status`` is WhatsApp's own error code
    when it answered one (429 rate limit, 5xx its own trouble), and ``retry_after`` how long to
    wait before trying again when that is known.
    """

    def __init__(
        self,
        reason: str,
        *,
        connection_lost: bool = False,
        fate: StanzaFate | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fate = fate or (StanzaFate.NOT_SENT if connection_lost else StanzaFate.REFUSED)
        self.status = status
        self.retry_after = retry_after

    @property
    def connection_lost(self) -> bool:
        """Nothing reached WhatsApp because the connection was down; a retry after a reconnect
        may succeed."""
        return self.fate is StanzaFate.NOT_SENT

    @property
    def unconfirmed(self) -> bool:
        return self.fate is StanzaFate.UNCONFIRMED


class SessionState(enum.Enum):
    NOT_PAIRED = "not_paired"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    LOGGED_OUT = "logged_out"
    PAIRING = "pairing"
    #: Another client took the session (WhatsApp's stream error ``replaced``): not retried.
    REPLACED = "replaced"
    #: Temporarily banned by WhatsApp; retried once the ban expires (``SessionStatus.retry_at``).
    BANNED = "banned"
    #: WhatsApp refused this client's version (connect failure 405): not retried.
    CLIENT_OUTDATED = "client_outdated"
    #: Connected, but keepalive pings go unanswered: stanzas may time out.
    DEGRADED = "degraded"


#: The states in which stanzas are sent (a degraded connection may still carry them).
SENDING_STATES = frozenset({SessionState.CONNECTED, SessionState.DEGRADED})


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """Where a session's connection stands; ``since`` is a ``time.time()`` instant."""

    state: SessionState
    since: float
    last_error: str = ""
    jid: str = ""
    #: When the next connection attempt is due (a ``time.time()`` instant), if one is scheduled.
    retry_at: float | None = None


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
        """The settings as WhatsApp holds them.

        Served from the session's cache when it has one; otherwise one stanza fetches them. A
        field WhatsApp did not report (or whose last stanza went unconfirmed) is missing from the
        result, which is then not ``complete``; the other fields are still known. Raises
        ``SessionError`` when nothing at all can be known.
        """
        ...

    async def confirm(self, field: Field) -> str | None:
        """Re-reads ``field`` from WhatsApp itself (never a cache) after a stanza whose answer
        was lost; None while that cannot be done."""
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


def status_now(
    state: SessionState, last_error: str = "", jid: str = "", retry_at: float | None = None
) -> SessionStatus:
    return SessionStatus(state, time.time(), last_error, jid, retry_at)
