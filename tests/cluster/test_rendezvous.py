"""Rendezvous hashing: every replica agrees, and a joining or leaving replica moves only its
own share of the instances."""

from __future__ import annotations

from service.cluster.rendezvous import owner_for

INSTANCES = [f"instance-{n}" for n in range(2000)]


def test_every_replica_computes_the_same_owner_whatever_the_order() -> None:
    replicas = ["r1", "r2", "r3"]
    for instance in INSTANCES[:200]:
        assert owner_for(instance, replicas) == owner_for(instance, reversed(replicas))


def test_a_joining_replica_takes_only_its_share() -> None:
    before = {i: owner_for(i, ["r1", "r2", "r3"]) for i in INSTANCES}
    after = {i: owner_for(i, ["r1", "r2", "r3", "r4"]) for i in INSTANCES}

    moved = [i for i in INSTANCES if before[i] != after[i]]
    assert all(after[i] == "r4" for i in moved), "only moves to the new replica"
    assert 0.2 < len(moved) / len(INSTANCES) < 0.3  # about a quarter


def test_a_leaving_replica_gives_up_only_its_own_instances() -> None:
    before = {i: owner_for(i, ["r1", "r2", "r3"]) for i in INSTANCES}
    after = {i: owner_for(i, ["r1", "r3"]) for i in INSTANCES}

    assert all(before[i] == after[i] for i in INSTANCES if before[i] != "r2")
    counts = {r: list(after.values()).count(r) for r in ("r1", "r3")}
    assert abs(counts["r1"] - counts["r3"]) < 0.1 * len(INSTANCES)


def test_no_replica_owns_nothing() -> None:
    assert owner_for("x", []) is None
