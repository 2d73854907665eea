"""``python -m benchmarks``: runs the four benchmarks and prints one table and its command.

Two more run only when named, since they start a PostgreSQL server: ``--only journal``, the
journal's commit cost on PostgreSQL against SQLite (``benchmarks/journal.py``), and ``--only
replicas``, a call forwarded by a replica against the same call to the owner
(``benchmarks/replicas.py``). ``--database postgres`` runs the gateways of every part with
``database_url`` on a PostgreSQL server of the run's own.

``--quick`` is the smoke size (seconds; the test suite runs it), ``--markdown`` prints the table
as Markdown (as ``docs/benchmarks.md`` keeps it), ``--json PATH`` also writes every raw figure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import common, footprint, journal, overhead, replicas, scaling, stanzas
from benchmarks.common import Row, machine
from tools.postgres import PostgresServer

SECTIONS = ("overhead", "stanzas", "scaling", "footprint")
#: Run only when asked for (``--only``): they start a PostgreSQL server.
OPTIONAL = ("journal", "replicas")
HEADERS = ("benchmark", "case", "gateway", "reference", "ratio", "target", "met")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(args_list)
    only = set(args.only or SECTIONS)
    host = machine()
    started = time.monotonic()
    rows: list[Row] = []
    raw: dict[str, Any] = {"machine": host, "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="privacy-gateway-bench-") as tmp:
        workdir = Path(tmp)
        database = None
        if args.database == "postgres":
            # Durable, as PostgreSQL's defaults are: a commit is flushed to the disk.
            database = PostgresServer(workdir / "postgres", durable=True).start()
            common.use_database(database.new_database)
            raw["database"] = "postgres"
        jobs: dict[str, Callable[[], tuple[list[Row], Any]]] = {
            "overhead": lambda: overhead.run(
                overhead.Size(duration=0.3, warmup=0.1, rounds=1)
                if args.quick
                else overhead.Size(),
                workdir,
            ),
            "stanzas": lambda: stanzas.run(workdir),
            "scaling": lambda: scaling.run(
                scaling.Size(counts=(1, 20), rounds=1) if args.quick else scaling.Size(),
                workdir,
            ),
            "footprint": lambda: footprint.run(
                footprint.Size(counts=(1, 20)) if args.quick else footprint.Size(), workdir
            ),
            "journal": lambda: journal.run(
                journal.Size(updates=20, warmup=2) if args.quick else journal.Size(), workdir
            ),
            "replicas": lambda: replicas.run(
                replicas.Size(duration=0.4, warmup=0.1, rounds=2)
                if args.quick
                else replicas.Size(),
                workdir,
            ),
        }
        for section in (*SECTIONS, *OPTIONAL):
            if section in only:
                print(f"running {section} ...", file=sys.stderr, flush=True)
                section_rows, section_raw = jobs[section]()
                rows += section_rows
                raw[section] = section_raw
        if database is not None:
            common.use_database(None)
            database.destroy()
            rows = [replace(r, section=f"{r.section} (PostgreSQL)") for r in rows]
    raw["seconds"] = time.monotonic() - started
    command = shlex.join([sys.executable, "-m", "benchmarks", *args_list])
    raw["command"] = command
    print(render(rows, host, command, raw["seconds"], markdown=args.markdown))
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of privacy-gateway: each server a process of its own on loopback.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke size: seconds, not minutes")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw figures")
    parser.add_argument(
        "--only",
        action="append",
        choices=(*SECTIONS, *OPTIONAL),
        help="run this part only (repeatable; journal runs only when named)",
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="where the gateways keep their journal: SQLite under data_dir (the default), or a "
        "PostgreSQL server started for the run (database_url, as replicas run)",
    )
    return parser


def render(
    rows: Sequence[Row], host: dict[str, str], command: str, seconds: float, *, markdown: bool
) -> str:
    """The table, the machine it ran on and the command that reproduces it."""
    cells = [HEADERS] + [
        (r.section, r.case, r.measured, r.baseline, r.ratio, r.target, r.met) for r in rows
    ]
    where = (
        f"machine: {host['cores']} cores, {host['cpu']}, Python {host['python']}, "
        f"{host['system']}, load before {host['load_before']}, {host['date']}; "
        f"took {seconds:.0f} s"
    )
    if markdown:
        lines = [_markdown_row(cells[0]), _markdown_row(tuple("---" for _ in HEADERS))]
        lines += [_markdown_row(c) for c in cells[1:]]
        return "\n".join([*lines, "", where, "", f"command: `{command}`"])
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(cells_row, widths, strict=True)).rstrip()
        for cells_row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, "", where, f"command: {command}"])


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


if __name__ == "__main__":
    raise SystemExit(main())
