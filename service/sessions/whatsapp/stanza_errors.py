"""What whatsmeow's error strings mean for a stanza: never sent, refused, or answer lost.

The strings are whatsmeow's own (tulir/whatsmeow at 33cfac51, the closest public commit to the
one neonize 0.5.2 embeds):
- errors.go:19 ``client is nil``, errors.go:22 ``websocket not connected``, errors.go:23 ``the
  store doesn't contain a device JID``: nothing was sent.
- errors.go:21 ``info query timed out`` (request.go:150, 180-181: after 75 s), and errors.go:250,
  258-260 ``websocket disconnected before info query returned response`` (request.go:199-202,
  after waiting 5 s for a reconnect; ``... info query (retry) returned response`` when the one
  resend dropped too, request.go:230-233): the stanza went out and its answer was lost, so
  WhatsApp may have applied it.
- errors.go:214-225 ``info query returned status %d: %s``: WhatsApp answered with an error code
  (errors.go:186-198: 400 bad-request ... 429 rate-overlimit, 500 internal-server-error, 503
  service-unavailable): not applied.
"""

from __future__ import annotations

import re

from service.sessions.base import SessionError, StanzaFate

NOT_SENT_ERRORS = (
    "client is nil",
    "websocket not connected",
    "the store doesn't contain a device JID",
)
LOST_ANSWER_ERRORS = (
    "info query timed out",
    "websocket disconnected before info query",
)
_STATUS = re.compile(r"info query returned status (\d{3}): ")
#: How long to wait before retrying after WhatsApp's rate limit (429 rate-overlimit); WhatsApp
#: gives no figure, so a minute, as its own clients back off.
RATE_LIMIT_RETRY_SECONDS = 60.0


def stanza_error(reason: str) -> SessionError:
    """The ``SessionError`` a whatsmeow error string stands for."""
    if any(marker in reason for marker in NOT_SENT_ERRORS):
        return SessionError(reason, fate=StanzaFate.NOT_SENT)
    if any(marker in reason for marker in LOST_ANSWER_ERRORS):
        return SessionError(reason, fate=StanzaFate.UNCONFIRMED)
    match = _STATUS.search(reason)
    status = int(match.group(1)) if match else None
    retry = RATE_LIMIT_RETRY_SECONDS if status == 429 else None
    return SessionError(reason, fate=StanzaFate.REFUSED, status=status, retry_after=retry)
