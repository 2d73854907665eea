"""``wagateway.privacy.v1.InstanceService``: instances, their state, and pairing.

On replicas, GetInstance and PairInstance are served by the instance's owner (the guard relays
them there), which names itself in ``Instance.replica``. ListInstances spans owners
(``service.gateway.listing``: which owner to ask, how long to wait, whose view to show); here it
only asks a peer, by relaying the call (``GrpcForwarder.list_instances``), and renders the list,
an owner's own messages as they came.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from service.cluster.forwarding.grpc import GrpcForwarder
from service.cluster.forwarding.marker import MARKER
from service.cluster.ownership import Peer
from service.gateway import AskPeer, Gateway
from service.grpc import convert
from service.grpc.interceptors import current_caller
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as pb_grpc

Context = aio.ServicerContext[Any, Any]


class InstanceServicer(pb_grpc.InstanceServiceServicer):
    def __init__(self, gateway: Gateway, forwarder: GrpcForwarder | None = None) -> None:
        self._gateway = gateway
        self._forwarder = forwarder

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Context
    ) -> pb.ListInstancesResponse:
        marked = any(key == MARKER for key, _ in context.invocation_metadata() or ())
        listed = await current_caller.get().list_instances(
            self._asker(context), marked=marked, time_remaining=context.time_remaining()
        )
        return pb.ListInstancesResponse(
            instances=[
                convert.instance_to_proto(i.instance, i.replica) if i.view is None else i.view
                for i in listed
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

    def _asker(self, context: Context) -> AskPeer[pb.Instance] | None:
        """How this call asks a peer for its own view: the same call, relayed (its messages
        kept as the owner sent them)."""
        forwarder = self._forwarder
        if forwarder is None:
            return None

        async def ask(peer: Peer, seconds: float) -> list[tuple[str, pb.Instance]] | None:
            answer = await forwarder.list_instances(peer, context, seconds)
            return None if answer is None else [(m.name, m) for m in answer.instances]

        return ask
