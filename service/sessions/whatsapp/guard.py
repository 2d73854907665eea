"""The guard around neonize's Go maps, which have no lock of their own.

neonize keeps its clients, their stop functions and their event channels in three global Go maps
(goneonize/main.go:45, 52-55) that every export reads and ``Neonize`` and ``Stop`` write, with no
lock anywhere. A read that overlaps a write aborts the whole process (``fatal error: concurrent
map read and map write``). So:

- a registration (the start of ``Neonize``) and a ``Stop`` take the guard alone;
- any other export shares it, but only for as long as it can still be touching a map. Every
  export the gateway calls reads ``clients[id]`` as its very first statement
  (``SetPrivacySetting`` main.go:1968, ``GetPrivacySettings`` 2096, ``PairPhone`` 1863) and never
  again, so a reader is past the maps within microseconds of entering Go. ``READ_WINDOW`` (1 s)
  bounds that generously; after it, a stanza that waits 75 s for WhatsApp no longer holds up a
  ``Stop`` or a registration of another instance.

The exclusive side is released from another thread than the one that took it (a registration is
released by a callback Go makes), which ``threading.Lock`` cannot do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.sessions.whatsapp.ffi import Dial, LinkCallbacks, WhatsAppFFI

#: How long after entering a Go export a call may still read neonize's maps (see above).
READ_WINDOW = 1.0


class MapGuard:
    """A readers-writer guard whose readers expire after ``READ_WINDOW``; writers are preferred."""

    def __init__(self, read_window: float = READ_WINDOW) -> None:
        self._cond = threading.Condition()
        self._read_window = read_window
        #: Entry instants (``time.monotonic()``) of readers that may still touch the maps.
        self._readers: dict[int, float] = {}
        self._next_reader = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Held around one export call; stops counting once the call is past its map read."""
        ticket = self.enter_reader()
        try:
            yield
        finally:
            self.leave_reader(ticket)

    def enter_reader(self, *, until_left: bool = False) -> int:
        """Counts a reader in; ``until_left`` readers count until they leave, not for a window
        (a connection whose map reads come at a moment nobody can see, see ``ffi``)."""
        with self._cond:
            # Readers wait for waiting writers, unless a writer could not go ahead anyway.
            while self._writer or (self._writers_waiting and not self._held_readers()):
                self._cond.wait()
            self._next_reader += 1
            ticket = self._next_reader
            self._readers[ticket] = float("inf") if until_left else time.monotonic()
            return ticket

    def enter_reader_while_exclusive(self, *, expiring: bool = False) -> int:
        """A reader's place for a caller that holds the exclusive side (and releases it next),
        so no writer slips in between; held until it leaves unless ``expiring``."""
        with self._cond:
            self._next_reader += 1
            ticket = self._next_reader
            self._readers[ticket] = time.monotonic() if expiring else float("inf")
            return ticket

    def leave_reader(self, ticket: int) -> None:
        with self._cond:
            if self._readers.pop(ticket, None) is not None:
                self._cond.notify_all()

    def read_window(self, *, holding: bool = False) -> None:
        """Counts in a read Go is about to make on a thread that is not ours (a callback
        returning into neonize code that reads the maps next), for ``READ_WINDOW``. ``holding``:
        the caller holds the guard already (so it must not wait for itself)."""
        ticket = (
            self.enter_reader_while_exclusive(expiring=True) if holding else self.enter_reader()
        )
        timer = threading.Timer(self._read_window, self.leave_reader, (ticket,))
        timer.daemon = True
        timer.start()

    def acquire_exclusive(self) -> Callable[[], None]:
        """Takes the guard alone; returns a release callable that is safe to call many times."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._live_readers():
                    self._cond.wait(self._wait_for_readers())
            finally:
                self._writers_waiting -= 1
            self._writer = True
        released = threading.Event()

        def release() -> None:
            with self._cond:
                if released.is_set():
                    return
                released.set()
                self._writer = False
                self._cond.notify_all()

        return release

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        release = self.acquire_exclusive()
        try:
            yield
        finally:
            release()

    def _held_readers(self) -> bool:
        return any(entered == float("inf") for entered in self._readers.values())

    def _live_readers(self) -> bool:
        horizon = time.monotonic() - self._read_window
        return any(entered > horizon for entered in self._readers.values())

    def _wait_for_readers(self) -> float | None:
        """How long until the youngest live reader is past its window (None: wait for a notify)."""
        if self._writer or not self._readers or self._held_readers():
            return None
        youngest = max(self._readers.values())
        return max(0.0, youngest + self._read_window - time.monotonic()) + 0.001


#: How long a registration may go without a sign of progress before the guard stops holding
#: other instances' stanzas back. neonize writes its maps before it dials (main.go:613-654: the
#: store open, the device query, ``clients[uuid] = client``), all local work for a SQLite store
#: (one another process holds a lock on is never handed to neonize: ``sqlite_store``); what
#: takes longer is the dial itself. Past this the registration keeps a reader's place (its
#: last map reads, main.go:2529-2530 and 2504, come once the dial is done, unannounced), so other
#: registrations and stops still wait for it, but stanzas go on.
REGISTRATION_PATIENCE = 3.0


class Registration:
    """The guard's hold while one ``Neonize`` call writes, then reads, neonize's maps.

    Taken alone at the start; given up at the first sign that the call is past its maps (a QR
    code, an event, its return), or kept as a reader's place once its writes are surely done
    (``REGISTRATION_PATIENCE``, or whatsmeow's "Dialing" line) until that sign comes.
    """

    def __init__(self, guard: MapGuard, patience: float | None = REGISTRATION_PATIENCE) -> None:
        self._guard = guard
        self._patience = patience
        self._lock = threading.Lock()
        self._release_exclusive: Callable[[], None] | None = None
        self._reader: int | None = None
        self._finished = False
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        self._release_exclusive = self._guard.acquire_exclusive()
        if self._patience is not None:
            self._timer = threading.Timer(self._patience, self.dialing)
            self._timer.daemon = True
            self._timer.start()

    def dialing(self) -> None:
        """The map writes are done; the reads after the dial are still to come.

        Never waits for the lock: ``done(reads_follow=True)`` may hold it while it waits for the
        guard, and this is called from whatsmeow's goroutines, which a Stop may be waiting on.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._finished or self._reader is not None or self._release_exclusive is None:
                return
            release, self._release_exclusive = self._release_exclusive, None
            # Taken before the exclusive side goes, so no writer slips in between.
            self._reader = self._guard.enter_reader_while_exclusive()
            release()
        finally:
            self._lock.release()

    def done(self, *, reads_follow: bool = False) -> None:
        """Past the maps (or, with ``reads_follow``, about to read them once more, briefly)."""
        with self._lock:
            if reads_follow:
                holding = self._release_exclusive is not None
                self._guard.read_window(holding=holding)
            if self._finished:
                return
            self._finished = True
            self._let_go()

    def ended(self) -> None:
        with self._lock:
            self._finished = True
            self._let_go()

    def _let_go(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._release_exclusive is not None:
            self._release_exclusive()
            self._release_exclusive = None
        if self._reader is not None:
            self._guard.leave_reader(self._reader)
            self._reader = None


#: Never set: what a parked Go thread waits on.
_PARKED = threading.Event()


class GuardedFFI:
    """Any ``WhatsAppFFI`` (neonize's, or the stand-in), with neonize's maps guarded.

    Registration and ``Stop`` take the guard alone; ``Stop`` reads and deletes all three maps
    (main.go:586-605), and its Disconnect waits for a dial in progress, which is why a link is
    never stopped while it dials (``link``). Every other export shares it for ``READ_WINDOW``.
    """

    def __init__(self, inner: WhatsAppFFI, guard: MapGuard | None = None) -> None:
        self.inner = inner
        self.guard = guard or MapGuard()
        self.qr_lifetimes = inner.qr_lifetimes
        #: Sessions a Stop was called for (ids are never reused: one per link).
        self._stopping: set[bytes] = set()

    def connect(self, dial: Dial, callbacks: LinkCallbacks) -> str:
        # A PostgreSQL store's open is a network connection (and whatsmeow's upgrade) before the
        # last map write (main.go:621-654): no amount of patience proves it done, so such a
        # registration holds the guard alone until a sign comes.
        patience = None if dial.store.startswith("postgres") else REGISTRATION_PATIENCE
        registration = Registration(self.guard, patience)

        def on_qr(code: str) -> None:
            # The QR loop runs: registration is done, and nothing reads the maps until it ends.
            registration.done()
            callbacks.on_qr(code)

        def on_status(status: str) -> None:
            # The QR loop is ending: CallbackFunction's reads (main.go:2529-2530, FetchMe 2504)
            # come right after this returns. If a Stop has begun for this session, FetchMe
            # would read the client Stop deletes (a nil dereference): the call is parked here
            # for good instead, which is no loss, as a stopped QR link never returns anyway.
            if dial.session_id in self._stopping:
                _PARKED.wait()
            registration.done(reads_follow=True)
            callbacks.on_login_status(status)

        def on_event(code: int, payload: bytes) -> None:
            registration.done()  # events flow from CallbackFunction, past its reads
            callbacks.on_event(code, payload)

        def on_log(entry: bytes) -> None:
            # At debug level whatsmeow logs "Dialing ..." (socket/framesocket.go:104) once
            # neonize has registered the client; the reads after Connect are still to come.
            if b"Dialing" in entry:
                registration.dialing()
            callbacks.on_log(entry)

        guarded = LinkCallbacks(on_qr, on_status, on_event, on_log)
        registration.start()
        try:
            return self.inner.connect(dial, guarded)
        finally:
            registration.ended()

    def set_privacy_setting(self, session_id: bytes, category: str, value: str) -> bytes:
        with self.guard.shared():
            return self.inner.set_privacy_setting(session_id, category, value)

    def get_privacy_settings(self, session_id: bytes) -> bytes:
        with self.guard.shared():
            return self.inner.get_privacy_settings(session_id)

    def pair_phone(self, session_id: bytes, phone: str) -> bytes:
        with self.guard.shared():
            return self.inner.pair_phone(session_id, phone)

    def open_store(self, store: str) -> str:
        # GetAllDevices touches none of neonize's maps (main.go:2376-2402): nothing to guard.
        return self.inner.open_store(store)

    def stop(self, session_id: bytes) -> None:
        self._stopping.add(session_id)
        with self.guard.exclusive():
            self.inner.stop(session_id)
