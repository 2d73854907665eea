"""1. Overhead: the gateway against a bare grpc.aio server sending the same messages.

The gateway runs as ``privacy-gateway serve --config F`` (simulated sessions with zero latency,
no rate limit, the operation journal in a temporary directory: every update is journaled, as in
production); the bare server (``benchmarks.bare_server``) runs as a process of its own and answers
with the messages the gateway itself sent for a seven-field update. A client process
(``benchmarks.client``) drives each in a closed loop at each concurrency, caller ``i`` on
instance ``bench-i``, every update changing all seven fields. Both servers' CPU time is read from
/proc around each run. The servers take turns in rounds, and each figure is the median of its
rounds, so that drift in the machine's speed during a run weighs on both alike.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    TOKEN,
    Row,
    gateway_command,
    module_command,
    run_client,
    server_process,
    take_turns,
    write_config,
)

SECTION = "1 overhead"
#: Targets: throughput at concurrency 16, p50 at concurrency 1 (gateway / bare).
MIN_THROUGHPUT_RATIO = 0.6
MAX_P50_RATIO = 1.5


@dataclass(frozen=True)
class Size:
    #: Seconds measured per server and case, split over ``rounds``.
    duration: float = 6.0
    warmup: float = 0.5
    concurrencies: tuple[int, ...] = (1, 16)
    #: The two servers take turns (gateway, bare, then bare, gateway...), so that a machine
    #: whose speed drifts during the run does not favour whichever went first.
    rounds: int = 4


def run(size: Size, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    """Measures both servers; the table's rows and the raw reports."""
    callers = max(size.concurrencies)
    instances = [{"name": f"bench-{i:02}", "latency_ms": 0} for i in range(callers)]
    instances.append({"name": "capture", "latency_ms": 0})
    config = write_config(workdir / "overhead.toml", workdir / "overhead-data", instances)
    results: dict[str, Any] = {}
    with server_process(gateway_command(config)) as gateway:
        captured = run_client(
            {"mode": "capture", "address": gateway.address, "token": TOKEN, "instance": "capture"}
        )
        capture_file = workdir / "capture.json"
        capture_file.write_text(json.dumps(captured))
        results["messages"] = {
            "stream_messages": len(captured["stream_sizes"]),
            "stream_bytes": captured["stream_bytes"],
            "stream_sizes": captured["stream_sizes"],
            "get_bytes": captured["get_bytes"],
        }
        bare_command = module_command("benchmarks.bare_server", str(capture_file))
        with server_process(bare_command) as bare:
            servers = {"gateway": gateway, "bare": bare}
            for mode in ("stream", "get"):
                for concurrency in size.concurrencies:
                    rounds = take_turns(
                        servers, mode, concurrency, rounds=size.rounds, warmup=size.warmup,
                        duration=size.duration / size.rounds,
                    )  # fmt: skip
                    for name, reports in rounds.items():
                        results[f"{mode}-c{concurrency}-{name}"] = _median_report(reports)
    return _rows(results, size), results


def _median_report(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, and the rounds themselves."""
    figures = ("rate", "p50_ms", "p99_ms", "server_cpu_ms_per_call", "client_cpu_ms_per_call")
    merged: dict[str, Any] = {
        key: statistics.median(r[key] for r in reports) for key in figures if key in reports[0]
    }
    merged["calls"] = sum(r["calls"] for r in reports)
    merged["rounds"] = reports
    return merged


def _rows(results: dict[str, Any], size: Size) -> list[Row]:
    rows: list[Row] = []
    low, high = min(size.concurrencies), max(size.concurrencies)
    labels = {
        "stream": ("StreamUpdatePrivacySettings", "updates/s"),
        "get": ("GetPrivacySettings", "calls/s"),
    }
    for mode, (rpc, unit) in labels.items():
        for concurrency in size.concurrencies:
            gateway = results[f"{mode}-c{concurrency}-gateway"]
            bare = results[f"{mode}-c{concurrency}-bare"]
            prefix = f"{rpc} c={concurrency}"
            target = ""
            met = ""
            ratio = gateway["rate"] / bare["rate"]
            if mode == "stream" and concurrency == high:
                target, met = f">= {MIN_THROUGHPUT_RATIO}", _yes(ratio >= MIN_THROUGHPUT_RATIO)
            rows.append(
                Row(
                    SECTION,
                    f"{prefix} {unit}",
                    f"{gateway['rate']:,.0f}",
                    f"{bare['rate']:,.0f}",
                    f"{ratio:.2f}",
                    target,
                    met,
                )
            )
            for stat in ("p50", "p99"):
                ratio = gateway[f"{stat}_ms"] / bare[f"{stat}_ms"]
                target, met = "", ""
                if mode == "stream" and stat == "p50" and concurrency == low:
                    target, met = f"<= {MAX_P50_RATIO}", _yes(ratio <= MAX_P50_RATIO)
                rows.append(
                    Row(
                        SECTION,
                        f"{prefix} {stat} ms",
                        f"{gateway[f'{stat}_ms']:.2f}",
                        f"{bare[f'{stat}_ms']:.2f}",
                        f"{ratio:.2f}",
                        target,
                        met,
                    )
                )
            if mode == "stream":
                cpu_g, cpu_b = (r["server_cpu_ms_per_call"] for r in (gateway, bare))
                rows.append(
                    Row(
                        SECTION,
                        f"{prefix} server CPU ms/update",
                        f"{cpu_g:.2f}",
                        f"{cpu_b:.2f}",
                        f"{cpu_g / cpu_b:.1f}",
                    )
                )
    return rows


def _yes(met: bool) -> str:
    return "yes" if met else "NO"
