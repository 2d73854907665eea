"""``wagateway.privacy.v1.InstanceService``: instances, their state, and pairing.

On replicas, GetInstance and PairInstance are served by the instance's owner (the guard relays
them there), which names itself in ``Instance.replica``. ListInstances spans owners: this replica
asks each other owner once, at the same time, for its own view (``LIST_TIMEOUT_SECONDS`` at most),
and shows an instance as this replica sees it, with its owner's name, when the owner did not
answer. A ListInstances that was itself forwarded (marked) is answered from here alone, so that
one call never fans out twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from service.cluster.forwarding.grpc import GrpcForwarder
from service.cluster.forwarding.marker import MARKER
from service.cluster.ownership import Peer
from service.errors import GatewayError
from service.gateway import Gateway
from service.grpc import convert
from service.grpc.interceptors import current_caller
from service.instances import Instance
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as pb_grpc

Context = aio.ServicerContext[Any, Any]
#: How long ListInstances waits for the other owners (less when the caller's deadline is nearer).
LIST_TIMEOUT_SECONDS = 2.0


class InstanceServicer(pb_grpc.InstanceServiceServicer):
    def __init__(self, gateway: Gateway, forwarder: GrpcForwarder | None = None) -> None:
        self._gateway = gateway
        self._forwarder = forwarder

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Context
    ) -> pb.ListInstancesResponse:
        visible = current_caller.get().instances()
        ownership = self._gateway.ownership
        if ownership is None:
            return pb.ListInstancesResponse(
                instances=[convert.instance_to_proto(i) for i in visible]
            )
        owners = {i.name: _owner(self._gateway, i) for i in visible}
        views: dict[str, pb.Instance] = {}
        marked = any(key == MARKER for key, _ in context.invocation_metadata() or ())
        peers = {p.replica_id: p for p in owners.values() if isinstance(p, Peer)}
        if peers and not marked and self._forwarder is not None:
            views = await self._ask(list(peers.values()), owners, context)
        return pb.ListInstancesResponse(
            instances=[
                views.get(i.name) or convert.instance_to_proto(i, _replica_name(owners[i.name]))
                for i in visible
            ]
        )

    async def GetInstance(
        self, request: pb.GetInstanceRequest, context: Context
    ) -> pb.GetInstanceResponse:
        instance = current_caller.get().instance(request.instance)
        return pb.GetInstanceResponse(
            instance=convert.instance_to_proto(instance, self._gateway.replica_id)
        )

    async def PairInstance(
        self, request: pb.PairInstanceRequest, context: Context
    ) -> AsyncIterator[pb.PairInstanceResponse]:
        async for event in current_caller.get().pair(request.instance, request.phone):
            if event.jid:
                yield pb.PairInstanceResponse(jid=event.jid)
            elif event.pairing_code:
                yield pb.PairInstanceResponse(pairing_code=event.pairing_code)
            else:
                yield pb.PairInstanceResponse(qr_code=event.qr_code)

    async def _ask(
        self, peers: list[Peer], owners: dict[str, Peer | str], context: Context
    ) -> dict[str, pb.Instance]:
        """Each peer's own view of the instances it owns (by this replica's routing)."""
        assert self._forwarder is not None
        remaining = context.time_remaining()
        seconds = LIST_TIMEOUT_SECONDS
        if remaining is not None:
            seconds = min(remaining, seconds)
        answers = await asyncio.gather(
            *(self._forwarder.list_instances(p, context, seconds) for p in peers)
        )
        views: dict[str, pb.Instance] = {}
        for peer, answer in zip(peers, answers, strict=True):
            if answer is None:
                continue
            for message in answer.instances:
                owner = owners.get(message.name)
                if isinstance(owner, Peer) and owner.replica_id == peer.replica_id:
                    views[message.name] = message
        return views


def _owner(gateway: Gateway, instance: Instance) -> Peer | str:
    """Who serves ``instance``: a peer, this replica's id, or "" while nobody holds it."""
    assert gateway.ownership is not None
    try:
        peer = gateway.ownership.route(instance.name)
    except GatewayError:  # INSTANCE_UNOWNED: its lease is moving
        return ""
    return gateway.ownership.replica_id if peer is None else peer


def _replica_name(owner: Peer | str) -> str:
    return owner.replica_id if isinstance(owner, Peer) else owner
