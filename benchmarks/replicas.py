"""6. Replicas: what a call costs when the replica it reaches must forward it to the owner.

Two ``privacy-gateway serve`` processes share one durable PostgreSQL (``database_url``): ``a``
starts first and takes every instance's lease; ``b`` serves none itself (its leases are long, so
it does not settle during the run) and forwards every call to ``a``. The client process drives
the same streamed seven-field updates (and reads) at ``a`` directly and at ``b``, in alternating
rounds, so the difference is the hop: one more process, one more gRPC call on loopback, and the
relay of each message.

Not in the default run (it starts a PostgreSQL server): ``python -m benchmarks --only replicas``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Row,
    gateway_command,
    server_process,
    take_turns,
    write_config,
)
from tools.postgres import PostgresServer

SECTION = "6 replicas"


@dataclass(frozen=True)
class Size:
    duration: float = 4.0
    warmup: float = 0.5
    concurrencies: tuple[int, ...] = (1, 16)
    rounds: int = 4


def run(size: Size, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    callers = max(size.concurrencies)
    instances = [{"name": f"bench-{i:02}", "latency_ms": 0} for i in range(callers)]
    server = PostgresServer(workdir / "replicas-postgres", durable=True).start()
    results: dict[str, Any] = {}
    try:
        url = server.new_database("replicas")
        configs = {
            name: write_config(
                workdir / f"replica-{name}.toml",
                workdir / f"replica-{name}-data",
                instances,
                database_url=url,
                replica_id=name,
                # Long leases: b must not settle and take instances during the run.
                lease_ttl_seconds=300.0,
                lease_renew_seconds=5.0,
            )
            for name in ("a", "b")
        }
        with (
            server_process(gateway_command(configs["a"])) as owner,
            server_process(gateway_command(configs["b"])) as forwarder,
        ):
            servers = {"direct": owner, "forwarded": forwarder}
            for mode in ("stream", "get"):
                for concurrency in size.concurrencies:
                    rounds = take_turns(
                        servers, mode, concurrency, rounds=size.rounds, warmup=size.warmup,
                        duration=size.duration / size.rounds,
                    )  # fmt: skip
                    for name, reports in rounds.items():
                        results[f"{mode}-c{concurrency}-{name}"] = {
                            key: statistics.median(r[key] for r in reports)
                            for key in ("rate", "p50_ms", "p99_ms")
                        }
    finally:
        server.destroy()
    return _rows(results, size), results


def _rows(results: dict[str, Any], size: Size) -> list[Row]:
    rows = []
    labels = {"stream": "StreamUpdatePrivacySettings", "get": "GetPrivacySettings"}
    for mode, rpc in labels.items():
        for concurrency in size.concurrencies:
            direct = results[f"{mode}-c{concurrency}-direct"]
            forwarded = results[f"{mode}-c{concurrency}-forwarded"]
            for stat, unit in (("p50_ms", "p50 ms"), ("rate", "calls/s")):
                rows.append(
                    Row(
                        SECTION,
                        f"{rpc} c={concurrency} {unit}, forwarded (reference: to the owner)",
                        f"{forwarded[stat]:,.2f}",
                        f"{direct[stat]:,.2f}",
                        f"{forwarded[stat] / direct[stat]:.2f}",
                    )
                )
    return rows
