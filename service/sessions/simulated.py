"""A WhatsApp session simulated the way whatsmeow behaves at the gateway's boundary.

WhatsApp's servers cannot be reached from tests or demos, so this stands in for them with the
behaviour that matters to the gateway: the settings are fetched with one stanza the first time and
cached after (as whatsmeow's ``TryFetchPrivacySettings`` does), each set is one stanza with a
round-trip latency, a set updates the cache with the server's answer, and a stanza can fail. It
counts every stanza so tests and benchmarks can assert exactly what an update cost.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.sessions.base import SessionError
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

#: The error whatsmeow returns for a stanza sent without a websocket.
NOT_CONNECTED_REASON = "websocket not connected"


@dataclass(frozen=True, slots=True)
class SentStanza:
    """One stanza the session sent: a fetch (``category`` is None) or a set."""

    category: str | None
    value: str | None


class SimulatedSession:
    """A session whose WhatsApp server is this object.

    ``server_settings`` is what "WhatsApp" holds; the session's cache is what a whatsmeow client
    would have learned. Faults are injected with ``fail_field`` and ``drop_after``.
    """

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
        self._field_faults: dict[Field, str] = {}
        self._stanzas_before_drop: int | None = None

    # -- the Session interface -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    async def read_settings(self) -> Settings:
        if self._cache is None:
            await self._stanza(SentStanza(None, None))
            self._cache = self.server_settings
        return self._cache

    async def set_setting(self, field: Field, value: str) -> Settings:
        if value not in field.spec.values:
            raise ValueError(f"{value!r} is not a value of {field.value}")
        await self.read_settings()
        await self._stanza(SentStanza(field.spec.category, value))
        reason = self._field_faults.get(field)
        if reason is not None:
            raise SessionError(reason)
        self.server_settings = self.server_settings.with_value(field, value)
        self._cache = self.server_settings
        return self._cache

    # -- what tests and the demo control ---------------------------------------------------

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

    def disconnect(self) -> None:
        self._connected = False

    def reconnect(self) -> None:
        self._connected = True

    # -- internals -------------------------------------------------------------------------

    async def _stanza(self, stanza: SentStanza) -> None:
        if self._stanzas_before_drop == 0:
            self._connected = False
            self._stanzas_before_drop = None
        if not self._connected:
            raise SessionError(NOT_CONNECTED_REASON, connection_lost=True)
        self.sent.append(stanza)
        if self._stanzas_before_drop is not None:
            self._stanzas_before_drop -= 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
