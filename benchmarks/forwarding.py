"""What forwarding costs: a streaming update called on the owner against the same update called on
a replica that forwards it to the owner.

``python -m benchmarks.forwarding [--calls N]``: two replicas in this one process
(``tests.helpers.in_process_replicas``: the real servers, admission and forwarders, on
loopback, routing by a fixed table), simulated sessions with zero latency, every update changing
all seven fields (so each is the full stream: the plan, each field's STARTED and APPLIED, the
snapshot). Calls go one at a time, direct and forwarded taking turns, so that drift in the
machine's speed weighs on both alike. The client, both replicas and both journals share one
event loop, so the forwarded figure also pays the forwarding replica's CPU on the same core: an
upper bound of the hop on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from service.grpc.convert import settings_to_proto
from service.sessions.simulated import DEFAULT_SETTINGS
from tests.helpers.harness import Harness
from tests.helpers.in_process_replicas import replicas
from tests.helpers.updates import EVERY_FIELD_CHANGED


async def _measure(calls: int, warmup: int) -> dict[str, list[float]]:
    targets = [settings_to_proto(EVERY_FIELD_CHANGED), settings_to_proto(DEFAULT_SETTINGS)]
    times: dict[str, list[float]] = {"direct": [], "forwarded": []}
    messages: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="privacy-gateway-forwarding-") as tmp:
        async with replicas(Path(tmp)) as started:
            # ``sales`` is ``a``'s: direct calls ``a``, forwarded calls ``b``. Each gets an
            # instance of its own, so that every update changes all seven fields.
            a, b = started["a"].harness, started["b"].harness
            a.gateway.ownership.owners["support"] = "a"  # type: ignore[union-attr]
            sides: list[tuple[str, Harness, str]] = [
                ("direct", a, "support"),
                ("forwarded", b, "sales"),
            ]
            for turn in range(warmup + calls):
                for name, harness, instance in sides if turn % 2 else reversed(sides):
                    started_at = time.perf_counter()
                    received = [m async for m in harness.stream(targets[turn % 2], instance)]
                    took = time.perf_counter() - started_at
                    messages.add(len(received))
                    if turn >= warmup:
                        times[name].append(took)
    times["messages"] = [float(m) for m in sorted(messages)]
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forwarding", description=__doc__)
    parser.add_argument("--calls", type=int, default=400, help="measured calls per side")
    parser.add_argument("--warmup", type=int, default=40, help="calls per side not measured")
    args = parser.parse_args(argv)
    times = asyncio.run(_measure(args.calls, args.warmup))
    command = shlex.join([sys.executable, "-m", "benchmarks.forwarding", *(argv or sys.argv[1:])])
    print(f"{int(times['messages'][0])} messages per streaming update, {args.calls} calls each")
    for name in ("direct", "forwarded"):
        values = sorted(times[name])
        p50 = statistics.median(values) * 1000
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))] * 1000
        print(f"{name:>9}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    overhead = statistics.median(times["forwarded"]) - statistics.median(times["direct"])
    print(f"forwarding adds {overhead * 1000:.2f} ms at p50")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
