"""One PairInstance call's view of a pairing link: what it is told, and the error it ends with.

The link itself is the session's (``session``); a pairing is a queue of what the link reported,
read by one caller, and the mapping of each way it can end to the caller's error:
- whatsmeow's QR statuses (qrchan.go:43-55): ``timeout`` when all six codes expired unscanned
  (160 s), ``err-client-outdated``, ``err-unexpected-state`` (a Connected, ConnectFailure,
  LoggedOut or TemporaryBan during pairing, qrchan.go:181-182),
  ``err-scanned-without-multidevice``, and ``error`` (a failed pair handshake, whose text
  neonize drops: main.go:1150-1152 passes only the event name);
- a ``PairStatus`` error event (neonize's PairError, main.go:671-688);
- the ``PairPhone`` errors (whatsmeow pair-code.go:92-143, errors.go:22, 28-29, 214-225);
- a dial that fails (the link returns its error).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from service import errors
from service.errors import GatewayError, Reason
from service.sessions.base import PairEvent
from service.sessions.whatsapp.stanza_errors import stanza_error

#: QR statuses that end a pairing, and what the caller is told.
QR_ENDINGS: dict[str, tuple[Reason, str]] = {
    "timeout": (errors.PAIRING_TIMED_OUT, "no QR code was scanned in time"),
    "err-client-outdated": (
        errors.PAIRING_REFUSED,
        "WhatsApp refused this client version (client outdated): upgrade the gateway",
    ),
    "err-unexpected-state": (
        errors.PAIRING_UNAVAILABLE,
        "WhatsApp ended the pairing unexpectedly (err-unexpected-state); try again",
    ),
    "err-scanned-without-multidevice": (
        errors.PAIRING_REFUSED,
        "the QR code was scanned by a phone without multi-device support",
    ),
    "error": (errors.PAIRING_UNAVAILABLE, "the pairing handshake with WhatsApp failed; try again"),
}


@dataclass
class Pairing:
    """What one caller is told of a pairing in progress."""

    phone: str | None
    queue: asyncio.Queue[tuple[str, Any]]
    code_requested: bool = False

    @classmethod
    def new(cls, phone: str | None) -> Pairing:
        return cls(phone, asyncio.Queue())

    def tell(self, kind: str, data: Any = None) -> None:
        self.queue.put_nowait((kind, data))

    async def next_event(self) -> PairEvent | None:
        """The next event for the caller; None for a QR code a phone pairing does not show.
        Raises the pairing's error when it ended without a device."""
        kind, data = await self.queue.get()
        if kind == "qr":
            return None if self.phone else PairEvent(qr_code=data)
        if kind == "code":
            return PairEvent(pairing_code=data)
        if kind == "paired":
            return PairEvent(jid=data)
        if kind == "qr_status":
            unknown = (errors.PAIRING_UNAVAILABLE, f"pairing ended: {data}")
            reason, detail = QR_ENDINGS.get(data, unknown)
            raise reason.error(detail=detail)
        if kind == "pair_error":
            raise errors.PAIRING_UNAVAILABLE.error(detail=f"WhatsApp refused the pairing: {data}")
        if kind == "phone_error":
            raise phone_error(data)
        if kind == "already_paired":
            raise errors.ALREADY_PAIRED.error(jid=data)
        raise errors.PAIRING_UNAVAILABLE.error(detail=f"WhatsApp cannot be reached: {data}")


def phone_error(reason: str) -> GatewayError:
    """A ``PairPhone`` error as the caller's status: their number, the connection, or WhatsApp."""
    if "phone number too short" in reason or "international phone number" in reason:
        return errors.PHONE_REJECTED.error(detail=reason)
    error = stanza_error(reason)
    if error.status == 429:
        return errors.PAIRING_RATE_LIMITED.error(retry_after=error.retry_after, detail=reason)
    if error.connection_lost or error.unconfirmed or (error.status or 0) >= 500:
        return errors.PAIRING_UNAVAILABLE.error(detail=f"pairing by phone failed: {reason}")
    return errors.PAIRING_REFUSED.error(detail=f"pairing by phone failed: {reason}")
