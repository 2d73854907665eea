"""``wagateway.privacy.v1.PrivacyService``: thin methods over the engine and the operations."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from grpc import aio

from service import engine
from service.engine import FailurePolicy, Snapshot, UpdateOptions
from service.errors import Code, GatewayError, Violation
from service.gateway import Gateway
from service.grpc import convert
from service.grpc.interceptors import current_principal
from service.instances import Instance
from service.operations import Operation, UpdateRequest, caller_left
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.base import SettingsChange

Context = aio.ServicerContext[Any, Any]
UpdateMessage = pb.UpdatePrivacySettingsRequest | pb.StreamUpdatePrivacySettingsRequest
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
_POLICIES: dict[int, FailurePolicy] = {
    pb.FAILURE_POLICY_UNSPECIFIED: FailurePolicy.STOP,
    pb.FAILURE_POLICY_STOP: FailurePolicy.STOP,
    pb.FAILURE_POLICY_CONTINUE: FailurePolicy.CONTINUE,
    pb.FAILURE_POLICY_ROLLBACK: FailurePolicy.ROLLBACK,
}


class PrivacyServicer(pb_grpc.PrivacyServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._watches: set[asyncio.Queue[SettingsChange | None]] = set()

    def end_watches(self) -> None:
        """Ends every watch stream cleanly (the gateway is shutting down)."""
        for queue in self._watches:
            queue.put_nowait(None)

    def _instance(self, name: str) -> Instance:
        return self._gateway.instances.authorize(current_principal.get(), name)

    async def GetPrivacySettings(
        self, request: pb.GetPrivacySettingsRequest, context: Context
    ) -> pb.GetPrivacySettingsResponse:
        settings = await engine.read_settings(self._instance(request.instance))
        return pb.GetPrivacySettingsResponse(settings=convert.settings_to_proto(settings))

    async def UpdatePrivacySettings(
        self, request: pb.UpdatePrivacySettingsRequest, context: Context
    ) -> pb.UpdatePrivacySettingsResponse:
        call = await self._start(request, context)
        operation = call.operation
        try:
            plan, snapshot = await operation.outcome()
        except asyncio.CancelledError:
            call.left()
            raise
        if snapshot.error is not None:
            raise _with_operation(snapshot.error, operation)
        return convert.update_response(snapshot, _operation_id(operation), plan)

    async def StreamUpdatePrivacySettings(
        self, request: pb.StreamUpdatePrivacySettingsRequest, context: Context
    ) -> AsyncIterator[pb.StreamUpdatePrivacySettingsResponse]:
        call = await self._start(request, context)
        operation = call.operation
        operation_id = _operation_id(operation)
        try:
            async for event in operation.follow():
                yield convert.stream_message(event, operation_id)
                if isinstance(event, Snapshot) and event.error is not None:
                    raise _with_operation(event.error, operation)
        except asyncio.CancelledError:
            call.left()
            raise

    async def GetUpdateOperation(
        self, request: pb.GetUpdateOperationRequest, context: Context
    ) -> pb.GetUpdateOperationResponse:
        instance = self._instance(request.instance)
        row = await self._gateway.operations.get(instance, request.operation_id)
        return pb.GetUpdateOperationResponse(operation=convert.operation_to_proto(row))

    async def ListUpdateOperations(
        self, request: pb.ListUpdateOperationsRequest, context: Context
    ) -> pb.ListUpdateOperationsResponse:
        instance = self._instance(request.instance)
        if request.page_size < 0:
            raise GatewayError(
                Code.INVALID_ARGUMENT,
                "page_size cannot be negative",
                "INVALID_PAGE_SIZE",
                violations=(Violation("page_size", "0 (the default, 20) to 100"),),
            )
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        rows, token = await self._gateway.operations.list(instance, size, request.page_token)
        return pb.ListUpdateOperationsResponse(
            operations=[convert.operation_to_proto(r) for r in rows], next_page_token=token
        )

    async def WatchPrivacySettings(
        self, request: pb.WatchPrivacySettingsRequest, context: Context
    ) -> AsyncIterator[pb.WatchPrivacySettingsResponse]:
        instance = self._instance(request.instance)
        queue: asyncio.Queue[SettingsChange | None] = asyncio.Queue()
        unsubscribe = instance.session.subscribe(queue.put_nowait)
        self._watches.add(queue)
        try:
            yield convert.watch_initial(await engine.read_settings(instance))
            while (change := await queue.get()) is not None:
                yield convert.watch_change(change)
        finally:
            self._watches.discard(queue)
            unsubscribe()

    async def _start(self, request: UpdateMessage, context: Context) -> _Call:
        instance = self._instance(request.instance)
        update = UpdateRequest(
            engine.validate(convert.requested_from_proto(request.settings)),
            UpdateOptions(_policy(request.failure_policy), request.force, request.validate_only),
            _request_id(request.request_id),
            current_principal.get().label,
        )
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        operation = await self._gateway.operations.start(instance, update, deadline)
        return _Call(operation, owned=operation.request is update, deadline=deadline)


@dataclass(frozen=True)
class _Call:
    """One call following an operation: its own, or one a retry re-attached to."""

    operation: Operation
    owned: bool
    deadline: float | None

    def left(self) -> None:
        """The caller went away. Only the caller who started the operation may halt it; a retry
        that re-attached just leaves."""
        if self.owned:
            caller_left(self.operation, self.deadline)


def _policy(value: int) -> FailurePolicy:
    policy = _POLICIES.get(value)
    if policy is None:
        raise GatewayError(
            Code.INVALID_ARGUMENT,
            f"Invalid failure_policy value: {value}. Valid values: "
            "FAILURE_POLICY_STOP, FAILURE_POLICY_CONTINUE, FAILURE_POLICY_ROLLBACK",
            "INVALID_VALUE",
            violations=(Violation("failure_policy", "STOP, CONTINUE or ROLLBACK"),),
        )
    return policy


def _request_id(value: str) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise GatewayError(
            Code.INVALID_ARGUMENT,
            f"request_id must be a UUID, not {value!r}",
            "INVALID_REQUEST_ID",
            violations=(Violation("request_id", "a UUID, e.g. from uuid4()"),),
        ) from None


def _operation_id(operation: Operation) -> str:
    return "" if operation.request.options.validate_only else operation.id


def _with_operation(error: GatewayError, operation: Operation) -> GatewayError:
    if not operation.request.options.validate_only:
        error.metadata = {**error.metadata, "operation_id": operation.id}
    return error
