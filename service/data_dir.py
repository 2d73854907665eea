"""One gateway per ``data_dir``: an exclusive lock held for the life of the process.

Two gateways on one data directory would share the operation journal (each marking the other's
running updates INTERRUPTED) and open the same WhatsApp session stores, so that one linked
account had two connections, each of which WhatsApp drops in turn. The second gateway therefore
refuses to start, naming the directory and the pid that holds it.

The lock is ``flock`` on ``<data_dir>/gateway.lock``: the kernel releases it when the process
ends, however it ends, so a killed gateway leaves nothing stale to clean up. The file itself
stays (removing it would let a third gateway lock a new file while the first still holds the
old one); the pid in it is for operators, the lock is what counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "gateway.lock"


class DataDirError(Exception):
    """The data directory cannot be used; the message names it and what to change."""


class DataDirInUse(DataDirError):
    """Another gateway holds the data directory; the message names it and that gateway's pid."""


@contextlib.contextmanager
def locked(data_dir: str | Path) -> Iterator[Path]:
    """Holds ``data_dir`` (created if missing) for this process while the block runs.

    Yields the lock file's path. Raises ``DataDirInUse`` at once, without waiting, when another
    process holds it, and ``DataDirError`` when the directory or the file cannot be made.
    """
    directory = Path(data_dir).resolve()
    path = directory / LOCK_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DataDirError(
            f"data_dir {directory} cannot be used: {exc.strerror}; check data_dir"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUse(
                f"data_dir {directory} is in use by another gateway ({_holder(fd)}); "
                "give each gateway its own data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


def _holder(fd: int) -> str:
    """``pid 1234`` as the holder wrote it, or ``pid unknown`` until it has written it."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"


class JournalError(Exception):
    """The journal cannot be opened: what the operator must fix, in one line."""

    def __init__(self, path: Path | None, cause: BaseException) -> None:
        """``path``: the journal's file; None for the database of ``database_url`` (whose URL
        is never shown: it holds a password)."""
        text = str(cause)
        if path is None:
            hint = "check database_url and that its server is running"
            super().__init__(f"journal: {text} ({hint})")
            return
        if "locked" in text or "busy" in text:
            hint = "another process holds it: stop it, or give this gateway its own data_dir"
        elif "not a database" in text or "malformed" in text:
            hint = "it is not a journal this gateway can read: move it aside to start afresh"
        else:
            hint = "check the data_dir's permissions and free space"
        super().__init__(f"journal {path}: {text} ({hint})")
