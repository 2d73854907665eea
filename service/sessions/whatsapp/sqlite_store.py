"""A SQLite session store checked, before neonize is asked to open it, for a lock it would wait on.

neonize opens the store and writes its maps before it dials (goneonize/main.go:621-654), and the
map guard lets other instances' stanzas go on once a registration has had
``REGISTRATION_PATIENCE`` (3 s) to get that far (``guard``). Those writes are local work, unless
the store is locked by another process: go-sqlite3 then waits up to its busy timeout (5 s) inside
``getDB`` or the device query, past the guard's patience, and a map write could then meet a
stanza's read (a process abort). So a store another process holds a write lock on is not handed
to neonize; the instance waits, as for an unreachable WhatsApp, and says which file to free.
"""

from __future__ import annotations

import os
import sqlite3


def store_problem(path: str) -> str:
    """ "" when neonize may open ``path`` without waiting for a lock, else why not."""
    if not os.path.exists(path):
        return ""  # neonize creates it: nobody else can hold it
    try:
        connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0)
    except sqlite3.Error as exc:
        return f"the session store {os.path.basename(path)} cannot be opened: {exc}"
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return (
                f"the session store {os.path.basename(path)} is locked by another process: "
                "end that process"
            )
        return f"the session store {os.path.basename(path)} cannot be used: {exc}"
    finally:
        connection.close()
    return ""
