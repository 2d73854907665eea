"""The REST contract, served by aiohttp in the gateway's own process and event loop.

A thin adapter: it authenticates the ``token`` header with the same registry and rate limit as
gRPC, validates the body as the contract says, and runs the same engine on the same instances, so
a REST update and a gRPC update see each other's results and queue behind each other.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from service import engine
from service.auth import Principal
from service.engine import Snapshot
from service.errors import Code, GatewayError
from service.gateway import Gateway
from service.http import body as request_body
from service.http import responses
from service.http.body import MAX_BODY_BYTES
from service.http.openapi import openapi_document
from service.http.responses import NDJSON
from service.instances import Instance
from service.listen import host_and_port, listen_error
from service.operations import UpdateRequest

log = logging.getLogger(__name__)

PRIVACY_PATH = "/api/profile/privacy/{instance}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL = web.RequestKey("principal", Principal)


def create_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_envelope_errors])
    api = PrivacyApi(gateway)
    app.router.add_post(PRIVACY_PATH, api.update)
    app.router.add_get(PRIVACY_PATH, api.get)
    app.router.add_get(f"{PRIVACY_PATH}/operations", api.list_operations)
    app.router.add_get(f"{PRIVACY_PATH}/operations/{{operation_id}}", api.get_operation)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/healthz", _healthz)
    return app


class PrivacyApi:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def get(self, request: web.Request) -> web.StreamResponse:
        instance = self._authorize(request)
        settings = await engine.read_settings(instance)
        return web.json_response(responses.settings_body(settings))

    async def update(self, request: web.Request) -> web.StreamResponse:
        instance = self._authorize(request)
        requested = request_body.requested_settings(await _json_body(request))
        update = UpdateRequest(
            requested,
            request_body.update_options(request.query),
            request_body.idempotency_key(request.headers.get("Idempotency-Key")),
            request[PRINCIPAL].label,
        )
        operation = await self._gateway.operations.start(instance, update, deadline=None)
        operation_id = "" if update.options.validate_only else operation.id
        if NDJSON in request.headers.get("Accept", ""):
            return await _stream(request, operation.follow(), operation_id)
        _, snapshot = await operation.outcome()
        if snapshot.error is not None:
            raise snapshot.error
        return web.json_response(responses.updated_body(snapshot, operation_id))

    async def get_operation(self, request: web.Request) -> web.StreamResponse:
        instance = self._authorize(request)
        row = await self._gateway.operations.get(instance, request.match_info["operation_id"])
        return web.json_response({"success": True, "operation": responses.operation_json(row)})

    async def list_operations(self, request: web.Request) -> web.StreamResponse:
        instance = self._authorize(request)
        size = request_body.page_size(request.query.get("pageSize"))
        rows, token = await self._gateway.operations.list(
            instance, size, request.query.get("pageToken", "")
        )
        body = {
            "success": True,
            "operations": [responses.operation_json(r) for r in rows],
            "nextPageToken": token,
        }
        return web.json_response(body)

    def _authorize(self, request: web.Request) -> Instance:
        principal = self._gateway.tokens.authenticate(request.headers.get("token"), "header")
        request[PRINCIPAL] = principal
        self._gateway.limiter.check(principal.token_sha256)
        return self._gateway.instances.authorize(principal, request.match_info["instance"])


async def _json_body(request: web.Request) -> Any:
    # aiohttp reports a missing Content-Type as application/octet-stream: look at the header.
    given = request.content_type if hdrs.CONTENT_TYPE in request.headers else "missing"
    if given != "application/json":
        raise GatewayError(
            Code.INVALID_ARGUMENT,
            f"Content-Type must be application/json, not {given}",
            "UNSUPPORTED_MEDIA_TYPE",
        )
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise _too_large()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large() from exc
    return request_body.parse_json(raw)


def _too_large() -> GatewayError:
    return GatewayError(
        Code.INVALID_ARGUMENT, f"Request body exceeds {MAX_BODY_BYTES} bytes", "BODY_TOO_LARGE"
    )


async def _stream(request: web.Request, events: Any, operation_id: str) -> web.StreamResponse:
    """NDJSON progress: one line per engine event; a failure ends it with an error line."""
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    async for event in events:
        # Errors before the plan (not connected...) still get a plain error response: the
        # stream only begins with the first event.
        if not response.prepared:
            await response.prepare(request)
        await response.write(_line(responses.event_json(event, operation_id)))
        if isinstance(event, Snapshot) and event.error is not None:
            body = responses.error_body(event.error)
            await response.write(_line({"event": "error", "error": body["error"]}))
    await response.write_eof()
    return response


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


@web.middleware
async def _envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in the contract's envelope: domain errors, and aiohttp's own (404, 405...)."""
    try:
        return await handler(request)
    except GatewayError as error:
        status = responses.http_status(error)
        principal = request.get(PRINCIPAL)
        log.info(
            "%s %s by %s: %d %s",
            request.method,
            request.path,
            principal.label if principal else "anonymous",
            status,
            error.reason,
        )
        headers = {}
        if error.retry_after_seconds is not None:
            headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_seconds)))
        return web.json_response(responses.error_body(error), status=status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"success": False, "error": {"message": exc.reason, "reason": "HTTP_ERROR"}}
        return web.json_response(body, status=exc.status, headers=_allow(exc))


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document())


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok", "time": time.time()})


class HttpServer:
    """The REST surface on ``host:port``, in the running event loop."""

    def __init__(self, gateway: Gateway, shutdown_timeout: float = 10.0) -> None:
        self._runner = web.AppRunner(
            create_app(gateway), access_log=None, shutdown_timeout=shutdown_timeout
        )
        self.port = 0

    async def start(self, address: str) -> None:
        """Binds ``address`` (port 0 picks a free one) and serves; ``ListenError`` if taken.

        ``reuse_port`` stays off, so that a second gateway cannot share the port (the kernel
        would split the connections between the two).
        """
        host, port = host_and_port(address)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise listen_error("REST", address, "--http-listen", exc) from exc
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()
