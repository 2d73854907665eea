"""neonize's serialized messages, read and written in the gateway's terms.

neonize's ``PrivacySettings`` message names each field in CamelCase (``LastSeen``) and its enum
each value upper-cased (``CONTACT_BLACKLIST``); both follow from the field table, so no second
table exists here. Stanzas are sent with the table's own wire strings, never neonize's
``PrivacySetting`` enum, whose ``CONTACTS_BLACKLIST`` is ``contacts_blacklist`` where WhatsApp
expects ``contact_blacklist``.
"""

from __future__ import annotations

from typing import Any

from neonize.proto import Neonize_pb2 as npb

from service.sessions.base import SessionError
from service.settings import FIELDS, Field, Settings

UNDEFINED = npb.PrivacySettings.UNDEFINED

#: Errors whatsmeow and neonize give for a session that cannot send a stanza now.
NOT_CONNECTED_ERRORS = (
    "websocket not connected",
    "client is nil",
    "not connected",
    "not logged in",
    "the store doesn't contain a device JID",
)


def neonize_field(field: Field) -> str:
    """``last_seen`` -> ``LastSeen``, the field's name in neonize's ``PrivacySettings``."""
    return "".join(part.capitalize() for part in field.value.split("_"))


def neonize_value(value: str) -> int:
    """A wire string's number in neonize's ``PrivacySettings.PrivacySetting`` enum."""
    number: int = npb.PrivacySettings.PrivacySetting.Value(value.upper())
    return number


_VALUE_BY_NUMBER = {neonize_value(v): v for spec in FIELDS for v in spec.values}
# Worked out once: every stanza's answer is read through them.
_NAMES = tuple((spec, neonize_field(spec.field)) for spec in FIELDS)
_NUMBERS = {v: neonize_value(v) for spec in FIELDS for v in spec.values}


def settings_from_neonize(message: Any) -> Settings | None:
    """The settings in a neonize ``PrivacySettings``, or None when any field is unknown.

    whatsmeow answers an empty struct when it could not fetch the settings, which neonize
    reports as UNDEFINED everywhere: that means "unknown", never the account's settings.
    """
    values: dict[Field, str] = {}
    for spec, name in _NAMES:
        value = _VALUE_BY_NUMBER.get(getattr(message, name))
        if value is None or value not in spec.values:
            return None
        values[spec.field] = value
    return Settings(values)


def settings_to_neonize(settings: Settings) -> bytes:
    """A serialized neonize ``PrivacySettings`` (fields not in ``settings`` UNDEFINED)."""
    message = npb.PrivacySettings()
    for spec, name in _NAMES:
        value = settings.get(spec.field)
        setattr(message, name, UNDEFINED if value is None else _NUMBERS[value])
    return message.SerializeToString()


def parse_set_reply(reply: bytes) -> Settings:
    """The settings after a ``SetPrivacySetting``; raises ``SessionError`` with its error."""
    message = npb.SetPrivacySettingReturnFunction.FromString(reply)
    if message.Error:
        raise session_error(message.Error)
    settings = settings_from_neonize(message.settings)
    if settings is None:
        raise SessionError("WhatsApp answered without the settings")
    return settings


def parse_settings(reply: bytes) -> Settings | None:
    """The settings of a ``GetPrivacySettings`` reply, or None when they are unknown."""
    return settings_from_neonize(npb.PrivacySettings.FromString(reply))


def changed_fields(event: bytes) -> frozenset[Field]:
    """The fields a ``PrivacySettingsEv`` says changed (its ``NewSettings`` is never filled)."""
    message = npb.privacySettingsEvent.FromString(event)
    return frozenset(
        spec.field for spec in FIELDS if getattr(message, f"{neonize_field(spec.field)}Changed")
    )


def session_error(reason: str) -> SessionError:
    lost = any(marker in reason for marker in NOT_CONNECTED_ERRORS)
    return SessionError(reason, connection_lost=lost)
