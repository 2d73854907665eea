"""The real neonize library with no network at all: closed proxies, stores, dials, child processes.

What ``tests/whatsapp/test_whatsapp_offline.py`` shares with the other tests on the real library
(``test_whatsapp_leaks``, ``test_neonize_log_level``): every dial goes through a proxy on
127.0.0.1, a closed port or an ``AnsweringProxy`` that says yes and then forwards nothing, so the
Go library never resolves or reaches WhatsApp. ``store_with_device`` makes a file the gateway
counts as paired, ``paired_store`` a store whatsmeow itself loads as a paired device.

A check that may crash the process (a Go fault is not an exception) runs in a child process
with ``_run_in_child``, which imports its ``child_*`` function from this module. What the
fixtures of ``tests/whatsapp/conftest.py`` return and count is here too (``StartGateway``,
``Attempts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.sessions.base import SessionError, SessionState
from service.sessions.whatsapp import codec
from service.sessions.whatsapp.devices import DeviceBook
from service.sessions.whatsapp.ffi import Dial as NeonizeDial
from service.sessions.whatsapp.ffi import LinkCallbacks, NeonizeFFI
from service.sessions.whatsapp.guard import GuardedFFI
from service.sessions.whatsapp.probe import probe_path
from service.sessions.whatsapp.session import Backoff, WhatsAppOptions, WhatsAppSession
from service.sessions.whatsapp.threads import BlockingCalls
from tests.helpers.harness import Harness
from tests.helpers.loopback_proxy import Dial, RecordingProxy

CLOSED_SOCKS = "socks5://127.0.0.1:1"
CLOSED_HTTP = "http://127.0.0.1:1"
DIAL_ERROR = "failed to dial whatsapp web websocket"
ROOT = Path(__file__).resolve().parents[2]


#: The device the stores made here hold (an AD-JID, as whatsmeow keeps it).
DEVICE_JID = "5511999999999:1@s.whatsapp.net"
_schema_stores = itertools.count()


StartGateway = Callable[..., Awaitable[Harness]]


def _connection_threads(*instances: str) -> list[threading.Thread]:
    """The live connection threads of these instances (``whatsapp-<instance>#<n>``, one per
    ``Neonize`` call, ``link``)."""
    prefixes = tuple(f"whatsapp-{name}#" for name in instances)
    return [t for t in threading.enumerate() if t.name.startswith(prefixes)]


def whatsapp_instance(
    name: str, proxy: str, store: Path | None = None, **extra: Any
) -> dict[str, Any]:
    table = {"name": name, "account": "acme", "session": "whatsapp", "proxy": proxy, **extra}
    if store is not None:
        table["store"] = str(store)
    return table


def store_with_device(path: Path) -> Path:
    """A SQLite file whose ``whatsmeow_device`` table holds one row, and nothing else.

    Enough for the gateway to count the instance as paired and dial it
    (``devices.sqlite_store_has_device``), not for whatsmeow: were neonize called, its upgrade
    would fail ("table whatsmeow_device already exists"). For dials the probe stops first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY)")
        connection.execute("INSERT INTO whatsmeow_device (jid) VALUES (?)", (DEVICE_JID,))
        connection.commit()
    return path


def paired_store(path: Path) -> Path:
    """A whatsmeow store holding one device that whatsmeow itself loads as paired, so neonize
    dials it (``client.Connect``, main.go:1156-1161) rather than showing QR codes.

    whatsmeow makes the schema: one ``Neonize`` call on the new file through a closed port (its
    upgrade runs in ``getDB``, main.go:58-64; the dial then fails at once). The device row gets
    random keys of the lengths the schema checks (store/sqlstore/upgrades/00-latest-schema.sql).
    That call leaves one descriptor on the file open in this process: neonize never closes it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ffi = NeonizeFFI()
    session_id = f"schema-{next(_schema_stores)}-{path.name}".encode()
    result = connect_in_thread(ffi, session_id, path, CLOSED_HTTP)
    assert result.startswith(DIAL_ERROR), result
    ffi.stop(session_id)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(
            "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, "
            "signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, "
            "adv_account_sig, adv_account_sig_key, adv_device_sig) "
            "VALUES (?, 1, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            (
                DEVICE_JID, os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(64),
                os.urandom(32), b"details", os.urandom(64), os.urandom(32), os.urandom(64),
            ),
        )  # fmt: skip
        connection.commit()
    return path


class AnsweringProxy(RecordingProxy):
    """A ``RecordingProxy`` that says yes: ``200`` to an HTTP CONNECT, success to a SOCKS5
    connect. Then it forwards nothing and hangs up (or holds the connection, ``hold``), so the
    gateway's probe passes and neonize's TLS handshake meets an EOF."""

    @staticmethod
    async def _read_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Dial:
        dial = await RecordingProxy._read_http(reader, writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        return dial

    @staticmethod
    async def _read_socks5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Dial:
        dial = await RecordingProxy._read_socks5(reader, writer)
        writer.write(b"\x05\x00\x00\x01" + bytes(6))  # succeeded, bound to 0.0.0.0:0
        await writer.drain()
        return dial


async def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        # Polls rather than blocks: what is awaited may need this loop (a proxy, a callback).
        await asyncio.sleep(0.01)


def no_op_callbacks() -> LinkCallbacks:
    return LinkCallbacks(
        on_qr=lambda _code: None,
        on_login_status=lambda _status: None,
        on_event=lambda _code, _payload: None,
        on_log=lambda _entry: None,
    )


def connect_in_thread(
    ffi: NeonizeFFI,
    session_id: bytes,
    store: Path,
    proxy: str,
    *,
    callbacks: LinkCallbacks | None = None,
    log_level: str = "info",
    timeout: float = 3.0,
) -> str:
    """Runs ``connect`` on a thread as the gateway does; its result, which must come in time."""
    result: list[str] = []

    def run() -> None:
        calls = callbacks or no_op_callbacks()
        store_name = str(store)
        result.append(
            ffi.connect(
                NeonizeDial(session_id, store_name, proxy=proxy, log_level=log_level), calls
            )
        )

    thread = threading.Thread(target=run, name="test-connect", daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"connect did not return within {timeout} s"
    assert time.monotonic() - started < timeout
    return result[0]


@dataclass
class Attempts:
    """The gateway's connection attempts: each probe it made and each ``Neonize`` call."""

    probes: list[tuple[float, str]] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.probes)


# -- checks in a child process ----------------------------------------------------------------


def _run_in_child(function: str, *args: str) -> list[dict[str, Any]]:
    """Runs ``function`` (of this module) in a child process; the steps it reported.

    A child that dies (a Go SIGSEGV or fatal error) fails the test with the start of its stderr.
    """
    code = (
        "import sys; from tests.helpers.neonize_offline import "
        f"{function}; {function}(*sys.argv[1:])"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    steps = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0:
        stderr = "\n".join(child.stderr.splitlines()[:12])
        pytest.fail(
            f"the child process died (exit status {child.returncode}) after the steps {steps}; "
            f"stderr begins:\n{stderr}"
        )
    return steps


def _report(step: str, **data: Any) -> None:
    print(json.dumps({"step": step, **data}), flush=True)


def child_get_after_failed_dial(store: str) -> None:
    """Child process: GetPrivacySettings on a client whose dial failed."""
    ffi = NeonizeFFI()
    session_id = b"child-get"
    result = ffi.connect(NeonizeDial(session_id, store, proxy=CLOSED_SOCKS), no_op_callbacks())
    _report("connected", result=result)
    settings = codec.parse_settings(ffi.get_privacy_settings(session_id))
    _report("read", unknown=not settings, settings=repr(settings))
    ffi.stop(session_id)
    _report("stopped")


def child_read_settings_of_a_disconnected_session(store: str, probe: str) -> None:
    """Child process: ``WhatsAppSession.read_settings`` while its dial keeps failing, as the
    gateway builds the session (``probe`` "probe": the gateway's probe fails first) or with
    neonize's own dial failing (``probe`` "no-probe")."""

    async def main() -> None:
        blocking = BlockingCalls(2)
        session = WhatsAppSession(
            "child-read",
            GuardedFFI(NeonizeFFI()),
            store=store,
            proxy=CLOSED_SOCKS,
            blocking=blocking,
            devices=DeviceBook(Path(store).parent / "devices.json"),
            probe=probe_path if probe == "probe" else None,
            options=WhatsAppOptions(backoff=Backoff(30, 30)),
        )
        await session.start()
        await wait_until(
            lambda: session.status().state is SessionState.DISCONNECTED, 5, "a failed dial"
        )
        _report("disconnected", error=session.status().last_error)
        try:
            settings = await session.read_settings()
        except SessionError as exc:
            _report("read", raised=True, reason=exc.reason, lost=exc.connection_lost)
        else:
            _report("read", raised=False, settings=repr(settings))
        await session.close()
        blocking.shutdown()
        _report("closed")

    asyncio.run(main())
