"""The real ``privacy-gateway`` CLI as subprocesses, for the tests that run it that way.

A ``serve`` process's stdout is read by a thread into a queue, so that a test can wait for a line
with a timeout instead of blocking on the pipe; its stderr goes to a file, which is read back
when an assertion fails. Every wait has a timeout, and ``started_gateways`` stops every process
it started, even one a test killed or one that never printed its address.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

#: The CLI as the venv running the tests has it (the console script runs this same ``main``).
CLI = (sys.executable, "-m", "service.cli.main")
#: The line ``serve`` prints once it accepts calls; group 1 is the address (a TLS port's line
#: ends in "(TLS)" or "(mutual TLS)").
LISTENING = re.compile(
    r"^privacy-gateway: gRPC listening on (127\.0\.0\.1:\d+)(?: \((?:mutual )?TLS\))?$"
)
#: Seconds any single process step (start, answer, print a line, exit) may take.
TIMEOUT = 20.0


def stripped_env() -> dict[str, str]:
    """The test's environment without any ``PRIVACY_GATEWAY_*`` variable.

    Those would override the options and configuration files the tests pass, so a developer's
    shell (or CI's) could change what a test checks.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("PRIVACY_GATEWAY_")}


@dataclass
class GatewayProcess:
    """A ``privacy-gateway serve`` process, its address and what it printed."""

    process: subprocess.Popen[str]
    stderr_file: IO[str]
    address: str = ""
    stdout: list[str] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def read_line(self, timeout: float = TIMEOUT) -> str:
        """The next line printed; fails the test, showing stderr, if none comes or it exited."""
        return self._next_line(timeout, f"output within {timeout} s")

    def read_until(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """The first match in the lines printed from now on (earlier ones are in ``stdout``)."""
        compiled = re.compile(pattern)
        awaited = f"line matching {compiled.pattern!r} within {TIMEOUT} s"
        deadline = time.monotonic() + TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {awaited}; stderr:\n{self.stderr()}")
            match = compiled.search(self._next_line(remaining, awaited))
            if match:
                return match

    def _next_line(self, timeout: float, awaited: str) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {awaited}; stderr:\n{self.stderr()}") from None
        if line is None:
            code = self.process.wait(timeout=TIMEOUT)
            raise AssertionError(f"the gateway exited ({code}); stderr:\n{self.stderr()}")
        self.stdout.append(line)
        return line

    def stderr(self) -> str:
        self.stderr_file.flush()
        return Path(self.stderr_file.name).read_text()

    def stop(self, signum: signal.Signals) -> int:
        """Sends ``signum`` and returns the exit code once the process has exited."""
        self.process.send_signal(signum)
        return self.process.wait(timeout=TIMEOUT)

    def close(self) -> None:
        """Ends the process if it still runs (gracefully first) and releases its pipe and file."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=TIMEOUT)
        if self._reader is not None:
            self._reader.join(timeout=TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr_file.close()


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    """Moves stdout into ``lines``, then ``None`` at end of file (the process exited)."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)


class StartServe(Protocol):
    def __call__(self, *args: str, env: dict[str, str]) -> GatewayProcess: ...


@contextlib.contextmanager
def started_gateways(directory: Path) -> Iterator[StartServe]:
    """Yields ``start(*args, env=...)``, which runs ``privacy-gateway serve ARGS`` and returns
    once it printed its address; on exit, closes every process started (stderr goes to files in
    ``directory``)."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(*args: str, env: dict[str, str]) -> GatewayProcess:
            nonlocal count
            stderr_file = (directory / f"gateway-{count}.stderr").open("w+")
            count += 1
            process = subprocess.Popen(
                [*CLI, "serve", *args],
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                text=True,
                env=env,
            )
            gateway = GatewayProcess(process, stderr_file)
            # Registered before the first read, so a gateway that never starts is closed too.
            stack.callback(gateway.close)
            gateway._reader = threading.Thread(
                target=_pump, args=(process, gateway._lines), daemon=True
            )
            gateway._reader.start()
            gateway.address = gateway.read_until(LISTENING).group(1)
            return gateway

        yield start


@contextlib.contextmanager
def held_ports(count: int) -> Iterator[list[int]]:
    """``count`` loopback ports this process listens on while the block runs.

    A gateway given them fails with "port ... is already in use" if it tries to bind one; one
    that stops with another error first never tried. ``port_is_free`` then says, once the block
    has ended, that the gateway left none of them bound either."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            held = stack.enter_context(socket.socket())
            held.bind(("127.0.0.1", 0))
            held.listen()
            ports.append(int(held.getsockname()[1]))
        yield ports


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
