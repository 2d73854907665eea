"""Who owns which instance: the seam between the leases and everything that depends on them.

A replica serves an instance itself only while it holds that instance's lease; a call for any
other instance goes to its owner (``route``). A lease carries a fencing token, a number that
only grows: the journal stamps each write with the token it holds, and a write whose token is
no longer the lease's is refused by the database itself (``FENCE``), so a replica that was
stalled past its lease can never overwrite its successor's records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: The lease tables (``service.cluster.leases`` keeps them). ``expires_at`` is by the database
#: server's clock, so replicas' clocks never matter; ``token`` comes from one sequence.
LEASE_TABLES = """
CREATE TABLE IF NOT EXISTS gateway_replicas (
    replica_id   TEXT PRIMARY KEY,
    grpc_address TEXT NOT NULL,
    http_address TEXT,
    -- The instances its configuration names: an instance goes only to a replica that has it.
    instances    TEXT[] NOT NULL DEFAULT '{}',
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS gateway_lease_tokens;
CREATE TABLE IF NOT EXISTS gateway_leases (
    instance   TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    token      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
"""

#: The condition a fenced write adds to its ``WHERE``: ``$1`` is the instance, ``$2`` the token
#: the writer holds. A token is never reused, so the owner is implied; an expired lease fences
#: too, so a stalled owner cannot write in the gap before another replica takes over. ``FOR
#: SHARE`` locks the lease row until the write commits: a takeover (an ``UPDATE`` of that row)
#: waits for it, so no write checked just before a takeover can commit just after it.
FENCE = (
    "EXISTS (SELECT 1 FROM gateway_leases fence WHERE fence.instance = $1"
    " AND fence.token = $2 AND fence.expires_at > now() FOR SHARE)"
)


@dataclass(frozen=True, slots=True)
class Peer:
    """Another replica, as the others reach it."""

    replica_id: str
    grpc_address: str
    #: None when that replica serves no REST.
    http_address: str | None


class Ownership(Protocol):
    """What the rest of the gateway asks of the leases."""

    @property
    def replica_id(self) -> str:
        """This replica's name."""
        ...

    def route(self, instance: str) -> Peer | None:
        """None if this replica holds ``instance``'s lease and serves it; else its owner.

        Raises the UNAVAILABLE ``INSTANCE_UNOWNED`` (retryable) while no live replica holds it
        (its owner just died and the lease has not moved yet)."""
        ...

    async def lookup(self, instance: str) -> Peer | None:
        """``route``, from the database itself rather than the last view of it: for a call that
        ``route`` found no owner for (a lease that just moved). Raises INSTANCE_UNOWNED too."""
        ...

    def token(self, instance: str) -> int | None:
        """The fencing token of ``instance``'s lease while this replica holds it, else None."""
        ...

    def holds(self, instance: str) -> bool:
        """Whether this replica may act on ``instance`` now: it holds the lease and, by its own
        clock, the lease cannot have expired yet. Checked before every dial and stanza."""
        ...
