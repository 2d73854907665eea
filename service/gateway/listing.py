"""Listing instances across replicas: who serves each one, and each owner's own view of it.

One process shows every instance as it sees it. Replicas ask each other owner once, at the same
time, for its own view (``LIST_TIMEOUT_SECONDS`` at most, less when the caller's deadline is
nearer), and show an instance as this replica sees it, with its owner's name, when the owner did
not answer. A listing that was itself forwarded (``marked``) is answered from here alone, so that
one call never fans out twice.

How a peer is asked is the edge's (``AskPeer``): it relays the caller's call there and hands back
the owner's views as they came, ``V`` to this layer, which only chooses among them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.cluster.ownership import Ownership, Peer
from service.errors import GatewayError
from service.instances import Instance

#: How long a listing waits for the other owners (less when the caller's deadline is nearer).
LIST_TIMEOUT_SECONDS = 2.0

V = TypeVar("V")

#: Asks ``peer`` (within the seconds given) for its own view of the instances the caller may
#: see, each as ``(name, view)``; None if it did not answer.
AskPeer = Callable[[Peer, float], Awaitable[Iterable[tuple[str, V]] | None]]


@dataclass(frozen=True, slots=True)
class ListedInstance(Generic[V]):
    """One instance of a listing: its owner's own ``view`` when the owner is another replica
    that answered; otherwise (``view`` None) as this replica sees ``instance``, served by
    ``replica`` (this replica's id, a peer's, or "": one process, or nobody while its lease
    moves)."""

    instance: Instance
    replica: str
    view: V | None = None


async def across_replicas(
    ownership: Ownership | None,
    visible: list[Instance],
    ask: AskPeer[V] | None,
    *,
    marked: bool = False,
    time_remaining: float | None = None,
) -> list[ListedInstance[V]]:
    """``visible``, in its order, each as its owner shows it (see the module's docstring);
    ``ask`` None: no peer is asked, as for a ``marked`` listing."""
    if ownership is None:
        return [ListedInstance(i, "") for i in visible]
    owners = {i.name: _owner(ownership, i) for i in visible}
    peers = {p.replica_id: p for p in owners.values() if isinstance(p, Peer)}
    views: dict[str, V] = {}
    if peers and not marked and ask is not None:
        views = await _ask(ask, list(peers.values()), owners, time_remaining)
    return [ListedInstance(i, _replica_name(owners[i.name]), views.get(i.name)) for i in visible]


async def _ask(
    ask: AskPeer[V],
    peers: list[Peer],
    owners: dict[str, Peer | str],
    time_remaining: float | None,
) -> dict[str, V]:
    """Each peer's own view of the instances it owns (by this replica's routing)."""
    seconds = LIST_TIMEOUT_SECONDS
    if time_remaining is not None:
        seconds = min(time_remaining, seconds)
    answers = await asyncio.gather(*(ask(p, seconds) for p in peers))
    views: dict[str, V] = {}
    for peer, answer in zip(peers, answers, strict=True):
        if answer is None:
            continue
        for name, view in answer:
            owner = owners.get(name)
            if isinstance(owner, Peer) and owner.replica_id == peer.replica_id:
                views[name] = view
    return views


def _owner(ownership: Ownership, instance: Instance) -> Peer | str:
    """Who serves ``instance``: a peer, this replica's id, or "" while nobody holds it."""
    try:
        peer = ownership.route(instance.name)
    except GatewayError:  # INSTANCE_UNOWNED: its lease is moving
        return ""
    return ownership.replica_id if peer is None else peer


def _replica_name(owner: Peer | str) -> str:
    return owner.replica_id if isinstance(owner, Peer) else owner
