"""Generates the Python code for the wire contract in ``protos/``: a development tool.

Run ``python tools/protogen.py`` (or ``python -m tools.protogen``) from a checkout after changing
a ``.proto`` file; ``--check`` exits non-zero when the committed code differs from what the
protos generate (the tests run it). It is no part of the installed package, which holds only
``service``; the code it generates, ``service/proto``, is.

protoc names Python modules after the proto package (``wagateway.privacy.v1``), which is not
importable from inside this package, so the generated imports are rewritten to live under
``service.proto``. The descriptors keep their proto names, which is what reflection serves.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "service" / "proto"
PACKAGE_PREFIX = "service.proto."
_IMPORT = re.compile(r"^(from|import) wagateway\.", re.MULTILINE)


def generate(out_root: Path) -> list[Path]:
    """Writes the generated modules below ``out_root`` and returns their paths."""
    from grpc_tools import protoc  # noqa: PLC0415 - a development dependency only

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    plugin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written: list[Path] = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dest = out_root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_rewrite_imports(src.read_text()))
            written.append(dest)
        for package_dir in {p.parent for p in written} | _parents(written, out_root):
            (package_dir / "__init__.py").touch()
        return written


def _rewrite_imports(text: str) -> str:
    """Only import statements move: method paths and descriptor names keep the proto names."""
    return _IMPORT.sub(lambda m: f"{m.group(1)} {PACKAGE_PREFIX}wagateway.", text)


def _parents(paths: list[Path], root: Path) -> set[Path]:
    parents: set[Path] = set()
    for path in paths:
        for parent in path.parents:
            if parent == root.parent:
                break
            parents.add(parent)
    return parents


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in {".py", ".pyi"}
    }


def is_current() -> bool:
    """True when the committed generated code equals what the protos generate now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "proto"
        fresh.mkdir()
        generate(fresh)
        return _snapshot(fresh) == _snapshot(OUT_ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/protogen.py", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the code is stale")
    args = parser.parse_args(argv)
    if args.check:
        if is_current():
            print("generated code is current")
            return 0
        print("generated code is stale: run `python tools/protogen.py`", file=sys.stderr)
        return 1
    if OUT_ROOT.exists():
        shutil.rmtree(OUT_ROOT)
    OUT_ROOT.mkdir(parents=True)
    for path in generate(OUT_ROOT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
