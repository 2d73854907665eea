"""The REST contract's own examples and its 200 response, as data the tests replay."""

from __future__ import annotations

from typing import Any

from service.settings import FIELDS, Settings

#: The request bodies of the contract's four curl examples, verbatim.
EXAMPLES: dict[str, dict[str, Any]] = {
    "fully restrictive": {
        "visibility": {
            "lastSeen": "none",
            "status": "contacts",
            "profile": "contacts",
            "online": "match_last_seen",
        },
        "privacy": {"readReceipts": "none"},
        "permissions": {"callAdd": "known", "groupAdd": "contacts"},
    },
    "only groupAdd": {"permissions": {"groupAdd": "contacts"}},
    "disable read receipts": {"privacy": {"readReceipts": "none"}},
    "only lastSeen and online": {"visibility": {"lastSeen": "none", "online": "match_last_seen"}},
}

#: The `settings` of the contract's 200 response (the result of "fully restrictive").
FULLY_RESTRICTIVE_RESPONSE: dict[str, Any] = {
    "visibility": {
        "lastSeen": "none",
        "status": "contacts",
        "profile": "contacts",
        "online": "match_last_seen",
    },
    "privacy": {"readReceipts": "none"},
    "permissions": {"callAdd": "known", "groupAdd": "contacts"},
}


def settings_from_body(body: dict[str, Any]) -> Settings:
    """The fields a REST body sets, by the contract's names."""
    return Settings(
        {
            spec.field: body[spec.section][spec.rest_name]
            for spec in FIELDS
            if spec.rest_name in body.get(spec.section, {})
        }
    )
