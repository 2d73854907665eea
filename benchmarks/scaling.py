"""3. Concurrency scaling: N WhatsApp instances updating all seven fields at once.

The gateway runs the WhatsApp session kind's own code path (``WhatsAppSession``: every stanza a
blocking call on the gateway's stanza threads, up to ``stanza_threads``, 1,024 by default) over
``StandInFFI``, which blocks the calling thread 50 ms per stanza as neonize's Go call does. It
cannot be started with ``privacy-gateway serve`` (the stand-in is not configurable there), so
``python -m benchmarks.scaling N LATENCY DATA_DIR [STANZA_THREADS]`` builds it with
``service.assembly.build_gateway(config, ffi=StandInFFI(...))``, every instance already paired, and
serves it as ``serve`` does, in a process of its own. A client process waits until all N are
connected, reads each once (whatsmeow's one fetch, outside the clock), then updates all N at
once, several rounds, each changing all seven fields; the median round's wall time is compared
with the single instance's.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ACCOUNT,
    LOOPBACK,
    TOKEN,
    Row,
    module_command,
    run_client,
    server_process,
)
from service.config import GatewayConfig

SECTION = "3 scaling"
#: Target: the largest N within this multiple of the single instance's wall time.
MAX_SLOWDOWN = 2.0
JID = "5511999999999@s.whatsapp.net"
#: The gateway's default ``stanza_threads``, which the benchmark keeps.
STANZA_THREADS: int = GatewayConfig.model_fields["stanza_threads"].default


@dataclass(frozen=True)
class Size:
    counts: tuple[int, ...] = (1, 50, 200, 500)
    latency: float = 0.05
    rounds: int = 5


def names(count: int) -> list[str]:
    return [f"wa-{index:04}" for index in range(count)]


def run(size: Size, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    """Each N on a gateway process of its own; the table's rows and the raw reports."""
    results: dict[str, Any] = {}
    for count in size.counts:
        data_dir = workdir / f"scaling-{count}"
        command = module_command("benchmarks.scaling", str(count), str(size.latency), str(data_dir))
        with server_process(command) as gateway:
            report = run_client(
                {
                    "mode": "burst",
                    "address": gateway.address,
                    "token": TOKEN,
                    "instances": names(count),
                    "rounds": size.rounds,
                    "timeout": 60,
                    "server_pid": gateway.pid,
                }
            )
        report["wall"] = statistics.median(report["walls"])
        results[str(count)] = report
    return _rows(results, size), results


def _rows(results: dict[str, Any], size: Size) -> list[Row]:
    single = results[str(size.counts[0])]["wall"]
    floor = 7 * size.latency
    rows: list[Row] = []
    for count in size.counts:
        wall = results[str(count)]["wall"]
        ratio = wall / single
        target, met = "", ""
        if count == max(size.counts) and count > 1:
            target = f"<= {MAX_SLOWDOWN:g}x"
            met = "yes" if ratio <= MAX_SLOWDOWN else "NO"
        rows.append(
            Row(
                SECTION,
                f"N={count}: wall s, 7 fields each, {size.latency * 1000:.0f} ms/stanza",
                f"{wall:.3f}",
                f"{single:.3f} (N=1)",
                f"{ratio:.2f}x",
                target,
                met,
            )
        )
    largest = max(size.counts)
    report = results[str(largest)]
    cores = report["server_cpu_ms_per_call"] * largest / (report["wall"] * 1000)
    rows.append(
        Row(
            SECTION,
            f"N={largest}: gateway CPU ms per update (CPU cores busy)",
            f"{report['server_cpu_ms_per_call']:.2f}",
            f"({cores:.2f} cores)",
        )
    )
    rows.append(Row(SECTION, "floor: 7 stanzas one after another", f"{floor:.3f}"))
    threads_floor = stanza_floor(largest, size.latency)
    rows.append(
        Row(
            SECTION,
            f"floor at N={largest}: {largest * 7} stanzas / {STANZA_THREADS} threads",
            f"{threads_floor:.3f}",
            "",
            f"{threads_floor / single:.2f}x",
        )
    )
    return rows


def stanza_floor(count: int, latency: float, threads: int = STANZA_THREADS) -> float:
    """The least wall time ``count`` seven-field updates can take on ``threads`` stanza threads."""
    return max(7, count * 7 / threads) * latency


async def serve(count: int, latency: float, data_dir: str, stanza_threads: int | None) -> None:
    """A gateway of ``count`` paired WhatsApp instances on the stand-in, until SIGTERM."""
    from service.assembly import build_gateway  # noqa: PLC0415 - only the server process needs these
    from service.auth import hash_token  # noqa: PLC0415
    from service.config import from_mapping  # noqa: PLC0415
    from service.runtime import Endpoints, serve_until_signalled  # noqa: PLC0415
    from service.sessions.whatsapp.standin import StandInFFI  # noqa: PLC0415

    raw: dict[str, Any] = {
        "rate_limit_per_minute": 0,
        "data_dir": data_dir,
        "accounts": [{"name": ACCOUNT, "token_sha256": hash_token(TOKEN)}],
        "instances": [{"name": n, "account": ACCOUNT, "session": "whatsapp"} for n in names(count)],
    }
    if stanza_threads is not None:
        raw["stanza_threads"] = stanza_threads
    config = from_mapping(raw, env={})
    # No overlap window: the stand-in's own sleeps would weigh on what is measured (the tests
    # keep it, and check the guard).
    ffi = StandInFFI(latency=latency, map_window=0.0)
    for name in names(count):
        ffi.link_account(name, JID)
    # Each device goes into the store the gateway will look into: <data_dir>/<name>.db.
    ffi.place(Path(config.data_dir))
    gateway = build_gateway(config, ffi=ffi)

    def ready(endpoints: Endpoints) -> None:
        print(f"scaling: gRPC listening on {LOOPBACK}:{endpoints.grpc_port}", flush=True)

    await serve_until_signalled(gateway, f"{LOOPBACK}:0", None, 1.0, ready)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    threads = int(args[3]) if len(args) > 3 else None
    asyncio.run(serve(int(args[0]), float(args[1]), args[2], threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
