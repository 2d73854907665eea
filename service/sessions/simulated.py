"""A WhatsApp session simulated the way whatsmeow behaves at the gateway's boundary.

WhatsApp's servers cannot be reached from tests or demos, so this stands in for them with the
behaviour that matters to the gateway: the settings are fetched with one stanza the first time and
cached after (as whatsmeow's ``TryFetchPrivacySettings`` does), each set is one stanza with a
round-trip latency, a set updates the cache with the server's answer, and a stanza can fail. It
counts every stanza so tests and benchmarks can assert exactly what an update cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from service.sessions.base import (
    ChangeListener,
    ChangeNotifier,
    ChangeSource,
    SessionError,
    SessionState,
    SessionStatus,
    StanzaFate,
    status_now,
)
from service.sessions.whatsapp.stanza_errors import stanza_error
from service.settings import Field, Settings

#: What a freshly registered WhatsApp account holds.
DEFAULT_SETTINGS = Settings(
    {
        Field.LAST_SEEN: "all",
        Field.STATUS: "contacts",
        Field.PROFILE: "all",
        Field.ONLINE: "all",
        Field.READ_RECEIPTS: "all",
        Field.CALL_ADD: "all",
        Field.GROUP_ADD: "all",
    }
)

#: The error whatsmeow returns for a stanza sent without a websocket (errors.go:22).
NOT_CONNECTED_REASON = "websocket not connected"
#: ... and for one whose answer never came (errors.go:21, request.go:180-181).
LOST_ANSWER_REASON = "info query timed out"


@dataclass(frozen=True, slots=True)
class SentStanza:
    """One stanza the session sent: a fetch (``category`` is None) or a set."""

    category: str | None
    value: str | None


class SimulatedSession:
    """A session whose WhatsApp server is this object.

    ``server_settings`` is what "WhatsApp" holds; the session's cache is what a whatsmeow client
    would have learned. Faults are injected with ``fail_field`` and ``drop_after``; a change made
    on the phone with ``change_on_phone``.
    """

    kind = "simulated"

    def __init__(
        self,
        settings: Settings = DEFAULT_SETTINGS,
        *,
        latency: float = 0.0,
        connected: bool = True,
    ) -> None:
        if not settings.complete:
            raise ValueError("a simulated account needs every field set")
        self.server_settings = settings
        self.latency = latency
        self.sent: list[SentStanza] = []
        self._cache: Settings | None = None
        self._connected = connected
        self._closed = False
        self._field_faults: dict[Field, str] = {}
        self._lost_answers: dict[Field, bool] = {}
        self._stanzas_before_drop: int | None = None
        self._notifier = ChangeNotifier()
        self._status = status_now(
            SessionState.CONNECTED if connected else SessionState.DISCONNECTED
        )

    # -- the Session interface -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self) -> SessionStatus:
        return self._status

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        return self._notifier.subscribe(listener)

    async def start(self) -> None:
        """A simulated account is connected from the start, and again once started after a
        ``close`` (a replica that regains an instance's lease starts its session again)."""
        if self._closed:
            self._closed = False
            self._set_connected(True)

    async def close(self) -> None:
        self._closed = True
        self._set_connected(False)

    async def read_settings(self) -> Settings:
        if self._cache is None:
            await self._stanza(SentStanza(None, None))
            self._cache = self.server_settings
            self._notifier.publish(self._cache, ChangeSource.GATEWAY)
        return self._cache

    async def set_setting(self, field: Field, value: str) -> Settings:
        if value not in field.spec.values:
            raise ValueError(f"{value!r} is not a value of {field.value}")
        await self.read_settings()
        await self._stanza(SentStanza(field.spec.category, value))
        lost = self._lost_answers.pop(field, None)
        if lost is not None:
            # Sent, answer lost: WhatsApp may have applied it; the cache no longer knows.
            if lost:
                self.server_settings = self.server_settings.with_value(field, value)
            assert self._cache is not None
            self._cache = Settings({f: v for f, v in self._cache.items() if f is not field})
            raise SessionError(LOST_ANSWER_REASON, fate=StanzaFate.UNCONFIRMED)
        reason = self._field_faults.get(field)
        if reason is not None:
            raise stanza_error(reason)
        self.server_settings = self.server_settings.with_value(field, value)
        self._cache = self.server_settings
        self._notifier.publish(self._cache, ChangeSource.GATEWAY)
        return self._cache

    async def confirm(self, field: Field) -> str | None:
        """One fetch stanza: WhatsApp's own value, which the cache takes."""
        if not self._connected:
            return None
        await self._stanza(SentStanza(None, None))
        self._cache = self.server_settings
        return self.server_settings[field]

    # -- what tests and the demo control ---------------------------------------------------

    def lose_answer(self, field: Field, *, applied: bool) -> None:
        """The next set of ``field`` goes out but its answer is lost (``info query timed
        out``); ``applied`` says whether WhatsApp applied it anyway."""
        self._lost_answers[field] = applied

    @property
    def stanzas(self) -> int:
        """How many stanzas have been sent, fetches included."""
        return len(self.sent)

    def fail_field(self, field: Field, reason: str) -> None:
        """From now on, WhatsApp answers every set of ``field`` with an error."""
        self._field_faults[field] = reason

    def drop_after(self, stanzas: int) -> None:
        """The connection drops once ``stanzas`` more stanzas have been sent."""
        self._stanzas_before_drop = stanzas

    def clear_faults(self) -> None:
        self._field_faults.clear()
        self._stanzas_before_drop = None

    def change_on_phone(self, field: Field, value: str) -> None:
        """The account's owner changes a setting on the phone; WhatsApp notifies the session.

        As whatsmeow does on that notification, the cache takes the new value (fetching the rest
        first if it had none) and listeners hear of it.
        """
        self.server_settings = self.server_settings.with_value(field, value)
        if self._cache is None:
            self.sent.append(SentStanza(None, None))
        self._cache = self.server_settings
        self._notifier.publish(self._cache, ChangeSource.PHONE)

    def disconnect(self) -> None:
        self._set_connected(False)

    def reconnect(self) -> None:
        self._set_connected(True)

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        state = SessionState.CONNECTED if connected else SessionState.DISCONNECTED
        if state is not self._status.state:
            error = "" if connected else NOT_CONNECTED_REASON
            self._status = status_now(state, error)

    # -- internals -------------------------------------------------------------------------

    async def _stanza(self, stanza: SentStanza) -> None:
        if self._stanzas_before_drop == 0:
            self._set_connected(False)
            self._stanzas_before_drop = None
        if not self._connected:
            raise SessionError(NOT_CONNECTED_REASON, connection_lost=True)
        self.sent.append(stanza)
        if self._stanzas_before_drop is not None:
            self._stanzas_before_drop -= 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
