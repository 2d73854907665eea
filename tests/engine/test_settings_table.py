"""The field table agrees with the wire contract and with whatsmeow."""

from __future__ import annotations

import pytest

from service.grpc import convert
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.settings import FIELDS, Field, Settings

#: whatsmeow's types.PrivacySettingType constants (types/user.go), copied independently.
WHATSMEOW_CATEGORIES = {
    "last_seen": "last",
    "status": "status",
    "profile": "profile",
    "online": "online",
    "read_receipts": "readreceipts",
    "call_add": "calladd",
    "group_add": "groupadd",
}
#: whatsmeow's types.PrivacySetting constants used by these categories.
WHATSMEOW_VALUES = {"all", "contacts", "contact_blacklist", "none", "match_last_seen", "known"}

#: The REST contract's "Accepted values per field" table, verbatim.
SEED_VALUES = {
    "lastSeen": ("all", "contacts", "contact_blacklist", "none"),
    "status": ("all", "contacts", "contact_blacklist", "none"),
    "profile": ("all", "contacts", "contact_blacklist", "none"),
    "online": ("all", "match_last_seen"),
    "readReceipts": ("all", "none"),
    "callAdd": ("all", "known"),
    "groupAdd": ("all", "contacts", "contact_blacklist"),
}


def test_table_follows_the_seed_order_names_and_values() -> None:
    assert [(s.rest_name, s.values) for s in FIELDS] == list(SEED_VALUES.items())


def test_categories_and_values_are_whatsmeows() -> None:
    assert {s.proto_name: s.category for s in FIELDS} == WHATSMEOW_CATEGORIES
    assert {v for s in FIELDS for v in s.values} <= WHATSMEOW_VALUES


def test_privacy_field_enum_follows_the_table_order() -> None:
    names = [v.name for v in spb.PrivacyField.DESCRIPTOR.values if v.number]
    assert names == [f"PRIVACY_FIELD_{s.field.name}" for s in FIELDS]
    assert [spb.PrivacyField.Value(n) for n in names] == list(range(1, len(FIELDS) + 1))


@pytest.mark.parametrize("spec", FIELDS, ids=lambda s: s.proto_name)
def test_proto_field_uses_the_tables_enum(spec: object) -> None:
    from service.settings import FieldSpec

    assert isinstance(spec, FieldSpec)
    section = spb.PrivacySettings.DESCRIPTOR.fields_by_name[spec.section].message_type
    proto_field = section.fields_by_name[spec.proto_name]
    assert proto_field.enum_type.name == spec.proto_enum
    values = [v.name for v in proto_field.enum_type.values]
    prefix = convert.enum_prefix(spec.proto_enum)
    assert values == [f"{prefix}UNSPECIFIED", *(prefix + v.upper() for v in spec.values)]


def test_every_value_survives_the_wire() -> None:
    for spec in FIELDS:
        for value in spec.values:
            settings = Settings({spec.field: value})
            assert convert.settings_from_proto(convert.settings_to_proto(settings)) == settings
            message = convert.field_value(spec.field, value)
            assert convert.value_from_proto(spec.field, message) == value


def test_settings_refuse_a_value_outside_the_fields_set() -> None:
    with pytest.raises(ValueError, match="not a value of online"):
        Settings({Field.ONLINE: "contacts"})
