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

from service.sessions.whatsapp.stanza_errors import stanza_error
from service.settings import FIELDS, Field, Settings

UNDEFINED = npb.PrivacySettings.UNDEFINED


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


def settings_from_neonize(message: Any) -> Settings:
    """The fields a neonize ``PrivacySettings`` reports; a field it does not is left out.

    A field is unknown when it is UNDEFINED (whatsmeow answers an empty struct when it could not
    fetch the settings, privacysettings.go:47-58) or holds a value outside the field table:
    neonize encodes any value it does not map (``contact_allowlist``, ``on_standard``, ``off``)
    as 0, which Python reads as UNDEFINED (goneonize/utils/encoder.go:474-493), and it maps
    ``none`` for every field (489-490), also for groupadd, which whatsmeow's types/user.go:144
    allows but the gateway's table does not. One such field leaves the others known.
    """
    values: dict[Field, str] = {}
    for spec, name in _NAMES:
        value = _VALUE_BY_NUMBER.get(getattr(message, name))
        if value is not None and value in spec.values:
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
    """The settings after a ``SetPrivacySetting``; raises ``SessionError`` with its error.

    On success whatsmeow returns its cache with the one field patched (privacysettings.go:63-105),
    not a re-read; on an error, the zero struct (goneonize/main.go:1965-1974).
    """
    message = npb.SetPrivacySettingReturnFunction.FromString(reply)
    if message.Error:
        raise stanza_error(message.Error)
    return settings_from_neonize(message.settings)


def parse_settings(reply: bytes) -> Settings:
    """The fields a ``GetPrivacySettings`` reply reports (empty when nothing could be read)."""
    return settings_from_neonize(npb.PrivacySettings.FromString(reply))


def changed_fields(event: bytes) -> frozenset[Field]:
    """The fields a ``PrivacySettingsEv`` says changed (its ``NewSettings`` is never filled)."""
    message = npb.privacySettingsEvent.FromString(event)
    return frozenset(
        spec.field for spec in FIELDS if getattr(message, f"{neonize_field(spec.field)}Changed")
    )
