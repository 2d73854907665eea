"""The benchmark suite (``python -m benchmarks``) runs end to end at its smoke size.

Not a timed test: the timings a quick run prints mean nothing at this size and are not checked.
What is checked is that every part still runs, that the table and the command that reproduces it
are printed, and the one exact figure: an update sends exactly one stanza per field that changes.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks import journal, replicas, stanzas
from benchmarks.__main__ import render
from benchmarks.common import Row, machine
from tests.helpers.seed import EXAMPLES

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("1 overhead", "2 stanzas", "3 scaling", "4 footprint")


@pytest.mark.timeout(120)
def test_quick_run_prints_the_table_and_its_command(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    args = ["--quick", "--json", str(results)]

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert table[0].split()[:2] == ["benchmark", "case"]
    for section in SECTIONS:
        assert any(line.startswith(section) for line in table), section
    assert f"command: {shlex.join([sys.executable, '-m', 'benchmarks', *args])}" in table
    raw = json.loads(results.read_text())
    assert raw["quick"] is True
    # The plan, STARTED and APPLIED for each of the seven fields, the snapshot.
    assert raw["overhead"]["messages"]["stream_messages"] == 16
    assert raw["scaling"]["1"]["walls"]
    assert set(raw["footprint"]["rss_kib"]) == {"1", "20"}


@pytest.mark.timeout(120)
def test_each_update_costs_exactly_the_fields_that_change(tmp_path: Path) -> None:
    rows, cases = stanzas.run(tmp_path)

    assert {c["case"] for c in cases} >= {f"seed '{name}'" for name in EXAMPLES}
    for case in cases:
        # A session's first use also fetches the settings once (whatsmeow's cache).
        assert case["stanzas"] == case["changes"] + (1 if case["cold"] else 0), case
        assert case["planned"] == case["changes"], case
        assert case["seed"] == case["sent"] + 1
    by_name = {c["case"]: c for c in cases if not c["cold"]}
    assert by_name["identical repeat"]["stanzas"] == 0
    assert by_name["one field sent, it changes"]["stanzas"] == 1
    seven = by_name["all seven sent, one changes"]
    assert (seven["sent"], seven["changes"], seven["stanzas"]) == (7, 1, 1)
    assert [r.met for r in rows] == ["yes"] * len(rows)


def test_markdown_table_carries_the_machine_and_the_command() -> None:
    rows = [Row("2 stanzas", "identical repeat (7 sent, 0 change)", "0", "8 (seed)", "0.00")]

    text = render(rows, machine(), "python -m benchmarks --markdown", 1.0, markdown=True)

    lines = text.splitlines()
    assert lines[0] == "| benchmark | case | gateway | reference | ratio | target | met |"
    assert lines[2] == (
        "| 2 stanzas | identical repeat (7 sent, 0 change) | 0 | 8 (seed) | 0.00 |  |  |"
    )
    assert lines[-1] == "command: `python -m benchmarks --markdown`"
    assert any(line.startswith("machine: ") for line in lines)


@pytest.mark.timeout(120)
def test_the_journal_part_times_both_stores() -> None:
    # Not under tmp_path: the PostgreSQL server's user must reach its directory
    # (tests/helpers/postgres.py, ``running_server``).
    with tempfile.TemporaryDirectory(prefix="gateway-bench-journal-") as workdir:
        rows, raw = journal.run(journal.Size(updates=5, warmup=1), Path(workdir))

    assert [r.case for r in rows] == [
        f"commit p50 / p99, {name}"
        for name in ("sqlite", "sqlite fsync", "postgres", "postgres fsync")
    ]
    assert all(figures["writes"] == 5 * 7 for figures in raw.values())


@pytest.mark.timeout(120)
def test_the_replicas_part_compares_a_forwarded_call_with_a_direct_one() -> None:
    with tempfile.TemporaryDirectory(prefix="gateway-bench-replicas-") as workdir:
        size = replicas.Size(duration=0.4, warmup=0.1, concurrencies=(1,), rounds=2)
        rows, raw = replicas.run(size, Path(workdir))

    assert [r.case.split(",")[0] for r in rows] == [
        "StreamUpdatePrivacySettings c=1 p50 ms",
        "StreamUpdatePrivacySettings c=1 calls/s",
        "GetPrivacySettings c=1 p50 ms",
        "GetPrivacySettings c=1 calls/s",
    ]
    assert all(figures["rate"] > 0 for figures in raw.values())
    assert set(raw) == {f"{m}-c1-{w}" for m in ("stream", "get") for w in ("direct", "forwarded")}
