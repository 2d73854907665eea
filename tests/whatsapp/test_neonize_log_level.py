"""whatsmeow's log level, as the gateway hands it to neonize, on the real library.

At ``debug`` whatsmeow sends every line through the Python log callback (the gateway's
``whatsapp_log_level``, default ``info``), which costs time on every stanza; at ``info`` none of
its debug lines may cross. A failing connect through a closed loopback port is enough to see it:
whatsmeow logs "Dialing wss://web.whatsapp.com/ws/chat" at debug (socket/framesocket.go) before
the dial fails, and nothing is resolved or reached.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from neonize.proto import Neonize_pb2 as npb

from service.sessions.whatsapp.ffi import LinkCallbacks, NeonizeFFI
from tests.helpers.neonize_offline import CLOSED_HTTP, CLOSED_SOCKS, DIAL_ERROR, connect_in_thread

#: How long after ``connect`` returned a late log line may still arrive (Go logs on goroutines).
SETTLE = 0.2


def entries_of_a_failing_connect(tmp_path: Path, level: str) -> list[npb.LogEntry]:
    """The log entries whatsmeow hands Python during two failing connects (HTTP and SOCKS5)."""
    entries: list[npb.LogEntry] = []
    callbacks = LinkCallbacks(
        on_qr=lambda _code: None,
        on_login_status=lambda _status: None,
        on_event=lambda _code, _payload: None,
        on_log=lambda entry: entries.append(npb.LogEntry.FromString(entry)),
    )
    ffi = NeonizeFFI()
    session_ids = [f"log-{level}-{n}".encode() for n in range(2)]
    try:
        for session_id, proxy in zip(session_ids, (CLOSED_HTTP, CLOSED_SOCKS), strict=True):
            result = connect_in_thread(
                ffi, session_id, tmp_path / f"{level}.db", proxy,
                callbacks=callbacks, log_level=level,
            )  # fmt: skip
            assert result.startswith(DIAL_ERROR), result
        time.sleep(SETTLE)
    finally:
        for session_id in session_ids:
            ffi.stop(session_id)
    return entries


@pytest.mark.parametrize("level", ["info", "warn", "error"])
def test_no_debug_line_reaches_python_above_debug(tmp_path: Path, level: str) -> None:
    entries = entries_of_a_failing_connect(tmp_path, level)
    levels = Counter(entry.Level for entry in entries)
    assert levels["DEBUG"] == 0, [e.Message for e in entries if e.Level == "DEBUG"]
    assert not any(e.Message.startswith("Dialing") for e in entries)


def test_debug_lines_reach_python_at_debug(tmp_path: Path) -> None:
    entries = entries_of_a_failing_connect(tmp_path, "debug")
    levels = Counter(entry.Level for entry in entries)
    assert levels["DEBUG"] >= 1, levels
    dialing = [e for e in entries if e.Level == "DEBUG" and e.Message.startswith("Dialing ")]
    assert dialing, [e.Message for e in entries]
    # One per connect: whatsmeow's socket logger names itself.
    assert len(dialing) == 2
    assert {e.Message for e in dialing} == {"Dialing wss://web.whatsapp.com/ws/chat"}
    assert {e.Name for e in dialing} == {"Client/Socket"}
