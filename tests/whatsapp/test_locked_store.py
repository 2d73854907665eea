"""A SQLite session store another process holds a write lock on is not handed to neonize.

go-sqlite3 would wait for the lock (its busy timeout, 5 s) inside neonize's store open, before
neonize writes its maps (goneonize/main.go:621-654), and past the map guard's patience for a
registration (3 s, ``guard``): a map write could then meet another instance's stanza. So the
gateway tries the lock first, waits like any dial that cannot go, and names the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from service.sessions.whatsapp.sqlite_store import store_problem
from tests.helpers.whatsapp_harness import CONNECTED, DISCONNECTED, StartWhatsApp, paired

LOCKED = "the session store wa.db is locked by another process: end that process"


async def test_a_locked_store_is_not_dialled_until_it_is_free(
    start_whatsapp: StartWhatsApp, tmp_path: Path
) -> None:
    ffi = paired("wa")
    ffi.place(tmp_path)  # the gateway's data_dir: wa.db holds the device
    holder = sqlite3.connect(tmp_path / "wa.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        wa = await start_whatsapp(
            ffi, "wa", reconnect_initial_seconds=0.05, reconnect_max_seconds=0.1
        )
        await wa.wait_state("wa", DISCONNECTED, error=LOCKED)
        await asyncio.sleep(0.3)
        assert ffi.connects == 0, "neonize was asked to open a locked store"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await wa.wait_state("wa", CONNECTED)
    assert ffi.connects == 1


def test_a_free_or_missing_store_has_no_problem(tmp_path: Path) -> None:
    assert store_problem(str(tmp_path / "absent.db")) == ""
    sqlite3.connect(tmp_path / "free.db").close()
    assert store_problem(str(tmp_path / "free.db")) == ""
