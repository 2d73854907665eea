"""How sessions behave unless configured otherwise, stated once: the configuration's defaults
(``service.config``) are these, and so are the sessions' own when built without one (tests)."""

from __future__ import annotations

from typing import Final

#: The first delay between connection attempts, doubling up to the maximum.
RECONNECT_INITIAL_SECONDS: Final = 1.0
RECONNECT_MAX_SECONDS: Final = 60.0
#: How long the gateway waits for one stanza's answer before it calls the field unconfirmed.
STANZA_TIMEOUT_SECONDS: Final = 30.0
#: Which of whatsmeow's log lines are logged.
WHATSAPP_LOG_LEVEL: Final = "info"
