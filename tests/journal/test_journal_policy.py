"""Where the journal commits its next group, decided by ``CommitPolicy`` on a fake clock.

Each test replays a history of commits at exact times and asks where the next group goes: on
the loop (``on_loop()``) or to the writer thread. No database and no thread: the policy is pure.
"""

from __future__ import annotations

from service.journal.policy import (
    BUSY_GAP_SECONDS,
    SLOW_COMMIT_MEMORY_SECONDS,
    SLOW_COMMIT_SECONDS,
    CommitPolicy,
)
from tests.helpers.clock import FakeClock


def _commit_on_loop(policy: CommitPolicy, clock: FakeClock, taking: float = 0.0) -> None:
    """A group commits on the loop, as ``Journal`` reports it, in ``taking`` seconds."""
    assert policy.on_loop(), "the history being built has this group on the loop"
    started = policy.loop_commit_starts()
    clock.advance(taking)
    policy.committed_on_loop(started)


def _commit_on_writer(policy: CommitPolicy, writes: int = 1) -> None:
    policy.sent_to_writer(writes)
    policy.committed_on_writer(writes)


def test_the_thresholds_are_the_ones_the_journal_was_measured_with() -> None:
    assert BUSY_GAP_SECONDS == 0.001
    assert SLOW_COMMIT_SECONDS == 0.0005
    assert SLOW_COMMIT_MEMORY_SECONDS == 1.0


def test_the_first_group_commits_on_the_loop(policy: CommitPolicy) -> None:
    assert policy.on_loop()


def test_occasional_commits_stay_on_the_loop(policy: CommitPolicy, clock: FakeClock) -> None:
    for _ in range(10):
        _commit_on_loop(policy, clock)
        clock.advance(0.01)

    assert policy.on_loop()


def test_one_commit_soon_after_another_is_not_yet_sustained_load(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    _commit_on_loop(policy, clock)
    clock.advance(BUSY_GAP_SECONDS / 10)

    assert policy.on_loop(), "one short gap: the gap before it was not short"


def test_two_commits_in_a_row_less_than_the_busy_gap_apart_send_groups_to_the_writer(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    _commit_on_loop(policy, clock)
    clock.advance(BUSY_GAP_SECONDS / 10)
    _commit_on_loop(policy, clock)
    clock.advance(BUSY_GAP_SECONDS / 10)

    assert not policy.on_loop()


def test_a_lone_write_stays_on_the_loop_under_sustained_load(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    """One update alone commits one write at a time, back to back: each waits for nobody, and a
    thread hop each way would cost it more than the commit."""
    _commit_on_loop(policy, clock)
    clock.advance(BUSY_GAP_SECONDS / 10)
    _commit_on_loop(policy, clock)
    clock.advance(BUSY_GAP_SECONDS / 10)

    assert policy.on_loop(lone=True)
    assert not policy.on_loop(lone=False)


def test_a_lone_write_still_follows_the_writer_thread_and_slow_commits(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    _commit_on_writer(policy)
    policy.sent_to_writer(1)
    assert not policy.on_loop(lone=True), "order: it follows the writes on the writer thread"
    policy.committed_on_writer(1)
    clock.advance(1.0)
    _commit_on_loop(policy, clock, taking=SLOW_COMMIT_SECONDS * 2)
    _commit_on_loop(policy, clock, taking=SLOW_COMMIT_SECONDS * 2)
    assert not policy.on_loop(lone=True), "a contended GIL slows a lone commit too"


def test_a_short_gap_after_a_long_one_is_not_sustained_load(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    _commit_on_loop(policy, clock)
    clock.advance(1.0)
    _commit_on_loop(policy, clock)
    clock.advance(BUSY_GAP_SECONDS / 10)

    assert policy.on_loop()


def test_commits_exactly_the_busy_gap_apart_are_not_sustained_load(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    _commit_on_loop(policy, clock)
    clock.now = BUSY_GAP_SECONDS
    _commit_on_loop(policy, clock)

    assert policy.on_loop(), "the gap must be less than BUSY_GAP_SECONDS, not equal to it"


def test_sustained_load_ends_once_no_commit_came_for_the_busy_gap(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    _commit_on_loop(policy, clock)
    _commit_on_loop(policy, clock)
    clock.advance(BUSY_GAP_SECONDS / 2)
    assert not policy.on_loop()

    clock.advance(BUSY_GAP_SECONDS / 2)
    assert policy.on_loop()


def test_commits_on_the_writer_thread_count_toward_sustained_load(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    _commit_on_writer(policy)
    clock.advance(BUSY_GAP_SECONDS / 10)
    _commit_on_writer(policy)

    assert not policy.on_loop(), "caught up, but the load that sent them there goes on"
    clock.advance(BUSY_GAP_SECONDS)
    assert policy.on_loop()


def test_groups_follow_the_writer_thread_until_it_has_caught_up(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    policy.sent_to_writer(3)
    policy.sent_to_writer(2)
    clock.advance(1.0)
    assert not policy.on_loop(), "quiet, but five writes are still on the writer thread"

    policy.committed_on_writer(3)
    clock.advance(1.0)
    assert not policy.on_loop(), "two writes are still on the writer thread"

    policy.committed_on_writer(2)
    clock.advance(1.0)
    assert policy.on_loop()


def test_one_slow_commit_on_the_loop_is_a_one_off(policy: CommitPolicy, clock: FakeClock) -> None:
    _commit_on_loop(policy, clock, taking=SLOW_COMMIT_SECONDS * 10)
    clock.advance(0.01)

    assert policy.on_loop()


def test_two_slow_commits_in_a_row_send_groups_to_the_writer_for_a_while(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    _commit_on_loop(policy, clock, taking=SLOW_COMMIT_SECONDS * 2)
    clock.advance(0.01)  # never sustained load: only slowness can move the groups
    _commit_on_loop(policy, clock, taking=SLOW_COMMIT_SECONDS * 2)
    slow_since = clock.now

    clock.advance(0.01)
    assert not policy.on_loop()
    clock.now = slow_since + SLOW_COMMIT_MEMORY_SECONDS * 0.99
    assert not policy.on_loop()
    clock.now = slow_since + SLOW_COMMIT_MEMORY_SECONDS
    assert policy.on_loop(), "the memory of slow commits lasts SLOW_COMMIT_MEMORY_SECONDS"


def test_a_fast_commit_between_two_slow_ones_keeps_groups_on_the_loop(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    for taking in (SLOW_COMMIT_SECONDS * 2, SLOW_COMMIT_SECONDS / 2, SLOW_COMMIT_SECONDS * 2):
        _commit_on_loop(policy, clock, taking=taking)
        clock.advance(0.01)

    assert policy.on_loop(), "slow twice running, not twice in all"


def test_commits_taking_exactly_the_slow_threshold_are_not_slow(
    policy: CommitPolicy, clock: FakeClock
) -> None:
    # Back to back from 0, so that each takes exactly SLOW_COMMIT_SECONDS in floating point.
    _commit_on_loop(policy, clock, taking=SLOW_COMMIT_SECONDS)
    _commit_on_loop(policy, clock, taking=SLOW_COMMIT_SECONDS)
    assert clock.now - SLOW_COMMIT_SECONDS == SLOW_COMMIT_SECONDS
    clock.now = 0.5  # past the busy gap, within what slow commits would be remembered for

    assert policy.on_loop(), "a commit must take longer than SLOW_COMMIT_SECONDS to be slow"


def test_with_fsync_every_group_goes_to_the_writer_thread(clock: FakeClock) -> None:
    policy = CommitPolicy(fsync=True, clock=clock)
    assert not policy.on_loop(), "even the first"

    _commit_on_writer(policy)
    clock.advance(3600)
    assert not policy.on_loop(), "even after an hour of quiet"
