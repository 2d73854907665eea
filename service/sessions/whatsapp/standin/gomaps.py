"""neonize's three global Go maps, and the ways Go aborts a process that misuses them.

neonize keeps ``clients``, ``eventChannel`` and ``StopSignal`` in plain maps with no lock
(goneonize/main.go:45, 52-55; the only ``sync`` in neonize is a buffer pool, helpers.go:24). Go
detects a read that overlaps a write and aborts with ``fatal error: concurrent map read and map
write`` (runtime/map.go); the stand-in does the same, holding each access open briefly so that
an overlap the gateway's guard should have prevented is seen. A fatal error here is recorded and
raised; the tests fail on any.
"""

from __future__ import annotations

import threading
import time

#: How long each map access is held open, so that an unguarded overlap is observable.
ACCESS_WINDOW = 0.0005


class GoFatal(BaseException):
    """The process would have aborted here (a Go panic or fatal error)."""


class GoRuntime:
    """Records fatal errors; the tests assert there were none."""

    def __init__(self) -> None:
        self.fatal: list[str] = []
        self._lock = threading.Lock()
        #: Set when the stand-in is shut down: releases the threads that block "forever".
        self.exiting = threading.Event()

    def abort(self, message: str) -> GoFatal:
        with self._lock:
            self.fatal.append(message)
        return GoFatal(message)

    def block_forever(self) -> None:
        """A goroutine that never returns (until the stand-in is shut down)."""
        self.exiting.wait()


class GoMaps:
    """The maps, with Go's overlap detection.

    ``window`` is how long each access is held open; 0 still catches an overlap the moment it
    happens but not one a microsecond apart (benchmarks use it, so that the stand-in's own
    sleeping does not weigh on what they measure).
    """

    def __init__(self, runtime: GoRuntime, window: float = ACCESS_WINDOW) -> None:
        self._runtime = runtime
        self.window = window
        self._lock = threading.Lock()
        self._readers = 0
        self._writing = False
        self.clients: dict[bytes, object] = {}
        self.event_channels: dict[bytes, object] = {}
        self.stop_signals: dict[bytes, threading.Event] = {}

    def read(self) -> _Access:
        return _Access(self, write=False)

    def write(self) -> _Access:
        return _Access(self, write=True)

    def _enter(self, write: bool) -> None:
        with self._lock:
            if self._writing or (write and self._readers):
                raise self._runtime.abort(
                    "fatal error: concurrent map read and map write (neonize's unlocked maps, "
                    "goneonize/main.go:45, 52-55)"
                )
            if write:
                self._writing = True
            else:
                self._readers += 1

    def _leave(self, write: bool) -> None:
        with self._lock:
            if write:
                self._writing = False
            else:
                self._readers -= 1


class _Access:
    def __init__(self, maps: GoMaps, *, write: bool) -> None:
        self._maps = maps
        self._write = write

    def __enter__(self) -> GoMaps:
        self._maps._enter(self._write)
        if self._maps.window:
            time.sleep(self._maps.window)
        return self._maps

    def __exit__(self, *_: object) -> None:
        self._maps._leave(self._write)
