"""The seven privacy fields: the one table everything else derives from.

The proto enums, the REST names and validation messages, the whatsmeow wire strings and the
order fields are applied in all come from ``FIELDS``; ``tests/test_settings_table.py`` checks the
proto contract against it. Values are kept as the wire strings WhatsApp itself uses
(``contact_blacklist``), which are also the REST contract's spelling, so no layer translates them
twice.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass


class Field(enum.Enum):
    """A privacy field, in canonical apply order (the REST contract's table order)."""

    LAST_SEEN = "last_seen"
    STATUS = "status"
    PROFILE = "profile"
    ONLINE = "online"
    READ_RECEIPTS = "read_receipts"
    CALL_ADD = "call_add"
    GROUP_ADD = "group_add"

    # Members are singletons compared by identity, so identity hashing is exact; Enum's own
    # ``__hash__`` is Python code, and fields key every dictionary on the hot path.
    __hash__ = object.__hash__

    @property
    def spec(self) -> FieldSpec:
        return _SPECS[self]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Everything the gateway knows about one field."""

    field: Field
    #: Subsection in both the proto and the REST body: visibility, privacy or permissions.
    section: str
    #: Name in the REST contract (camelCase).
    rest_name: str
    #: whatsmeow's ``PrivacySettingType``: the ``name`` attribute of the stanza's category.
    category: str
    #: Accepted values, as whatsmeow sends them and the REST contract spells them.
    values: tuple[str, ...]
    #: Name of the proto enum that carries the values.
    proto_enum: str

    @property
    def proto_name(self) -> str:
        return self.field.value

    @property
    def rest_path(self) -> str:
        return f"{self.section}.{self.rest_name}"

    @property
    def proto_path(self) -> str:
        return f"{self.section}.{self.proto_name}"


_VISIBILITY_VALUES = ("all", "contacts", "contact_blacklist", "none")

FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(Field.LAST_SEEN, "visibility", "lastSeen", "last", _VISIBILITY_VALUES, "VisibilityValue"),
    FieldSpec(Field.STATUS, "visibility", "status", "status", _VISIBILITY_VALUES, "VisibilityValue"),
    FieldSpec(Field.PROFILE, "visibility", "profile", "profile", _VISIBILITY_VALUES, "VisibilityValue"),
    FieldSpec(Field.ONLINE, "visibility", "online", "online", ("all", "match_last_seen"), "OnlineValue"),
    FieldSpec(Field.READ_RECEIPTS, "privacy", "readReceipts", "readreceipts", ("all", "none"), "ReadReceiptsValue"),
    FieldSpec(Field.CALL_ADD, "permissions", "callAdd", "calladd", ("all", "known"), "CallAddValue"),
    FieldSpec(Field.GROUP_ADD, "permissions", "groupAdd", "groupadd", ("all", "contacts", "contact_blacklist"), "GroupAddValue"),
)  # fmt: skip

_SPECS: dict[Field, FieldSpec] = {spec.field: spec for spec in FIELDS}
_ORDER: tuple[Field, ...] = tuple(Field)
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(spec.section for spec in FIELDS))

assert tuple(spec.field for spec in FIELDS) == tuple(Field), "FIELDS must follow Field's order"


def by_category(category: str) -> FieldSpec:
    """The field whose whatsmeow category is ``category``."""
    for spec in FIELDS:
        if spec.category == category:
            return spec
    raise KeyError(category)


class Settings(Mapping[Field, str]):
    """An immutable, ordered set of field values (a partial or a complete snapshot)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[Field, str] | None = None) -> None:
        given = dict(values or {})
        for field, value in given.items():
            if value not in _SPECS[field].values:
                raise ValueError(f"{value!r} is not a value of {field.value}")
        self._values = {f: given[f] for f in _ORDER if f in given}

    def __getitem__(self, field: Field) -> str:
        return self._values[field]

    def __iter__(self) -> Iterator[Field]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.value}={v}" for f, v in self._values.items())
        return f"Settings({inner})"

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    @property
    def complete(self) -> bool:
        """True when every field is known."""
        return len(self._values) == len(FIELDS)

    def with_value(self, field: Field, value: str) -> Settings:
        """A copy with one field set."""
        if value not in _SPECS[field].values:
            raise ValueError(f"{value!r} is not a value of {field.value}")
        copy = Settings.__new__(Settings)
        values = {**self._values, field: value}
        # Only a new field changes the order; the values are known valid.
        copy._values = (
            values if field in self._values else {f: values[f] for f in _ORDER if f in values}
        )
        return copy
