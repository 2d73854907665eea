"""Where the journal commits its next group of writes: on the event loop, or on the writer thread.

A small, pure decision: ``CommitPolicy`` keeps only the times of past commits, read from the clock
it is given, and the number of writes on the writer thread; ``Journal`` tells it of each commit
and asks it before each group.

- Without ``fsync`` a commit is a write into the OS's cache (microseconds). While commits are
  occasional, a group is committed on the event loop itself: no thread hop, so a lone update
  waits least.
- Under sustained load (two commits in a row less than ``BUSY_GAP_SECONDS`` apart) a group of
  more than one write goes to the writer thread, where it grows while the previous one commits;
  a lone write stays on the loop, where it costs one commit rather than a thread hop each way
  (an update waits for each of its writes before its next stanza, so one update alone commits
  one write at a time, back to back). Once two
  commits in a row on the loop took longer than ``SLOW_COMMIT_SECONDS`` (for the
  ``SLOW_COMMIT_MEMORY_SECONDS`` after the second), groups go to the writer thread. Every SQLite
  call lets go of the GIL, and with hundreds of stanza threads waiting for it the loop gets it
  back late each time; on the writer thread, groups also grow while the previous one commits.
- With ``fsync`` a commit waits for the disk, so every group goes to the writer thread.
- Groups commit in order: once one is on the writer thread, later ones follow it there until it
  has caught up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Commits less than this apart, twice running, mean the load is sustained.
BUSY_GAP_SECONDS = 0.001
#: A commit on the loop slower than this means the GIL is contended; two in a row send groups
#: to the writer thread for the next ``SLOW_COMMIT_MEMORY_SECONDS``.
SLOW_COMMIT_SECONDS = 0.0005
SLOW_COMMIT_MEMORY_SECONDS = 1.0


class CommitPolicy:
    """Decides, from the commits so far, whether the next group commits on the loop.

    ``clock`` is a monotonic clock in seconds (``time.monotonic`` unless a test gives another).
    """

    def __init__(self, *, fsync: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self._fsync = fsync
        self._clock = clock
        #: Writes handed to the writer thread whose commit has not yet been reported.
        self._on_writer = 0
        self._last_commit = float("-inf")
        #: The time between the last two commits.
        self._last_gap = float("inf")
        #: Until when groups go to the writer thread because loop commits got slow.
        self._slow_until = float("-inf")
        self._slow_streak = 0

    def on_loop(self, *, lone: bool = False) -> bool:
        """Whether the next group commits on the loop (else it goes to the writer thread);
        ``lone``: the group is a single write."""
        if self._fsync or self._on_writer:
            return False
        now = self._clock()
        if now < self._slow_until:
            return False
        if lone:
            return True
        busy = now - self._last_commit < BUSY_GAP_SECONDS and self._last_gap < BUSY_GAP_SECONDS
        return not busy

    def loop_commit_starts(self) -> float:
        """A group starts committing on the loop: the time, to hand to ``committed_on_loop``."""
        return self._clock()

    def committed_on_loop(self, started: float) -> None:
        """The group that started committing on the loop at ``started`` has committed."""
        now = self._committed()
        slow = now - started > SLOW_COMMIT_SECONDS
        self._slow_streak = self._slow_streak + 1 if slow else 0
        if self._slow_streak >= 2:  # twice running: not a one-off stall
            self._slow_until = now + SLOW_COMMIT_MEMORY_SECONDS

    def sent_to_writer(self, writes: int) -> None:
        """A group of ``writes`` writes went to the writer thread."""
        self._on_writer += writes

    def committed_on_writer(self, writes: int) -> None:
        """``writes`` of the writes sent to the writer thread have committed (told on the loop)."""
        self._on_writer -= writes
        self._committed()

    def _committed(self) -> float:
        now = self._clock()
        self._last_gap, self._last_commit = now - self._last_commit, now
        return now
