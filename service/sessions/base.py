"""The interface between the gateway and one WhatsApp Web session.

It is deliberately as small as whatsmeow's own boundary: read the settings, send one stanza that
sets one field, and say whether the session is connected. Everything about planning, ordering and
reporting lives above it, in ``service.engine``, so a new kind of session only has to honour these
three members.
"""

from __future__ import annotations

from typing import Protocol

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


class Session(Protocol):
    """One linked WhatsApp account's session."""

    @property
    def connected(self) -> bool:
        """Whether stanzas can be sent now."""
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
