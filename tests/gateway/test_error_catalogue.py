"""The error catalogue is the one list of what a caller can be told, and every document agrees.

``service/errors.py`` defines each reason once (its gRPC code, HTTP status and message). The
README's error table, the proto comments and the OpenAPI document each list exactly the reasons
their reader can meet, and nothing in the service builds an error except through the catalogue.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from service import errors
from service.http.openapi import openapi_document

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PROTOS = ROOT / "protos" / "wagateway" / "privacy" / "v1"
REASON = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\b[A-Z]{4,}\b")
_EDGES = {"both": errors.Edge.BOTH, "gRPC": errors.Edge.GRPC, "REST": errors.Edge.REST}


def _readme_rows() -> dict[str, list[str]]:
    text = README.read_text()
    start = text.index("<!-- error-catalogue:")
    rows: dict[str, list[str]] = {}
    for line in text[start:].splitlines()[3:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        name = cells[0].strip("`")
        assert name not in rows, f"{name} twice in the README's table"
        rows[name] = cells
    return rows


def _proto_table_reasons() -> set[str]:
    """The reasons in the proto files' comment tables (``// | CODE | REASON | when``)."""
    found: set[str] = set()
    for proto in PROTOS.glob("*.proto"):
        for line in proto.read_text().splitlines():
            cells = [c.strip() for c in line.strip().removeprefix("//").strip().split("|")]
            if len(cells) >= 4 and cells[1] in errors.Code.__members__:
                found.add(cells[2])
    return found


def test_the_readme_lists_exactly_the_catalogue_with_its_codes_statuses_and_messages() -> None:
    rows = _readme_rows()

    assert set(rows) == set(errors.CATALOGUE)
    for name, (_, code, status, edges, message, when) in rows.items():
        entry = errors.CATALOGUE[name]
        assert code.strip("`") == entry.code.value, name
        assert int(status) == entry.http_status, name
        assert _EDGES[edges] is entry.edges, name
        shown = entry.message.replace("{", "<").replace("}", ">")
        assert message.strip("` ") == shown, name
        assert when == entry.when, name


def test_the_proto_comments_list_exactly_the_reasons_a_grpc_caller_can_meet() -> None:
    grpc_reasons = {r.name for r in errors.CATALOGUE.values() if r.edges & errors.Edge.GRPC}

    assert _proto_table_reasons() == grpc_reasons


def test_the_openapi_document_lists_exactly_the_reasons_a_rest_caller_can_meet() -> None:
    document = openapi_document()
    rest_reasons = {r.name for r in errors.CATALOGUE.values() if r.edges & errors.Edge.REST}
    schema = document["components"]["schemas"]["Error"]["properties"]["error"]

    assert set(schema["properties"]["reason"]["enum"]) == rest_reasons
    # Each documented error status names the reasons that answer with it, and only those.
    for path in document["paths"].values():
        for method in path.values():
            if not isinstance(method, dict) or "responses" not in method:
                continue
            for status, response in method["responses"].items():
                if int(status) < 400:
                    continue
                named = set(
                    re.findall(r"`([A-Z_]+)`", response["description"].split("Reasons:")[1])
                )
                expected = {
                    r.name for r in errors.CATALOGUE.values() if r.http_status == int(status)
                }
                assert named == expected & rest_reasons, (status, named)


def test_every_reason_is_named_once_and_its_status_is_an_error() -> None:
    for name, entry in errors.CATALOGUE.items():
        assert entry.name == name
        assert REASON.fullmatch(name), name
        assert 400 <= entry.http_status < 600, name
        assert entry.when, name


def test_nothing_in_the_service_builds_an_error_but_the_catalogue() -> None:
    """No ``GatewayError(...)`` or ``UpdateFailed(...)`` call outside ``service/errors.py``."""
    builders = {"GatewayError", "UpdateFailed"}
    offenders = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        if (path.name == "errors.py" and path.parent.name == "service") or "proto" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = node.func
                name = (
                    called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
                )
                if name in builders:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")

    assert offenders == []


def test_every_reason_in_the_catalogue_is_raised_somewhere() -> None:
    """A reason nothing can produce would be documentation of nothing: each entry is named by
    the code that raises it (``errors.NAME`` elsewhere, or a bare name in ``errors``' own
    functions, as the journal's fallback ``INTERRUPTED``)."""
    reasons = {name for name, value in vars(errors).items() if isinstance(value, errors.Reason)}
    named = set()
    for path in (ROOT / "service").rglob("*.py"):
        if "proto" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "errors"
                and node.attr in reasons
            ):
                named.add(node.attr)
        if path == ROOT / "service" / "errors.py":
            for function in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
                named |= {n.id for n in ast.walk(function) if isinstance(n, ast.Name)} & reasons

    assert set(errors.CATALOGUE) - named == set()


def test_the_tables_are_what_the_generator_writes() -> None:
    """``python -m tools.error_tables`` after a catalogue change keeps every table current."""
    from tools import error_tables

    stale = [p for p, text in error_tables.updated().items() if p.read_text() != text]

    assert stale == [], "run: python -m tools.error_tables"
