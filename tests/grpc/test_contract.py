"""The generated code is what the protos generate now, and the contract is documented."""

from __future__ import annotations

import re
from pathlib import Path

from tools import protogen

PROTOS = sorted(protogen.PROTO_ROOT.rglob("*.proto"))


def test_generated_code_is_current() -> None:
    assert protogen.is_current(), "generated code is stale: run `python tools/protogen.py`"


def test_every_message_field_enum_and_value_is_documented() -> None:
    undocumented = []
    for path in PROTOS:
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            stripped = line.strip()
            declares = (
                re.match(r"(message|enum|service|rpc|oneof)\s+\w+", stripped)
                or re.match(r"(repeated\s+)?[\w.]+\s+\w+\s*=\s*\d+;", stripped)  # a field
                or re.match(r"[A-Z][A-Z0-9_]*\s*=\s*\d+;", stripped)  # an enum value
            )
            if declares and not lines[index - 1].strip().startswith("//"):
                undocumented.append(f"{path.name}:{index + 1}: {stripped}")
    assert undocumented == []


def test_protos_live_where_their_package_says() -> None:
    for path in PROTOS:
        package = re.search(r"^package ([\w.]+);", path.read_text(), re.MULTILINE)
        assert package is not None
        assert Path(*package.group(1).split(".")) == path.parent.relative_to(protogen.PROTO_ROOT)
