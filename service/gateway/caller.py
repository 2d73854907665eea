"""What an admitted caller can do: the application API both edges call.

An edge parses its wire, admits the caller once (``Gateway.admit``), calls one method here and
renders what comes back. Everything in between (who may act on which instance, the contract's
rules for what was sent, starting and following updates, pages of operations) happens here
once, so gRPC and REST cannot drift apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service import engine, errors
from service.auth import Principal
from service.engine import UpdateOptions
from service.gateway import listing, rules
from service.gateway.listing import AskPeer, ListedInstance, V
from service.gateway.rules import WireNames
from service.gateway.updates import UpdateHandle, UpdateInput
from service.instances import Instance
from service.observability import calls
from service.operations import OperationRecord, UpdateRequest
from service.sessions.base import Pairable, PairEvent, SettingsChange
from service.settings import Settings

if TYPE_CHECKING:
    from service.gateway.running import Gateway


@dataclass(frozen=True, slots=True)
class Page:
    """One page of an instance's operations, newest first."""

    operations: list[OperationRecord]
    next_page_token: str


class Caller:
    """One authenticated caller, on one edge (which names its parameters as ``names``)."""

    def __init__(self, gateway: Gateway, principal: Principal, names: WireNames) -> None:
        self._gateway = gateway
        self.principal = principal
        self._names = names

    @property
    def label(self) -> str:
        """Who is calling, as the journal records it (never the token; the logs name the caller
        without the hash prefix: ``service.observability.calls``)."""
        return self.principal.label

    # -- instances -----------------------------------------------------------------------------

    def instance(self, name: str) -> Instance:
        """The instance ``name``, if this caller may act on it."""
        return self._gateway.instances.authorize(self.principal, name)

    def instances(self) -> list[Instance]:
        """The instances this caller may see, in configuration order."""
        return self._gateway.instances.visible_to(self.principal)

    async def list_instances(
        self,
        ask: AskPeer[V] | None = None,
        *,
        marked: bool = False,
        time_remaining: float | None = None,
    ) -> list[ListedInstance[V]]:
        """The instances this caller may see, each with who serves it and, on replicas, as its
        owner shows it (``listing.across_replicas``: ``ask`` reaches a peer, ``marked`` says
        the listing was forwarded, ``time_remaining`` is what is left of the caller's
        deadline)."""
        return await listing.across_replicas(
            self._gateway.ownership,
            self.instances(),
            ask,
            marked=marked,
            time_remaining=time_remaining,
        )

    def pair(self, name: str, phone: str | None) -> AsyncIterator[PairEvent]:
        """Links a WhatsApp account to ``name``: QR codes, or a pairing code for ``phone``."""
        instance = self.instance(name)
        number = rules.phone(phone)
        session = instance.session
        if not isinstance(session, Pairable):
            raise errors.NOT_PAIRABLE.error(instance=instance.name)
        return session.pair(number)

    # -- settings ------------------------------------------------------------------------------

    async def read_settings(self, name: str) -> Settings:
        return await engine.read_settings(self.instance(name))

    async def watch(self, name: str) -> AsyncIterator[Settings | SettingsChange]:
        """The settings now, then each change, until the caller leaves or the gateway stops."""
        instance = self.instance(name)
        queue: asyncio.Queue[SettingsChange | None] = asyncio.Queue()
        unsubscribe = instance.session.subscribe(queue.put_nowait)
        watches = self._gateway.watches
        watches.add(queue)
        try:
            yield await engine.read_settings(instance)
            while (change := await queue.get()) is not None:
                yield change
        finally:
            watches.discard(queue)
            unsubscribe()

    # -- updates -------------------------------------------------------------------------------

    async def start_update(self, update: UpdateInput) -> UpdateHandle:
        """Starts ``update`` (or re-attaches to the operation its request id names)."""
        instance = self.instance(update.instance)
        names = self._names
        request = UpdateRequest(
            engine.validate(update.settings),
            UpdateOptions(
                rules.failure_policy(update.policy, names), update.force, update.validate_only
            ),
            rules.request_id(update.request_id, names),
            self.label,
        )
        operation = await self._gateway.operations.start(instance, request, update.deadline)
        handle = UpdateHandle(
            operation, owned=operation.request is request, deadline=update.deadline
        )
        calls.note_operation(handle.operation_id)
        return handle

    # -- operations ----------------------------------------------------------------------------

    async def operation(self, name: str, operation_id: str) -> OperationRecord:
        record = await self._gateway.operations.get(self.instance(name), operation_id)
        calls.note_operation(record.id)
        return record

    async def operations(self, name: str, page_size: int | str | None, page_token: str) -> Page:
        instance = self.instance(name)
        size = rules.page_size(page_size, self._names)
        rows, token = await self._gateway.operations.list(instance, size, page_token)
        return Page(rows, token)
