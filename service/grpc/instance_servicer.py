"""``wagateway.privacy.v1.InstanceService``: instances, their state, and pairing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from service.grpc import convert
from service.grpc.interceptors import current_caller
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as pb_grpc

Context = aio.ServicerContext[Any, Any]


class InstanceServicer(pb_grpc.InstanceServiceServicer):
    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Context
    ) -> pb.ListInstancesResponse:
        visible = current_caller.get().instances()
        return pb.ListInstancesResponse(instances=[convert.instance_to_proto(i) for i in visible])

    async def GetInstance(
        self, request: pb.GetInstanceRequest, context: Context
    ) -> pb.GetInstanceResponse:
        instance = current_caller.get().instance(request.instance)
        return pb.GetInstanceResponse(instance=convert.instance_to_proto(instance))

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
