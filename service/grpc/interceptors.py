"""Authentication, rate limiting and error mapping around every gateway RPC.

The interceptor wraps each handler of the gateway's own services (not health or reflection, which
probes and tools call without a token) so that, in the handler's own task, it authenticates the
``token`` metadata, counts the call against that token's rate limit, exposes the caller through
``current_principal``, and turns any ``GatewayError`` the handler raises into a rich status. The
servicers therefore only raise domain errors and never build a status themselves.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeAlias, cast

import grpc
from grpc import aio

from service.auth import Principal, TokenRegistry
from service.errors import GatewayError
from service.grpc.status import to_status
from service.ratelimit import RateLimiter

log = logging.getLogger(__name__)

GUARDED_PREFIX = "/wagateway."
TOKEN_METADATA_KEY = "token"

current_principal: ContextVar[Principal] = ContextVar("current_principal")

UnaryBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class GuardInterceptor(aio.ServerInterceptor):
    """Token auth, per-token rate limit and error mapping for the gateway's services."""

    def __init__(self, tokens: TokenRegistry, limiter: RateLimiter) -> None:
        self._tokens = tokens
        self._limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(GUARDED_PREFIX):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(cast(UnaryBehavior, handler.unary_unary), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(cast(StreamBehavior, handler.unary_stream), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise NotImplementedError(f"{method}: client-streaming methods are not guarded")

    def _admit(self, context: aio.ServicerContext[Any, Any]) -> None:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == TOKEN_METADATA_KEY:
                token = value if isinstance(value, str) else value.decode()
                break
        principal = self._tokens.authenticate(token)
        current_principal.set(principal)
        self._limiter.check(principal.token_sha256)

    def _guard_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                self._admit(context)
                return await behavior(request, context)
            except GatewayError as error:
                await _abort(context, method, error)

        return guarded

    def _guard_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def guarded(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                self._admit(context)
                async for response in behavior(request, context):
                    yield response
            except GatewayError as error:
                await _abort(context, method, error)

        return guarded


async def _abort(context: aio.ServicerContext[Any, Any], method: str, error: GatewayError) -> None:
    principal = current_principal.get(None)
    log.info(
        "%s by %s: %s %s",
        method,
        principal.label if principal else "anonymous",
        error.code.value,
        error.reason,
    )
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
