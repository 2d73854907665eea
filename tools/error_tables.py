"""Writes the error catalogue (``service/errors.py``) into the README's error table and the proto
comments' tables, so that each lists exactly the catalogue (``tests/gateway`` checks they do).

Run from the repository's root after changing the catalogue: ``python -m tools.error_tables``
(``--check`` only reports whether they are current). The proto comments reach the generated
type stubs, so ``service/proto`` is regenerated after them (``tools/protogen.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from service import errors
from tools import protogen

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROTOS = ROOT / "protos" / "wagateway" / "privacy" / "v1"
MARKER = "<!-- error-catalogue:"
_EDGE_WORDS = {errors.Edge.BOTH: "both", errors.Edge.GRPC: "gRPC", errors.Edge.REST: "REST"}
_PAIRING = ("PAIRING", "PHONE", "ALREADY_PAIRED", "NOT_PAIRABLE", "INVALID_PHONE")


def readme_table() -> list[str]:
    rows = [
        "| reason | gRPC status | HTTP | where | message | when |",
        "|---|---|---|---|---|---|",
    ]
    for r in errors.CATALOGUE.values():
        message = r.message.replace("{", "<").replace("}", ">")
        quoted = f"`` {message} ``" if "`" in message else f"`{message}`"
        rows.append(
            f"| `{r.name}` | `{r.code.value}` | {r.http_status} | {_EDGE_WORDS[r.edges]} "
            f"| {quoted} | {r.when} |"
        )
    return rows


def proto_table(reasons: list[errors.Reason], indent: str) -> list[str]:
    name = max(len(r.name) for r in reasons)
    code = max(len(r.code.value) for r in reasons)
    lines = [
        f"{indent}// | {'status'.ljust(code)} | {'reason'.ljust(name)} | when",
        f"{indent}// |{'-' * (code + 2)}|{'-' * (name + 2)}|------",
    ]
    lines += [
        f"{indent}// | {r.code.value.ljust(code)} | {r.name.ljust(name)} | {r.when}"
        for r in reasons
    ]
    return lines


def _replace_table(lines: list[str], start: int, table: list[str], prefix: str) -> list[str]:
    end = start
    while end < len(lines) and lines[end].lstrip().startswith(prefix):
        end += 1
    return lines[:start] + table + lines[end:]


def updated() -> dict[Path, str]:
    """Each file's text with its table as the catalogue has it."""
    grpc = [r for r in errors.CATALOGUE.values() if r.edges & errors.Edge.GRPC]
    pairing = [r for r in grpc if r.name.startswith(_PAIRING)]
    privacy = [r for r in grpc if r not in pairing]
    texts: dict[Path, str] = {}
    lines = README.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER)) + 1
    texts[README] = "\n".join(_replace_table(lines, start, readme_table(), "|"))
    for proto, reasons in (
        (PROTOS / "privacy_service.proto", privacy),
        (PROTOS / "instance_service.proto", pairing),
    ):
        lines = proto.read_text().split("\n")
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("// | status"))
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        texts[proto] = "\n".join(_replace_table(lines, start, proto_table(reasons, indent), "// |"))
    return texts


def main(argv: list[str]) -> int:
    stale = [path for path, text in updated().items() if path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: the error table is not the catalogue's")
        return 1 if stale else 0
    for path, text in updated().items():
        path.write_text(text)
    return protogen.main([]) if stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
