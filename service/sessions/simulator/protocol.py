"""The wire between a ``SimulatorSession`` and the ``SimulatorServer``: one JSON object a line.

A plain, line-delimited format keeps the simulator readable from a terminal (``nc``) and cheap
to parse; nothing here needs WhatsApp's binary XMPP. What it must keep is the shape of the
conversation a whatsmeow client has with WhatsApp:

- the client opens with ``{"type": "hello", "account": ..., "client": ..., "settings": {...}}``
  (``settings``: the account's initial values, used only if the simulator does not know the
  account yet) and is answered ``{"type": "connected"}`` or ``{"type": "refused", "reason": ...}``;
- a stanza is ``{"type": "fetch", "id": n}`` or ``{"type": "set", "id": n, "field": ...,
  "value": ...}``, answered ``{"type": "result", "id": n, "settings": {...}}`` or
  ``{"type": "error", "id": n, "reason": "<whatsmeow's error string>"}``;
- the simulator pushes ``{"type": "notification", "field": ..., "value": ...}`` (the privacy
  settings notification a change on the phone causes) and ``{"type": "replaced"}`` (the stream
  error ``<conflict type="replaced"/>``) before closing a connection another one took over;
- a connection that opens with ``{"type": "control", "op": ...}`` instead of a hello drives the
  simulator as a test does in-process (``control.SimulatorControl``), one request, one answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from service.settings import Field, Settings

#: A line longer than this is not the simulator's protocol: the connection is closed.
MAX_LINE = 1024 * 1024


class ProtocolError(Exception):
    """A line that is not one of the protocol's messages."""


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("not an object with a type")
    return message


def settings_to_wire(settings: Mapping[Field, str]) -> dict[str, str]:
    return {field.value: value for field, value in settings.items()}


def settings_from_wire(raw: object) -> Settings:
    """``Settings`` from a message's ``settings``; ``ProtocolError`` for anything else."""
    if not isinstance(raw, dict):
        raise ProtocolError("settings must be an object")
    try:
        return Settings({Field(str(name)): str(value) for name, value in raw.items()})
    except ValueError as exc:
        raise ProtocolError(f"bad settings: {exc}") from None


def field_from_wire(raw: object) -> Field:
    try:
        return Field(str(raw))
    except ValueError:
        raise ProtocolError(f"unknown field {raw!r}") from None
