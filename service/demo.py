"""The embedded demo: what ``privacy-gateway serve`` runs without a configuration file.

One account and one instance, both ``demo``, on a simulated WhatsApp session whose stanzas take
a visible while, so that each field's progress can be watched. The demo stands in for the file
only: the environment and the command line apply to it as they do to a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.auth import hash_token, new_token

DEMO_INSTANCE = "demo"
#: Each simulated stanza's round trip (``--demo-latency-ms``).
DEMO_LATENCY_MS = 400


@dataclass(frozen=True)
class Demo:
    #: What stands in for the configuration file, as a parsed file would read.
    contents: dict[str, Any]
    #: The token the demo account accepts (printed at start).
    token: str


def demo(token: str | None = None, latency_ms: int | None = None) -> Demo:
    """The demo with ``token`` (a fresh one if none) and ``latency_ms`` per stanza."""
    token = token or new_token()
    latency = DEMO_LATENCY_MS if latency_ms is None else latency_ms
    contents = {
        "accounts": [{"name": DEMO_INSTANCE, "token_sha256": hash_token(token)}],
        "instances": [{"name": DEMO_INSTANCE, "account": DEMO_INSTANCE, "latency_ms": latency}],
    }
    return Demo(contents, token)
