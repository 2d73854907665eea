"""What WhatsApp's servers and the session stores hold, as the stand-in plays them.

A store is whatsmeow's ``sqlstore`` container: for a SQLite path, a real file with whatsmeow's
``whatsmeow_device`` table (store/sqlstore/upgrades), because the gateway looks into it before it
dials; for a PostgreSQL URL, that table (and ``whatsmeow_version``) in the real database, keyed
by jid as whatsmeow writes it (``types.JID.String()``, types/jid.go:216-228), since the gateway
looks there for an instance's device before it dials (``postgres.WhatsmeowDatabase.has_device``).
The devices themselves (their keys, settings) live here only.

A device is one linked account: its JID once paired, the settings WhatsApp holds for it (as
WhatsApp's own strings, so values outside the gateway's table can be played), and the faults a
test arranges for its next stanzas.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from service.sessions.simulated import DEFAULT_SETTINGS

#: WhatsApp's categories and their default values, as strings (whatsmeow types/user.go:127-154).
DEFAULT_RAW = {f.spec.category: v for f, v in DEFAULT_SETTINGS.items()}


@dataclass
class Fault:
    """What happens to the next stanza (an IQ) matching ``category`` (None: any).

    ``kind``: ``timeout`` (no answer ever, request.go:180-181), ``drop`` (the connection drops
    before the answer; whatsmeow waits ``reconnect_wait`` for a reconnect and resends once,
    request.go:185-235), ``status`` (WhatsApp answers an error code, errors.go:214-225).
    ``applied``: whether WhatsApp applied it although the answer was lost.
    ``reconnect_after``: for a drop, when the connection comes back (None: it stays down).
    """

    kind: str
    category: str | None = None
    applied: bool = True
    status: int = 0
    text: str = ""
    reconnect_after: float | None = 0.0


@dataclass
class Device:
    """One linked account as WhatsApp and its store hold it."""

    label: str
    #: ``user@server`` once paired; empty while the store's device is new (``Store.ID == nil``).
    jid: str = ""
    device_number: int = 0
    raw_settings: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RAW))
    faults: deque[Fault] = field(default_factory=deque)
    #: WhatsApp's verdict on the next connects: a ban (code, until ``time.time()``), a client
    #: version it refuses, or a connect failure reason.
    banned: tuple[int, float] | None = None
    outdated: bool = False
    connect_failure: int | None = None
    #: How many stanzas (IQs: fetches, sets, pairing codes) reached WhatsApp.
    stanzas: int = 0

    @property
    def store_jid(self) -> str:
        """whatsmeow's key for this device in ``whatsmeow_device`` (types/jid.go:216-228)."""
        user, _, server = self.jid.partition("@")
        server = server or "s.whatsapp.net"
        return f"{user}:{self.device_number}@{server}" if self.device_number else f"{user}@{server}"

    def take_fault(self, category: str | None) -> Fault | None:
        for fault in list(self.faults):
            if fault.category is None or fault.category == category:
                self.faults.remove(fault)
                return fault
        return None


class Store:
    """A whatsmeow store (sqlstore container), opened once per ``Neonize`` call, never closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.devices: list[Device] = []
        #: How many containers were opened on it and never closed (goneonize/main.go:58-64).
        self.opened = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        return None if self.name.startswith("postgres") else Path(self.name)

    def open(self) -> None:
        """``sqlstore.New``: creates the file and whatsmeow's table (its upgrade) if needed."""
        with self._lock:
            self.opened += 1
        self._sync_file()

    def save(self, device: Device) -> None:
        """``Store.Save`` after a pairing (pair.go)."""
        with self._lock:
            if device not in self.devices:
                self.devices.append(device)
        self._sync_file()

    def delete(self, device: Device) -> None:
        """``Store.Delete`` after a logout (connectionevents.go:40-47, 126-132)."""
        with self._lock:
            if device in self.devices:
                self.devices.remove(device)
        device.jid = ""
        self._sync_file()

    def by_jid(self, user: str) -> Device | None:
        return next((d for d in self.devices if d.jid.partition("@")[0] == user), None)

    def _sync_file(self) -> None:
        path = self.path
        if path is None:
            self._sync_postgres()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path)
        try:
            connection.execute("CREATE TABLE IF NOT EXISTS whatsmeow_device (jid TEXT PRIMARY KEY)")
            connection.execute("DELETE FROM whatsmeow_device")
            connection.executemany(
                "INSERT INTO whatsmeow_device (jid) VALUES (?)",
                [(d.jid,) for d in self.devices if d.jid],
            )
            connection.commit()
        finally:
            connection.close()

    def _sync_postgres(self) -> None:
        """The rows whatsmeow's upgrade (00-latest-schema.sql, dbutil/upgrades.go:53-72, 238)
        and ``PutDevice``/``DeleteDevice`` leave, written from a thread of its own (a caller may
        be the event loop's thread)."""
        jids = [d.store_jid for d in self.devices if d.jid]
        url = _asyncpg_url(self.name)

        async def write() -> None:
            import asyncpg  # noqa: PLC0415

            connection = await asyncpg.connect(url, timeout=5)
            try:
                async with connection.transaction():
                    await connection.execute(
                        "SELECT pg_advisory_xact_lock(2003)"  # the stand-in's own turns
                    )
                    await connection.execute(
                        "CREATE TABLE IF NOT EXISTS whatsmeow_version (version INTEGER, compat "
                        "INTEGER); CREATE TABLE IF NOT EXISTS whatsmeow_device (jid TEXT "
                        "PRIMARY KEY); DELETE FROM whatsmeow_version; "
                        "INSERT INTO whatsmeow_version VALUES (15, 8); DELETE FROM whatsmeow_device"
                    )
                    await connection.executemany(
                        "INSERT INTO whatsmeow_device (jid) VALUES ($1)", [(j,) for j in jids]
                    )
            finally:
                await connection.close()

        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(write())
            except BaseException as exc:  # handed to the caller's thread
                errors.append(exc)

        writer = threading.Thread(target=run, name="standin-postgres", daemon=True)
        writer.start()
        writer.join()
        if errors:
            raise errors[0]


def _asyncpg_url(name: str) -> str:
    """The store string without what only lib/pq takes (asyncpg would send it to the server)."""
    parts = urlsplit(name)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("connect_timeout",)]
    return urlunsplit(parts._replace(query=urlencode(query)))
