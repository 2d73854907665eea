"""Calling the update and operation RPCs, and reading what came back, as the tests of
``tests/operations`` do (they were one module, ``test_operations.py``).

What the stream reported, what the journal recorded and what "WhatsApp" (the simulated session)
holds must agree exactly; these read each of them the same way in every module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import pytest
from grpc import aio

from service.auth import hash_token
from service.engine import FieldState
from service.grpc.convert import field_from_proto, settings_to_proto, state_from_proto
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.simulated import DEFAULT_SETTINGS, SentStanza, SimulatedSession
from service.settings import Field, Settings
from tests.helpers.harness import SALES_TOKEN, Harness

REFUSAL = "privacy value not allowed for this account"
#: Seconds any wait in these tests may take before the test gives up.
TIMEOUT = 10.0

Messages = list[pb.StreamUpdatePrivacySettingsResponse]
StreamCall = aio.UnaryStreamCall[
    pb.StreamUpdatePrivacySettingsRequest, pb.StreamUpdatePrivacySettingsResponse
]

PROGRESS_STATES = (pb.FIELD_STATE_STARTED, pb.FIELD_STATE_RESTORE_STARTED)


def _defaults_plus(settings: Settings, fields: Iterable[Field]) -> Settings:
    """A fresh account's settings with ``fields`` changed to their value in ``settings``."""
    return Settings({**DEFAULT_SETTINGS, **{f: settings[f] for f in fields}})


def _latency_instances(latency_ms: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "sales",
            "account": "acme",
            "token_sha256": hash_token(SALES_TOKEN),
            "latency_ms": latency_ms,
        },
        {"name": "support", "account": "acme", "latency_ms": latency_ms},
    ]


# -- calling the gateway -----------------------------------------------------------------------


async def _unary(
    harness: Harness,
    settings: Settings,
    *,
    instance: str = "sales",
    token: str | None = None,
    rpc_timeout: float = TIMEOUT,
    **options: Any,
) -> pb.UpdatePrivacySettingsResponse:
    return await harness.stub.UpdatePrivacySettings(
        pb.UpdatePrivacySettingsRequest(
            instance=instance, settings=settings_to_proto(settings), **options
        ),
        metadata=harness.metadata(token),
        timeout=rpc_timeout,
    )


def _stream(
    harness: Harness,
    settings: Settings,
    *,
    instance: str = "sales",
    token: str | None = None,
    rpc_timeout: float = TIMEOUT,
    **options: Any,
) -> StreamCall:
    return harness.stub.StreamUpdatePrivacySettings(
        pb.StreamUpdatePrivacySettingsRequest(
            instance=instance, settings=settings_to_proto(settings), **options
        ),
        metadata=harness.metadata(token),
        timeout=rpc_timeout,
    )


async def _drain(call: StreamCall) -> tuple[Messages, aio.AioRpcError | None]:
    """The rest of a stream (read with ``read()``) and the error it closed with, if any."""
    messages: Messages = []
    try:
        while (message := await call.read()) is not aio.EOF:
            assert isinstance(message, pb.StreamUpdatePrivacySettingsResponse)
            messages.append(message)
    except aio.AioRpcError as error:
        return messages, error
    return messages, None


async def _rpc_error(awaitable: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await awaitable
    return raised.value


async def _get_operation(
    harness: Harness, operation_id: str, instance: str = "sales", token: str | None = None
) -> pb.UpdateOperation:
    response = await harness.stub.GetUpdateOperation(
        pb.GetUpdateOperationRequest(instance=instance, operation_id=operation_id),
        metadata=harness.metadata(token),
        timeout=TIMEOUT,
    )
    return response.operation


async def _list_page(
    harness: Harness,
    page_size: int = 0,
    page_token: str = "",
    instance: str = "sales",
    token: str | None = None,
) -> pb.ListUpdateOperationsResponse:
    return await harness.stub.ListUpdateOperations(
        pb.ListUpdateOperationsRequest(
            instance=instance, page_size=page_size, page_token=page_token
        ),
        metadata=harness.metadata(token),
        timeout=TIMEOUT,
    )


async def _listed_ids(harness: Harness, instance: str = "sales") -> list[str]:
    """Every recorded operation of ``instance``, newest first (one page of up to 100)."""
    page = await _list_page(harness, 100, instance=instance)
    assert page.next_page_token == ""
    return [o.id for o in page.operations]


async def _wait_until_ended(harness: Harness, operation_id: str) -> pb.UpdateOperation:
    """Polls GetUpdateOperation until the operation is no longer RUNNING."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        operation = await _get_operation(harness, operation_id)
        if operation.state != pb.OPERATION_STATE_RUNNING:
            return operation
        assert time.monotonic() < deadline, f"operation {operation_id} still RUNNING"
        await asyncio.sleep(0.05)


# -- reading what came back --------------------------------------------------------------------


def _plan(messages: Messages) -> pb.UpdatePlan:
    assert messages, "the stream sent nothing"
    assert messages[0].WhichOneof("event") == "plan"
    return messages[0].plan


def _snapshot(messages: Messages) -> pb.PrivacySettings:
    assert messages[-1].WhichOneof("event") == "snapshot"
    return messages[-1].snapshot


def _updates(messages: Messages) -> list[pb.FieldUpdate]:
    middle = messages[1:-1]
    assert all(m.WhichOneof("event") == "field" for m in middle)
    return [m.field for m in middle]


def _finals(updates: Sequence[pb.FieldUpdate]) -> list[pb.FieldUpdate]:
    """The final outcome events (no STARTED, no RESTORE_STARTED)."""
    return [u for u in updates if u.state not in PROGRESS_STATES]


def _transitions(updates: Sequence[pb.FieldUpdate]) -> list[tuple[Field, FieldState]]:
    return [(field_from_proto(u.field), state_from_proto(u.state)) for u in updates]


def _sets(session: SimulatedSession) -> list[SentStanza]:
    return [s for s in session.sent if s.category is not None]
