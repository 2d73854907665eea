"""Which WhatsApp device each instance's session is, so that nothing dials a store blindly.

neonize loads the *first* device of a store unless it is handed a JID (goneonize/main.go:634-650),
and a JID the store does not hold makes whatsmeow dereference a nil device and abort the process
(store/sqlstore/container.go:182-187, client.go:294). A store with no device at all makes neonize
show QR codes, and a link showing QR codes can never be stopped cleanly (see ``pairing``). So:

- a SQLite store is looked into directly (read-only): it holds a device or it does not;
- a PostgreSQL store can hold many instances' devices, so each instance's JID is recorded here
  when it pairs (``<data_dir>/devices.json``) and handed to neonize on every connect; an instance
  with no recorded JID is not paired, whatever else the database holds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from pathlib import Path

from neonize.proto import Neonize_pb2 as npb


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


class DeviceBook:
    """The JID each instance paired as, kept in ``<data_dir>/devices.json``."""

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
