"""``wagateway.privacy.v1.PrivacyService``: the wire's messages to and from the application."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from service.engine import Snapshot
from service.gateway import GRPC, Gateway, UpdateInput
from service.grpc import convert
from service.grpc.interceptors import current_caller
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.settings import Settings

Context = aio.ServicerContext[Any, Any]
UpdateMessage = pb.UpdatePrivacySettingsRequest | pb.StreamUpdatePrivacySettingsRequest


class PrivacyServicer(pb_grpc.PrivacyServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def end_watches(self) -> None:
        """Ends every watch stream cleanly (the gateway is shutting down)."""
        self._gateway.end_watches()

    async def GetPrivacySettings(
        self, request: pb.GetPrivacySettingsRequest, context: Context
    ) -> pb.GetPrivacySettingsResponse:
        settings = await current_caller.get().read_settings(request.instance)
        return pb.GetPrivacySettingsResponse(settings=convert.settings_to_proto(settings))

    async def UpdatePrivacySettings(
        self, request: pb.UpdatePrivacySettingsRequest, context: Context
    ) -> pb.UpdatePrivacySettingsResponse:
        handle = await current_caller.get().start_update(_update_input(request, context))
        async with handle:
            plan, snapshot = await handle.outcome()
        return convert.update_response(snapshot, handle.operation_id, plan)

    async def StreamUpdatePrivacySettings(
        self, request: pb.StreamUpdatePrivacySettingsRequest, context: Context
    ) -> AsyncIterator[pb.StreamUpdatePrivacySettingsResponse]:
        handle = await current_caller.get().start_update(_update_input(request, context))
        async with handle:
            async for event in handle.follow():
                yield convert.stream_message(event, handle.operation_id)
                if isinstance(event, Snapshot) and event.error is not None:
                    raise handle.failure(event.error)

    async def GetUpdateOperation(
        self, request: pb.GetUpdateOperationRequest, context: Context
    ) -> pb.GetUpdateOperationResponse:
        row = await current_caller.get().operation(request.instance, request.operation_id)
        return pb.GetUpdateOperationResponse(operation=convert.operation_to_proto(row))

    async def ListUpdateOperations(
        self, request: pb.ListUpdateOperationsRequest, context: Context
    ) -> pb.ListUpdateOperationsResponse:
        page = await current_caller.get().operations(
            request.instance, request.page_size, request.page_token
        )
        return pb.ListUpdateOperationsResponse(
            operations=[convert.operation_to_proto(r) for r in page.operations],
            next_page_token=page.next_page_token,
        )

    async def WatchPrivacySettings(
        self, request: pb.WatchPrivacySettingsRequest, context: Context
    ) -> AsyncIterator[pb.WatchPrivacySettingsResponse]:
        async for item in current_caller.get().watch(request.instance):
            if isinstance(item, Settings):
                yield convert.watch_initial(item)
            else:
                yield convert.watch_change(item)


def _update_input(request: UpdateMessage, context: Context) -> UpdateInput:
    remaining = context.time_remaining()
    return UpdateInput(
        request.instance,
        convert.requested_from_proto(request.settings),
        policy=_policy_name(request.failure_policy),
        force=request.force,
        validate_only=request.validate_only,
        request_id=request.request_id or None,
        deadline=time.monotonic() + remaining if remaining is not None else None,
    )


def _policy_name(number: int) -> str | None:
    """The policy's name without the enum's prefix; an unknown number as its digits."""
    if number == pb.FAILURE_POLICY_UNSPECIFIED:
        return None
    try:
        return pb.FailurePolicy.Name(number).removeprefix(GRPC.policy_prefix)  # type: ignore[arg-type]
    except ValueError:
        return str(number)
