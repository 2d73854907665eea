"""Leases in a real PostgreSQL: one owner per instance, takeover after the TTL, fencing tokens
that only grow, a stalled or cut-off replica stopping before anyone else may start.

Each ``Leases`` here is one replica's (its own pool), as in separate processes; the process-level
tests (tests/cluster/test_replicas.py) kill, stop and resume real gateway processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import pytest

from service.cluster.database import open_pool
from service.errors import GatewayError
from tests.helpers.lease_replicas import INSTANCES, TIMING, MakeReplica, Replica
from tests.helpers.postgres import running_server


async def eventually(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check`` held; fails after ``within``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def held_by(*replicas: Replica) -> dict[str, list[str]]:
    return {i: [r.name for r in replicas if r.leases.holds(i)] for i in INSTANCES}


async def test_a_lone_replica_serves_every_instance(lease_replicas: MakeReplica) -> None:
    a = await lease_replicas("a")

    assert a.serving == set(INSTANCES)
    assert all(a.leases.route(i) is None for i in INSTANCES)


async def test_every_instance_has_exactly_one_owner_while_replicas_join(
    lease_replicas: MakeReplica,
) -> None:
    a = await lease_replicas("a")
    b = await lease_replicas("b")
    c = await lease_replicas("c")
    deadline = time.monotonic() + TIMING.settle + 6 * TIMING.renew + 1.0
    shares: set[tuple[int, int, int]] = set()
    while time.monotonic() < deadline:
        for owners in held_by(a, b, c).values():
            assert len(owners) <= 1, "two replicas serving one instance"
        shares.add((len(a.serving), len(b.serving), len(c.serving)))
        await asyncio.sleep(0.01)
    # Once b and c have settled, each serves its rendezvous share and nothing is unserved.
    assert all(len(owners) == 1 for owners in held_by(a, b, c).values())
    assert len(b.serving) > 0
    assert len(c.serving) > 0
    assert a.serving | b.serving | c.serving == set(INSTANCES)
    # The others route there.
    for instance in INSTANCES:
        owner = next(r for r in (a, b, c) if r.leases.holds(instance))
        for other in {a, b, c} - {owner}:
            peer = other.leases.route(instance)
            assert peer is not None
            assert peer.replica_id == owner.name


async def test_a_dead_replicas_instances_are_taken_over_after_the_ttl(
    lease_replicas: MakeReplica,
) -> None:
    a = await lease_replicas("a")
    b = await lease_replicas("b")
    first_tokens = {i: a.tokens[i][-1] for i in INSTANCES}

    a.crash()
    crashed = time.monotonic()
    took = await eventually(lambda: b.serving == set(INSTANCES), TIMING.ttl + 5 * TIMING.renew)

    assert took >= TIMING.ttl - TIMING.renew  # not before a's leases could have expired
    assert took <= TIMING.ttl + 3 * TIMING.renew
    print(f"takeover after a crash: {took:.2f} s (ttl {TIMING.ttl} s, renew {TIMING.renew} s)")
    # a's watchdog is gone with its tasks; what it would trust has lapsed by its own clock too.
    assert time.monotonic() - crashed >= TIMING.trust
    assert not any(a.leases.holds(i) for i in INSTANCES)
    assert all(b.tokens[i][-1] > first_tokens[i] for i in INSTANCES), "tokens only grow"


async def test_a_released_lease_is_taken_at_once(lease_replicas: MakeReplica) -> None:
    a = await lease_replicas("a")
    b = await lease_replicas("b")

    await a.leases.close(release=True)
    took = await eventually(lambda: b.serving == set(INSTANCES), TIMING.ttl)

    # Well before the TTL: the release is NOTIFYed and b runs a round at once.
    assert took < TIMING.renew + 0.3
    assert a.serving == set()


async def test_a_stalled_replica_stops_trusting_its_leases_before_they_can_expire(
    lease_replicas: MakeReplica,
) -> None:
    """A replica resumed after a stop longer than its trust must refuse at once: ``holds`` is
    checked against its own clock, before any task of its own has had a chance to run."""
    offset = 0.0
    a = await lease_replicas("a", clock=lambda: time.monotonic() + offset)
    assert a.leases.holds(INSTANCES[0])

    offset = TIMING.trust  # as if the process had been stopped that long

    assert not a.leases.holds(INSTANCES[0])
    assert a.leases.token(INSTANCES[0]) is None
    await eventually(lambda: a.serving == set(), TIMING.renew)


async def test_a_replica_cut_off_from_the_database_stops_before_another_may_start() -> None:
    with running_server() as server:
        pool = await open_pool(server.new_database())
        a = Replica("a", pool, time.monotonic)
        await a.leases.start()
        renewed = time.monotonic()
        assert a.serving == set(INSTANCES)

        server.pause()  # nothing answers; connections stay open
        await eventually(lambda: a.serving == set(), TIMING.ttl + 1.0)

        stopped_after = max(a.lost_at.values()) - renewed
        # Stopped within its trust (plus one watchdog tick), so before the server's expiry.
        assert stopped_after < TIMING.ttl
        print(f"cut-off replica stopped serving after {stopped_after:.2f} s (ttl {TIMING.ttl} s)")
        server.resume()
        a.crash()
        await a.leases.close(release=False)
        await pool.close()


async def test_a_stale_owner_cannot_renew_a_lease_another_replica_took(
    lease_replicas: MakeReplica, database_url: str
) -> None:
    a = await lease_replicas("a")
    instance = INSTANCES[0]
    stale = a.tokens[instance][-1]
    connection = await asyncpg.connect(database_url)
    try:
        # Another replica took it after a's lease expired (as after a stop).
        await connection.execute(
            "UPDATE gateway_leases SET owner = 'z', token = nextval('gateway_lease_tokens'),"
            " expires_at = now() + interval '1 hour' WHERE instance = $1",
            instance,
        )
        await eventually(lambda: instance not in a.serving, 3 * TIMING.renew)
        row = await connection.fetchrow(
            "SELECT owner, token FROM gateway_leases WHERE instance = $1", instance
        )
    finally:
        await connection.close()
    assert row is not None
    assert row["owner"] == "z"
    assert row["token"] > stale
    with pytest.raises(GatewayError) as refused:
        a.leases.route(instance)  # z is not a live replica: nobody to forward to
    assert refused.value.reason == "INSTANCE_UNOWNED"


async def test_replicas_configured_with_different_instances_each_serve_only_their_own(
    lease_replicas: MakeReplica,
) -> None:
    """An instance goes only to a replica whose configuration has it, and once the replicas
    have settled nothing moves back and forth."""
    only_a, shared, only_b = INSTANCES[:4], INSTANCES[4:8], INSTANCES[8:]
    a = await lease_replicas("a", instances=only_a + shared)
    b = await lease_replicas("b", instances=shared + only_b)
    await eventually(lambda: a.serving | b.serving == set(INSTANCES), TIMING.ttl * 3)
    await asyncio.sleep(TIMING.settle + 4 * TIMING.renew)  # both settled: the spread is final
    taken = a.acquired + b.acquired

    await asyncio.sleep(6 * TIMING.renew)

    assert set(only_a) <= a.serving
    assert set(only_b) <= b.serving
    assert not a.serving & b.serving
    assert a.serving | b.serving == set(INSTANCES)
    assert a.acquired + b.acquired == taken, "leases moved back and forth"


async def test_a_lease_given_back_still_fences_the_writes_of_the_updates_that_are_ending(
    lease_replicas: MakeReplica,
) -> None:
    """While an instance is being given up (``on_lost`` waits for its updates to end), nothing
    new may start on it, but its updates' last writes still carry the lease's token."""
    a = await lease_replicas("a")
    seen: dict[str, tuple[bool, int | None]] = {}

    async def lost(name: str) -> None:
        seen[name] = (a.leases.holds(name), a.leases.token(name))

    a.leases._on_lost = lost
    tokens = {i: a.leases.token(i) for i in INSTANCES}
    await a.leases.close(release=True)

    assert seen == {i: (False, tokens[i]) for i in INSTANCES}
    assert all(a.leases.token(i) is None for i in INSTANCES)  # forgotten once they ended
