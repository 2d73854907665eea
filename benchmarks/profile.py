"""Where the gateway's time goes under a benchmark's load: py-spy on the gateway process.

``python -m benchmarks.profile overhead`` profiles the gateway while the client streams
seven-field updates at concurrency 16 (part 1; ``--callers 1`` for concurrency 1);
``python -m benchmarks.profile scaling`` profiles the WhatsApp-kind gateway while 500 instances
update at once (part 3). Either starts the server
and the client as the benchmark does, waits until the client says it is measuring, then samples
the gateway with ``py-spy record`` (not a dependency of the suite: ``pip install py-spy``) and
prints which threads the samples fell in and the top frames of the busiest ones, with the CPU
cores the gateway used meanwhile.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import scaling
from benchmarks.common import (
    REPO,
    TOKEN,
    ServerProcess,
    gateway_command,
    module_command,
    server_process,
    write_config,
)

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


@dataclass
class ThreadProfile:
    """The samples that fell in one thread."""

    name: str
    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)


def summarise(raw: str) -> list[ThreadProfile]:
    """py-spy's ``--format raw --threads`` output, by thread, busiest first."""
    threads: dict[str, ThreadProfile] = defaultdict(lambda: ThreadProfile(""))
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        name = re.sub(r"^thread \(0?x?[0-9a-f]+\): ?", "", thread) or thread
        name = re.sub(r"_\d+$", "_N", name)  # pool threads (stanza_12) as one
        profile = threads[name]
        profile.name = name
        samples = int(count)
        profile.samples += samples
        names = [_frame(f) for f in frames] or ["(native)"]
        profile.own[names[-1]] += samples
        for frame in set(names):
            profile.inclusive[frame] += samples
    return sorted(threads.values(), key=lambda t: t.samples, reverse=True)


def _frame(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({Path(match['file']).name})"


def report(threads: Sequence[ThreadProfile], top: int, cores: float, seconds: float) -> str:
    total = sum(t.samples for t in threads) or 1
    lines = [f"gateway CPU: {cores:.2f} cores busy over {seconds:.1f} s; {total} samples"]
    for thread in threads[:3]:
        lines.append(f"\n{thread.name}: {100 * thread.samples / total:.1f}% of samples")
        lines.append("  own time (the frame itself):")
        lines += [
            f"    {100 * n / thread.samples:5.1f}%  {f}" for f, n in thread.own.most_common(top)
        ]
        lines.append("  inclusive (the frame and what it called):")
        common = thread.inclusive.most_common()
        # Leave out the entry chain every sample shares (the thread's run, the event loop's).
        outer = common[0][1] * 0.95 if common else 0
        below = [(f, n) for f, n in common if n < outer][:top]
        lines += [f"    {100 * n / thread.samples:5.1f}%  {f}" for f, n in below]
    return "\n".join(lines)


def profile(
    server: ServerProcess,
    client_spec: dict[str, Any],
    seconds: float,
    out: Path,
    *,
    gil: bool = False,
    native: bool = False,
) -> tuple[str, float]:
    """Runs the client, and py-spy on ``server`` for ``seconds`` once the client is measuring."""
    spy_binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy_binary).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    spec = {**client_spec, "announce": True, "server_pid": server.pid}
    client = subprocess.Popen(
        module_command("benchmarks.client", json.dumps(spec)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert client.stderr is not None
    for line in client.stderr:
        if line.strip() == "measuring":
            break
    started, cpu = time.monotonic(), server.cpu_seconds()
    command = [
        spy_binary,
        "record",
        "--pid",
        str(server.pid),
        "--duration",
        str(round(seconds)),
        "--rate",
        "100",
        "--format",
        "raw",
        "--threads",
        # Native unwinding must pause the process; Python frames alone need not.
        *([] if native else ["--nonblocking"]),
        "-o",
        str(out),
        *(["--gil"] if gil else []),
        *(["--native"] if native else []),
    ]
    subprocess.run(command, check=True, capture_output=True)
    cores = (server.cpu_seconds() - cpu) / (time.monotonic() - started)
    client.communicate()
    return out.read_text(), cores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("part", choices=("overhead", "scaling"))
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to sample")
    parser.add_argument("--top", type=int, default=12, help="frames listed per thread")
    parser.add_argument("--out", type=Path, help="keep py-spy's raw output here")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (what the interpreter is busy with)",
    )
    parser.add_argument(
        "--callers", type=int, default=16, help="overhead: concurrent callers (1 to 16)"
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="include C and Cython frames (grpc's core, protobuf's upb, SQLite)",
    )
    args = parser.parse_args(argv)
    options = {"gil": args.gil, "native": args.native}
    with tempfile.TemporaryDirectory(prefix="privacy-gateway-profile-") as tmp:
        workdir = Path(tmp)
        out = args.out or workdir / "profile.txt"
        if args.part == "overhead":
            callers = max(1, min(args.callers, 16))
            instances = [{"name": f"bench-{i:02}", "latency_ms": 0} for i in range(callers)]
            config = write_config(workdir / "g.toml", workdir / "data", instances)
            spec = {
                "mode": "stream",
                "token": TOKEN,
                "instances": [f"bench-{i:02}" for i in range(callers)],
                "concurrency": callers,
                "warmup": 1.0,
                "duration": args.seconds + 2,
            }
            with server_process(gateway_command(config)) as gateway:
                raw, cores = profile(
                    gateway, {**spec, "address": gateway.address}, args.seconds, out, **options
                )
        else:
            count = 500
            command = module_command("benchmarks.scaling", str(count), "0.05", str(workdir / "d"))
            rounds = int(args.seconds / 1.0) + 3
            spec = {
                "mode": "burst",
                "token": TOKEN,
                "instances": scaling.names(count),
                "rounds": rounds,
                "timeout": 60,
            }
            with server_process(command) as gateway:
                raw, cores = profile(
                    gateway, {**spec, "address": gateway.address}, args.seconds, out, **options
                )
    print(report(summarise(raw), args.top, cores, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
