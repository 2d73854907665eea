"""Which WhatsApp device each instance's session is, so that nothing dials a store blindly.

neonize loads the *first* device of a store unless it is handed a JID (goneonize/main.go:634-650),
and a JID the store does not hold makes whatsmeow dereference a nil device and abort the process
(store/sqlstore/container.go:182-187, client.go:294). A store with no device at all makes neonize
show QR codes, and a link showing QR codes can never be stopped cleanly (see ``pairing``). So:

- a SQLite store is looked into directly (read-only): it holds a device or it does not;
- a PostgreSQL store can hold many instances' devices, so each instance's JID is recorded here
  when it pairs and handed to neonize on every connect; an instance with no recorded JID is not
  paired, whatever else the database holds. One process keeps the book in
  ``<data_dir>/devices.json`` (``DeviceBook``); replicas (``database_url``) share it as a table
  (``SharedDeviceBook``), since whichever replica holds an instance's lease dials it.

Both answer ``jid`` and take ``record`` at once, from memory, so the event loop never waits on
the database there; ``refresh`` (awaited before each dial) reads the shared row again, and
``flush`` waits for the writes ``record`` queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import asyncpg
from neonize.proto import Neonize_pb2 as npb

from service.sessions.whatsapp.postgres import store_jid

log = logging.getLogger(__name__)


def is_postgres(store: str) -> bool:
    """neonize's own test (main.go:60): a store name starting with ``postgres``."""
    return store.startswith(("postgres://", "postgresql://"))


def sqlite_store_has_device(path: str) -> bool:
    """Whether whatsmeow's SQLite store at ``path`` holds a device (``whatsmeow_device`` row)."""
    if not os.path.exists(path):
        return False
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return False
    try:
        return connection.execute("SELECT 1 FROM whatsmeow_device LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # no such table: whatsmeow never stored a device here
        return False
    finally:
        connection.close()


def jid_text(jid: npb.JID) -> str:
    """``user@server`` as the gateway shows it."""
    return f"{jid.User}@{jid.Server}" if jid.User else ""


class Devices(Protocol):
    """The JID each instance paired as (see the module)."""

    def jid(self, instance: str) -> npb.JID | None: ...

    def record(self, instance: str, jid: npb.JID | None) -> None: ...

    async def refresh(self, instance: str) -> None: ...

    async def flush(self) -> None: ...


class DeviceBook:
    """The JID each instance paired as, kept in ``<data_dir>/devices.json``."""

    async def refresh(self, instance: str) -> None:
        """Nothing to read again: this process is the file's only writer."""

    async def flush(self) -> None:
        """Nothing to wait for: ``record`` writes the file before it returns."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._jids: dict[str, str] = {}
        if path.exists():
            loaded = json.loads(path.read_text())
            self._jids = {str(k): str(v) for k, v in loaded.items()}

    def jid(self, instance: str) -> npb.JID | None:
        serialized = self._jids.get(instance)
        return npb.JID.FromString(bytes.fromhex(serialized)) if serialized else None

    def record(self, instance: str, jid: npb.JID | None) -> None:
        """Records (or, with None, forgets) ``instance``'s device; written atomically."""
        with self._lock:
            if jid is None:
                if self._jids.pop(instance, None) is None:
                    return
            else:
                self._jids[instance] = jid.SerializePartialToString().hex()
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self._path.parent, prefix=".devices-")
            with os.fdopen(fd, "w") as out:
                json.dump(self._jids, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._path)


#: The shared book's table; ``jid`` is neonize's serialized ``JID`` (handed back to neonize as
#: is), ``device_jid`` whatsmeow's key for it in ``whatsmeow_device`` (for an operator's join).
SHARED_DDL = """
CREATE TABLE IF NOT EXISTS whatsapp_devices (
    instance TEXT PRIMARY KEY,
    jid BYTEA NOT NULL,
    device_jid TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class SharedDeviceBook:
    """The JID each instance paired as, in the shared database's ``whatsapp_devices`` table.

    Reads are from memory, filled by ``open`` and ``refresh``; ``record`` changes memory at
    once and queues the write, which one task carries out in order (so a forget after a record
    lands last). A write that fails is logged and left: the next pairing or logout writes again.
    """

    def __init__(self, pool: Callable[[], Awaitable[asyncpg.Pool]]) -> None:
        """``pool``: the shared database's pool, opened on first use."""
        self._pool_source = pool
        self._pool: asyncpg.Pool | None = None
        self._jids: dict[str, npb.JID] = {}
        self._writes: asyncio.Queue[tuple[str, npb.JID | None]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._opened = False

    async def open(self) -> None:
        """Creates the table (``service.cluster.database.migrate``) and reads every row."""
        if self._opened:
            return
        from service.cluster.database import migrate  # noqa: PLC0415

        self._pool = pool = await self._pool_source()
        await migrate(pool, SHARED_DDL)
        rows = await pool.fetch("SELECT instance, jid FROM whatsapp_devices")
        self._jids = {row["instance"]: npb.JID.FromString(bytes(row["jid"])) for row in rows}
        self._opened = True

    def jid(self, instance: str) -> npb.JID | None:
        return self._jids.get(instance)

    def record(self, instance: str, jid: npb.JID | None) -> None:
        """Records (or, with None, forgets) ``instance``'s device; written in the background."""
        if jid is None:
            self._jids.pop(instance, None)
        else:
            self._jids[instance] = jid
        if self._writes is None:
            self._writes = asyncio.Queue()
            self._writer = asyncio.ensure_future(self._write_all(self._writes))
        self._writes.put_nowait((instance, jid))

    async def refresh(self, instance: str) -> None:
        """Reads ``instance``'s row again (another replica may have paired or forgotten it while
        it held the lease), after this book's own queued writes."""
        await self.open()
        await self.flush()
        assert self._pool is not None
        row = await self._pool.fetchrow(
            "SELECT jid FROM whatsapp_devices WHERE instance = $1", instance
        )
        if row is None:
            self._jids.pop(instance, None)
        else:
            self._jids[instance] = npb.JID.FromString(bytes(row["jid"]))

    async def flush(self) -> None:
        if self._writes is not None:
            await self._writes.join()

    async def close(self) -> None:
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write_all(self, writes: asyncio.Queue[tuple[str, npb.JID | None]]) -> None:
        while True:
            instance, jid = await writes.get()
            try:
                await self.open()
                assert self._pool is not None
                if jid is None:
                    await self._pool.execute(
                        "DELETE FROM whatsapp_devices WHERE instance = $1", instance
                    )
                else:
                    await self._pool.execute(
                        "INSERT INTO whatsapp_devices (instance, jid, device_jid) "
                        "VALUES ($1, $2, $3) ON CONFLICT (instance) DO UPDATE "
                        "SET jid = excluded.jid, device_jid = excluded.device_jid, "
                        "recorded_at = now()",
                        instance,
                        jid.SerializePartialToString(),
                        store_jid(jid),
                    )
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "%s: the device book could not be written (%s: %s)",
                    instance, type(exc).__name__, exc,
                )  # fmt: skip
            finally:
                writes.task_done()
