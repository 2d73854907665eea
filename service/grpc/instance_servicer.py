"""``wagateway.privacy.v1.InstanceService``: instances, their state, and pairing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from service.errors import Code, GatewayError, Violation
from service.grpc import convert
from service.grpc.interceptors import current_principal
from service.instances import InstanceDirectory
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as pb_grpc
from service.sessions.base import Pairable

Context = aio.ServicerContext[Any, Any]
_PHONE = re.compile(r"^[1-9][0-9]{6,14}$")


class InstanceServicer(pb_grpc.InstanceServiceServicer):
    def __init__(self, instances: InstanceDirectory) -> None:
        self._instances = instances

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Context
    ) -> pb.ListInstancesResponse:
        visible = self._instances.visible_to(current_principal.get())
        return pb.ListInstancesResponse(instances=[convert.instance_to_proto(i) for i in visible])

    async def GetInstance(
        self, request: pb.GetInstanceRequest, context: Context
    ) -> pb.GetInstanceResponse:
        instance = self._instances.authorize(current_principal.get(), request.instance)
        return pb.GetInstanceResponse(instance=convert.instance_to_proto(instance))

    async def PairInstance(
        self, request: pb.PairInstanceRequest, context: Context
    ) -> AsyncIterator[pb.PairInstanceResponse]:
        instance = self._instances.authorize(current_principal.get(), request.instance)
        if request.phone and not _PHONE.match(request.phone):
            raise GatewayError(
                Code.INVALID_ARGUMENT,
                "phone must be the number in international format, digits only "
                "(for example 5511999999999)",
                "INVALID_PHONE",
                violations=(Violation("phone", "7 to 15 digits, not starting with 0"),),
            )
        session = instance.session
        if not isinstance(session, Pairable):
            raise GatewayError(
                Code.FAILED_PRECONDITION,
                f"Instance {instance.name} is simulated: it has no WhatsApp account to pair",
                "NOT_PAIRABLE",
                {"instance": instance.name},
            )
        async for event in session.pair(request.phone or None):
            if event.jid:
                yield pb.PairInstanceResponse(jid=event.jid)
            elif event.pairing_code:
                yield pb.PairInstanceResponse(pairing_code=event.pairing_code)
            else:
                yield pb.PairInstanceResponse(qr_code=event.qr_code)
