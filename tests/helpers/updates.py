"""Updates the tests (and the benchmarks) replay, stated against a fresh account's settings.

Each is a change of every field it names, so every one of them costs a stanza; they live here
once so that a test's expectations and the data they were written for cannot drift apart.
"""

from __future__ import annotations

from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import FIELDS, Field, FieldSpec, Settings


def other_value(spec: FieldSpec) -> str:
    """A value of the field that differs from a fresh account's."""
    return next(v for v in spec.values if v != DEFAULT_SETTINGS[spec.field])


#: Every one of the seven fields changed.
EVERY_FIELD_CHANGED = Settings({spec.field: other_value(spec) for spec in FIELDS})

#: The first five fields changed, each to its most restrictive value.
FIVE_CHANGES = Settings(
    {
        Field.LAST_SEEN: "none",
        Field.STATUS: "none",
        Field.PROFILE: "none",
        Field.ONLINE: "match_last_seen",
        Field.READ_RECEIPTS: "none",
    }
)

assert all(
    DEFAULT_SETTINGS[f] != v for f, v in [*EVERY_FIELD_CHANGED.items(), *FIVE_CHANGES.items()]
)
