"""What the benchmarks share: the token, the values, configuration files and child processes."""

from __future__ import annotations

import json
import math
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.auth import hash_token
from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import Field
from tests.helpers.updates import EVERY_FIELD_CHANGED

REPO = Path(__file__).resolve().parents[1]
TOKEN = "benchmark-account-token"
ACCOUNT = "bench"
LOOPBACK = "127.0.0.1"
#: The two complete settings an update alternates between.
ALTERNATING: tuple[dict[Field, str], dict[Field, str]] = (
    dict(EVERY_FIELD_CHANGED),  # every field differs from a fresh account's
    dict(DEFAULT_SETTINGS),
)

_LISTENING = re.compile(r"gRPC listening on (?P<host>[^\s:]+):(?P<port>\d+)")


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    section: str
    case: str
    measured: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


#: Makes a fresh PostgreSQL database and returns its URL, when the benchmarks run with
#: ``--database postgres``: each gateway they start then keeps its journal, leases and rate
#: limit there (a database of its own, so that no lease of an earlier run is in its way).
_new_database: Callable[[], str] | None = None


def use_database(new_database: Callable[[], str] | None) -> None:
    global _new_database  # noqa: PLW0603 - one setting for the whole run, made by __main__
    _new_database = new_database


def write_config(
    path: Path,
    data_dir: Path,
    instances: Sequence[Mapping[str, Any]],
    **keys: Any,
) -> Path:
    """A gateway TOML file: loopback only, no rate limit, one account holding ``instances``."""
    values: dict[str, Any] = {
        "listen": f"{LOOPBACK}:0",
        "http_listen": f"{LOOPBACK}:0",
        "rate_limit_per_minute": 0,
        "data_dir": str(data_dir),
        "shutdown_grace_seconds": 1.0,
        **keys,
    }
    if _new_database is not None:
        values["database_url"] = _new_database()
    lines = [f"{key} = {_toml(value)}" for key, value in values.items()]
    lines += ["", "[[accounts]]", f'name = "{ACCOUNT}"', f'token_sha256 = "{hash_token(TOKEN)}"']
    for instance in instances:
        lines += ["", "[[instances]]"]
        lines += [
            f"{key} = {_toml(value)}" for key, value in {"account": ACCOUNT, **instance}.items()
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def gateway_command(config: Path) -> list[str]:
    """``privacy-gateway serve --config <config>``, with this interpreter's console script."""
    script = Path(sys.executable).with_name("privacy-gateway")
    if script.exists():
        return [str(script), "serve", "--config", str(config)]
    return [sys.executable, "-m", "service.cli.main", "serve", "--config", str(config)]


def module_command(module: str, *args: str) -> list[str]:
    """``python -m <module> args`` with this interpreter (run from the repository root)."""
    return [sys.executable, "-m", module, *args]


@dataclass
class ServerProcess:
    """A server process that printed ``gRPC listening on HOST:PORT``."""

    process: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def rss_kib(self) -> int:
        """Resident memory now (``VmRSS`` of /proc/<pid>/status), in KiB."""
        return _status_kib(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far."""
        return cpu_seconds(self.pid)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


@contextmanager
def server_process(
    command: Sequence[str], *, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Starts ``command``, waits for its listening line, and stops it (SIGTERM) at the end."""
    with tempfile.NamedTemporaryFile(
        "w+", prefix="bench-server-", suffix=".log", delete=False
    ) as log:
        log_path = Path(log.name)
        process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    drainer = threading.Thread(target=drain, name="server-stdout", daemon=True)
    drainer.start()
    try:
        port = _wait_listening(lines, process, log_path, command, timeout)
        yield ServerProcess(process, port, log_path)
    finally:
        _stop(process)
        drainer.join(timeout=5)  # at the end of the exited process's output
        if process.stdout is not None:
            process.stdout.close()
        log_path.unlink(missing_ok=True)


def _wait_listening(
    lines: queue.Queue[str | None],
    process: subprocess.Popen[str],
    log_path: Path,
    command: Sequence[str],
    timeout: float,
) -> int:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(left, 0.01))
        except queue.Empty:
            line = ""
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{command[0]}: not listening after {timeout:.0f} s") from None
        if line is None:
            process.wait()
            tail = log_path.read_text()[-2000:]
            raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{tail}")
        match = _LISTENING.search(line)
        if match:
            return int(match["port"])


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_client(spec: Mapping[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Runs ``benchmarks.client`` as a process of its own with ``spec``; returns its report."""
    done = subprocess.run(
        module_command("benchmarks.client", json.dumps(spec)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"client {spec.get('mode')} failed ({done.returncode}):\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def machine() -> dict[str, str]:
    """What the run ran on: cores, CPU model, Python, kernel, load and date."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_before": load,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def drive(
    server: ServerProcess, mode: str, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    """One closed-loop run of ``benchmarks.client`` against ``server``: caller ``i`` on
    instance ``bench-i``, ``mode`` "stream" (every update changing all seven fields) or "get"."""
    spec = {
        "mode": mode,
        "address": server.address,
        "token": TOKEN,
        "instances": [f"bench-{i:02}" for i in range(concurrency)],
        "concurrency": concurrency,
        "warmup": warmup,
        "duration": duration,
        "server_pid": server.pid,
    }
    return run_client(spec)


def take_turns(
    servers: Mapping[str, ServerProcess],
    mode: str,
    concurrency: int,
    *,
    rounds: int,
    warmup: float,
    duration: float,
) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` runs of ``drive`` against each server, taking turns (a, b, then b, a...), so
    that a machine whose speed drifts during the run favours none of them; each one's reports."""
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for index in range(rounds):
        order = list(servers) if index % 2 == 0 else list(servers)[::-1]
        for name in order:
            reports[name].append(drive(servers[name], mode, concurrency, warmup, duration))
    return reports
