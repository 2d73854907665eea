"""Which live replica should own an instance: rendezvous (highest random weight) hashing.

Every replica computes the same answer from the same list of live replicas, with no
coordination; when a replica joins, only the instances it now scores highest on move to it (about
1/N of them), and when one leaves only its own instances move, each to its runner-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(instance: str, replica: str) -> int:
    """A stable pseudo-random score of ``replica`` for ``instance`` (the same on every host and
    Python: ``hash()`` is salted per process, so it cannot be used)."""
    digest = hashlib.blake2b(f"{instance}\0{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_for(instance: str, replicas: Iterable[str]) -> str | None:
    """The replica that should own ``instance`` among ``replicas``; None if there are none."""
    return max(replicas, key=lambda replica: (weight(instance, replica), replica), default=None)
