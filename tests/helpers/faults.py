"""The gateway's own faults, made real: a filesystem that fills, a journal another process locks.

``SmallFilesystem`` mounts a tmpfs of a few hundred KiB (the tests run as root, as CI does) and
fills it to the last byte on demand; ``JournalLock`` is a separate ``python`` process that takes
``BEGIN EXCLUSIVE`` on the journal and holds it until told to let go. Neither pretends: SQLite
meets a real ENOSPC and a real lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


class SmallFilesystem:
    """A tmpfs at ``root``; ``fill()`` takes every free byte, ``free()`` gives them back."""

    def __init__(self, root: Path, size_kib: int = 512) -> None:
        self.root = root
        self._size_kib = size_kib
        self._filler = root / "filler"

    @contextlib.contextmanager
    def mounted(self) -> Iterator[SmallFilesystem]:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self._size_kib}k", "tmpfs", str(self.root)],
            check=True,
            capture_output=True,
        )
        try:
            yield self
        finally:
            subprocess.run(["umount", "-l", str(self.root)], check=False, capture_output=True)

    def fill(self) -> int:
        """Writes until the filesystem refuses (ENOSPC); the bytes it took."""
        written = 0
        with open(self._filler, "ab", buffering=0) as out:
            chunk = b"\0" * 4096
            while True:
                try:
                    written += out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            for size in (1024, 256, 64, 16, 1):  # the last partial page too
                with contextlib.suppress(OSError):
                    while True:
                        written += out.write(b"\0" * size)
        return written

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


class JournalLock:
    """Another process holding ``BEGIN EXCLUSIVE`` on the journal, until ``release``.

    ``start`` runs the process ahead (connected, not locking), so that ``take`` locks within
    milliseconds: a test can lock while a 200 ms stanza is still in flight."""

    def __init__(self, journal: Path) -> None:
        self._journal = journal
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self._process is not None:
            return
        script = (
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(self._journal)!r}, isolation_level=None, timeout=30)\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "db.execute('COMMIT')\n"
        )
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env={**os.environ},
        )  # fmt: skip
        await self._expect(b"ready")

    async def take(self) -> None:
        await self.start()
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(b"lock\n")
        await self._process.stdin.drain()
        await self._expect(b"locked")

    async def _expect(self, word: bytes) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        assert line.strip() == word, line

    async def release(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        process.stdin.close()  # and a process that never locked ends too
        await asyncio.wait_for(process.wait(), 30)
