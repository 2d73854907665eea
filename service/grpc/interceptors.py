"""Authentication, rate limiting and error mapping around every gateway RPC.

The interceptor wraps each handler of the gateway's own services (not health or reflection, which
probes and tools call without a token) so that, in the handler's own task, it takes a place among
the calls in progress (``Gateway.calls``: TOO_MANY_CALLS past ``max_concurrent_calls``, held
until a stream ends), authenticates the ``token`` metadata and counts the call against that
token's rate limit (``Gateway.admit``), exposes the admitted caller through ``current_caller``,
and turns any ``GatewayError`` the handler raises into a rich status. The servicers therefore
only raise domain errors and never build a status themselves.

A request message that cannot be parsed is a caller's mistake too. grpc deserializes the request
before the handler runs and, when the deserializer raises, answers UNKNOWN and logs a traceback
(``_handle_exceptions`` in grpc's ``_cygrpc/aio/server.pyx.pxi``: "Unexpected [DecodeError]
raised by servicer method"). So the handler's deserializer is wrapped: a message that does not
parse becomes a ``Malformed`` stand-in, and the guarded handler, once the caller is admitted,
answers it INVALID_ARGUMENT MALFORMED_REQUEST like any other mistake.

When the gateway runs as replicas (``Gateway.ownership``), a call for an instance another
replica serves (``FORWARDED``) is admitted by ``Gateway.admit_to`` and, when it says so, relayed
to the owner (``service.cluster.forwarding.grpc``) instead of handed to the servicer; the owner's
messages go back as the bytes it sent (``passthrough``), its status as it sent it.

Each call is also recorded (``service.observability.calls``): counted and logged as one line
once it ends, a stream once its last message is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import grpc
from grpc import aio

from service import errors
from service.cluster.forwarding.grpc import GrpcForwarder, Relayed
from service.cluster.forwarding.marker import MARKER
from service.errors import GatewayError
from service.gateway import GRPC, Forward, Gateway
from service.gateway.caller import Caller
from service.gateway.rules import TOKEN_KEY
from service.grpc.status import to_status
from service.observability import calls
from service.observability.calls import Call

GUARDED_PREFIX = "/wagateway."

current_caller: ContextVar[Caller] = ContextVar("current_caller")

_PRIVACY = "/wagateway.privacy.v1.PrivacyService/"
_INSTANCES = "/wagateway.privacy.v1.InstanceService/"
#: The methods served by the instance's owner: a replica that does not own it relays them.
#: Operations are read from the shared journal by any replica; ListInstances spans owners
#: (``Caller.list_instances`` asks each).
FORWARDED = frozenset(
    {
        _PRIVACY + "GetPrivacySettings",
        _PRIVACY + "UpdatePrivacySettings",
        _PRIVACY + "StreamUpdatePrivacySettings",
        _PRIVACY + "WatchPrivacySettings",
        _INSTANCES + "GetInstance",
        _INSTANCES + "PairInstance",
    }
)

UnaryBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


@dataclass(frozen=True, slots=True)
class Malformed:
    """What a request that did not parse is handed to the handler as."""

    message_type: str


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning ``Malformed`` where it would raise (see the module's doc)."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = str(getattr(descriptor, "full_name", "request"))

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # DecodeError, and whatever else a parser may raise on hostile bytes
            return Malformed(message_type)

    return deserialize


class GuardInterceptor(aio.ServerInterceptor):
    """Call limit, token auth, per-token rate limit and error mapping for the gateway's services."""

    def __init__(self, gateway: Gateway, forwarder: GrpcForwarder | None = None) -> None:
        """``forwarder``: how calls reach their owners; needed when ``gateway.ownership`` is."""
        if gateway.ownership is not None and forwarder is None:
            raise ValueError("a gateway with ownership forwards: give it a forwarder")
        self._gateway = gateway
        self._forwarder = forwarder

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(GUARDED_PREFIX):
            return handler
        forwarded = self._forwarder is not None and method in FORWARDED
        serializer = handler.response_serializer
        if forwarded:
            serializer = passthrough(serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(cast(UnaryBehavior, handler.unary_unary), method, forwarded),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(cast(StreamBehavior, handler.unary_stream), method, forwarded),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=serializer,
            )
        raise NotImplementedError(f"{method}: client-streaming methods are not guarded")

    def _begin(self, method: str, request: Any) -> Call:
        # Every guarded request but ListInstances names an instance.
        instance = getattr(request, "instance", None)
        return calls.begin("grpc", method, instance, self._gateway.instances)

    async def _admit(
        self, request: Any, context: aio.ServicerContext[Any, Any], call: Call, forwarded: bool
    ) -> Forward | None:
        """Admits the caller (``current_caller``), or says where the call is relayed to."""
        token = None
        if forwarded and not isinstance(request, Malformed):
            marked = False
            for key, value in context.invocation_metadata() or ():
                if key == TOKEN_KEY and token is None:
                    token = _text(value)
                elif key == MARKER:
                    marked = True
            admission = await self._gateway.admit_to(token, GRPC, request.instance, marked=marked)
            if isinstance(admission, Forward):
                call.admitted(admission.principal)
                return admission
            caller = admission
        else:
            mark = None
            for key, value in context.invocation_metadata() or ():
                if key == TOKEN_KEY and token is None:
                    token = _text(value)
                elif key == MARKER:
                    mark = _text(value)
            caller = await self._gateway.admit(token, GRPC, mark=mark)
        call.admitted(caller.principal)
        current_caller.set(caller)
        if isinstance(request, Malformed):
            raise errors.MALFORMED_REQUEST.error(message=request.message_type)
        return None

    def _guard_unary(self, behavior: UnaryBehavior, method: str, forwarded: bool) -> UnaryBehavior:
        async def guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            call = self._begin(method, request)
            try:
                with self._gateway.calls.held():
                    forward = await self._admit(request, context, call, forwarded)
                    if forward is not None:
                        assert self._forwarder is not None
                        return await self._forwarder.unary(forward, method, request, context)
                    return await behavior(request, context)
            except (GatewayError, Relayed) as answer:
                await _answer(context, call, answer)
            except BaseException as exc:
                call.interrupted(exc, _ended_by(exc, context))
                raise
            finally:
                calls.finish(call, self._gateway.metrics)

        return guarded

    def _guard_stream(
        self, behavior: StreamBehavior, method: str, forwarded: bool
    ) -> StreamBehavior:
        async def guarded(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = self._begin(method, request)
            try:
                with self._gateway.calls.held():
                    forward = await self._admit(request, context, call, forwarded)
                    if forward is not None:
                        assert self._forwarder is not None
                        responses = self._forwarder.stream(forward, method, request, context)
                    else:
                        responses = behavior(request, context)
                    async for response in responses:
                        yield response
            except (GatewayError, Relayed) as answer:
                await _answer(context, call, answer)
            except BaseException as exc:
                call.interrupted(exc, _ended_by(exc, context))
                raise
            finally:
                calls.finish(call, self._gateway.metrics)

        return guarded


def passthrough(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serializer``, sending bytes (an owner's message, relayed) on as they are."""
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serializer(message)

    return serialize


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode(errors="surrogateescape")


async def _answer(
    context: aio.ServicerContext[Any, Any], call: Call, answer: GatewayError | Relayed
) -> None:
    """Ends the call with the gateway's own error, or with the status its owner sent."""
    if isinstance(answer, Relayed):
        call.code, call.reason = answer.code.name, answer.reason
        await context.abort(answer.code, answer.details, answer.trailing_metadata)
    else:
        call.failed(answer)
        await _abort(context, answer)


async def _abort(context: aio.ServicerContext[Any, Any], error: GatewayError) -> None:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _ended_by(exc: BaseException, context: aio.ServicerContext[Any, Any]) -> str:
    """The status of a call its handler did not answer: the caller left, its deadline passed,
    or the handler raised what grpc reports as UNKNOWN."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return calls.DEADLINE_EXCEEDED if expired else calls.CANCELLED
    return grpc.StatusCode.UNKNOWN.name
