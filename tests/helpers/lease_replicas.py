"""One replica's leases as tests/cluster/test_leases.py plays it: a ``Leases`` on a pool of its
own, as in a separate process, and what it was told (which instances it served, when it lost
them); the ``lease_replicas`` fixture (tests/cluster/conftest.py) makes them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import asyncpg

from service.cluster.leases import Leases, LeaseTiming
from service.cluster.ownership import Peer

INSTANCES = [f"acct-{n}" for n in range(12)]
TIMING = LeaseTiming(ttl=1.2, renew=0.2, settle=0.6)


class Replica:
    """One replica's leases and what it was told: which instances it served, when."""

    def __init__(
        self,
        name: str,
        pool: asyncpg.Pool,
        clock: Callable[[], float],
        instances: list[str] = INSTANCES,
    ) -> None:
        self.name = name
        self.acquired = 0
        self.serving: set[str] = set()
        self.tokens: dict[str, list[int]] = {}
        self.lost_at: dict[str, float] = {}
        self.leases = Leases(
            pool,
            Peer(name, f"127.0.0.1:{1000 + len(name)}", None),
            instances,
            TIMING,
            on_acquired=self._acquired,
            on_lost=self._lost,
            clock=clock,
        )

    async def _acquired(self, name: str, token: int) -> None:
        self.acquired += 1
        self.serving.add(name)
        self.tokens.setdefault(name, []).append(token)

    async def _lost(self, name: str) -> None:
        self.serving.discard(name)
        self.lost_at[name] = time.monotonic()

    def crash(self) -> None:
        """Stops renewing at once, releasing nothing (a SIGKILL, as the database sees it)."""
        for task in self.leases._tasks:
            task.cancel()


#: The ``lease_replicas`` fixture: starts a replica's leases (``name``, ``clock``, ``instances``).
MakeReplica = Callable[..., Awaitable[Replica]]
