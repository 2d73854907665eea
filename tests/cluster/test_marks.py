"""The marks replicas put on the calls they forward to each other: only one signed with the
deployment's secret vouches for a call; one a caller makes up is just a mark."""

from __future__ import annotations

from service.cluster.forwarding.marker import Marks

SECRET = bytes(range(32))


def test_a_replicas_mark_is_genuine_to_every_replica_of_the_deployment() -> None:
    a, b = Marks(SECRET, "a"), Marks(SECRET, "b")

    assert b.genuine(a.mine)
    assert a.genuine(b.mine)
    assert a.mine.startswith("a.")


def test_a_mark_made_up_or_from_another_deployment_is_not() -> None:
    ours, theirs = Marks(SECRET, "a"), Marks(b"another secret", "a")
    signature = ours.mine.rpartition(".")[2]

    for forged in (
        theirs.mine,  # another deployment's
        "a",  # a replica id alone (what a mark without a secret is)
        f"b.{signature}",  # a's signature under another name
        f"a.{signature[:-1]}0" if signature[-1] != "0" else f"a.{signature[:-1]}1",
        "",
        None,
        "a." + "f" * 1000,
    ):
        assert not ours.genuine(forged), forged
