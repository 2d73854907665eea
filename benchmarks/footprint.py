"""4. Footprint: the gateway's resident memory with 1, 100 and 1,000 configured instances.

Each size is ``privacy-gateway serve --config F`` of its own (simulated instances, gRPC and REST
on loopback port 0, data in a temporary directory); once it prints its listening line, its
``VmRSS`` is read from /proc/<pid>/status. What one more instance costs is
(RSS(N) - RSS(1)) / (N - 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Row, gateway_command, server_process, write_config

SECTION = "4 footprint"
#: Target: what one configured instance adds, in KB (1 KB = 1000 bytes).
MAX_KB_PER_INSTANCE = 100
#: How long the gateway is left to settle after its listening line before RSS is read.
SETTLE_SECONDS = 0.5


@dataclass(frozen=True)
class Size:
    counts: tuple[int, ...] = (1, 100, 1000)


def run(size: Size, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    """Each size on a gateway process of its own; the table's rows and the raw figures (KiB)."""
    rss: dict[int, int] = {}
    for count in size.counts:
        instances = [{"name": f"sim-{i:04}", "latency_ms": 0} for i in range(count)]
        config = write_config(
            workdir / f"footprint-{count}.toml", workdir / f"footprint-{count}", instances
        )
        with server_process(gateway_command(config)) as gateway:
            time.sleep(SETTLE_SECONDS)
            rss[count] = gateway.rss_kib()
    return _rows(rss, size), {"rss_kib": {str(k): v for k, v in rss.items()}}


def per_instance_kb(rss_kib: dict[int, int], count: int, base: int) -> float:
    """(RSS(count) - RSS(base)) / (count - base), in KB."""
    return (rss_kib[count] - rss_kib[base]) * 1.024 / (count - base)


def _rows(rss: dict[int, int], size: Size) -> list[Row]:
    base = size.counts[0]
    rows: list[Row] = []
    for count in size.counts:
        mb = rss[count] * 1.024 / 1000
        rows.append(Row(SECTION, f"RSS with {count} instance(s), MB", f"{mb:.1f}"))
    for count in size.counts[1:]:
        kb = per_instance_kb(rss, count, base)
        last = count == size.counts[-1]
        rows.append(
            Row(
                SECTION,
                f"per instance, KB: (RSS({count}) - RSS({base})) / {count - base}",
                f"{kb:.1f}",
                "",
                "",
                f"< {MAX_KB_PER_INSTANCE}" if last else "",
                ("yes" if kb < MAX_KB_PER_INSTANCE else "NO") if last else "",
            )
        )
    return rows
