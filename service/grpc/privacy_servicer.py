"""``wagateway.privacy.v1.PrivacyService``: thin methods over ``service.engine``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from service import engine
from service.engine import Snapshot
from service.grpc import convert
from service.grpc.interceptors import current_principal
from service.instances import Instance, InstanceDirectory
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.base import SettingsChange

Context = aio.ServicerContext[Any, Any]


class PrivacyServicer(pb_grpc.PrivacyServiceServicer):
    def __init__(self, instances: InstanceDirectory) -> None:
        self._instances = instances
        self._watches: set[asyncio.Queue[SettingsChange | None]] = set()

    def end_watches(self) -> None:
        """Ends every watch stream cleanly (the gateway is shutting down)."""
        for queue in self._watches:
            queue.put_nowait(None)

    def _instance(self, name: str) -> Instance:
        return self._instances.authorize(current_principal.get(), name)

    async def GetPrivacySettings(
        self, request: pb.GetPrivacySettingsRequest, context: Context
    ) -> pb.GetPrivacySettingsResponse:
        settings = await engine.read_settings(self._instance(request.instance))
        return pb.GetPrivacySettingsResponse(settings=convert.settings_to_proto(settings))

    async def UpdatePrivacySettings(
        self, request: pb.UpdatePrivacySettingsRequest, context: Context
    ) -> pb.UpdatePrivacySettingsResponse:
        snapshot: Snapshot | None = None
        async for event in self._update(request, context):
            if isinstance(event, Snapshot):
                snapshot = event
        assert snapshot is not None, "the engine always ends with a snapshot"
        if snapshot.error is not None:
            raise snapshot.error
        return convert.update_response(snapshot)

    async def StreamUpdatePrivacySettings(
        self, request: pb.StreamUpdatePrivacySettingsRequest, context: Context
    ) -> AsyncIterator[pb.StreamUpdatePrivacySettingsResponse]:
        async for event in self._update(request, context):
            yield convert.stream_message(event)
            if isinstance(event, Snapshot) and event.error is not None:
                raise event.error

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

    def _update(
        self,
        request: pb.UpdatePrivacySettingsRequest | pb.StreamUpdatePrivacySettingsRequest,
        context: Context,
    ) -> AsyncIterator[engine.Event]:
        instance = self._instance(request.instance)
        requested = convert.requested_from_proto(request.settings)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        return engine.update(instance, requested, deadline=deadline)
