"""The REST contract, served by aiohttp in the gateway's own process and event loop.

A thin edge: it turns requests into the application's calls (``service.gateway``) and their
answers into the contract's JSON, so a REST update and a gRPC update see each other's results and
queue behind each other, and the same mistake gets the same answer on both. Each call is
recorded (``service.observability.calls``): counted and logged as one line once its answer is
sent; probes and scrapes (``/healthz``, ``/metrics``) are not, as gRPC's health service is not.

``/metrics`` (Prometheus) is served without a token, as scrapers call it: it shows counts by
method, code, field and state, and no instance's name (``metrics_listen`` moves it to a port of
its own).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial, wraps
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client.aiohttp import make_aiohttp_handler

from service import errors
from service.auth import Principal
from service.cluster.forwarding.http import HttpForwarder
from service.cluster.forwarding.marker import MARKER
from service.engine import Event, Snapshot
from service.errors import GatewayError, shown
from service.gateway import REST, Caller, Forward, Gateway, UpdateHandle, UpdateInput
from service.gateway.rules import TOKEN_KEY
from service.http import body as request_body
from service.http import responses
from service.http.body import MAX_BODY_BYTES
from service.http.openapi import openapi_document
from service.http.responses import NDJSON
from service.observability import calls

PRIVACY_PATH = "/api/profile/privacy/{instance}"
METRICS_PATH = "/metrics"
#: Routes whose calls are neither counted nor logged: probes and scrapes.
UNRECORDED = frozenset({"/healthz", METRICS_PATH})
#: A call's method is ``METHOD /route-template``; other methods are ``OTHER``, and a path no
#: route serves is ``(unmatched)``, so that callers cannot grow the label set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "(unmatched)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL = web.RequestKey("principal", Principal)


def create_app(
    gateway: Gateway, *, metrics: bool = True, forwarder: HttpForwarder | None = None
) -> web.Application:
    """The REST app; ``metrics``: serve ``/metrics`` too (off when it has a port of its own).

    A gateway with ``ownership`` proxies the calls for other replicas' instances to them through
    ``forwarder``; without one the app makes its own, closed with the app.
    """
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[_record_calls(gateway), _envelope_errors]
    )
    if metrics:
        app.router.add_get(METRICS_PATH, make_aiohttp_handler(gateway.metrics.registry))
    if gateway.ownership is not None and forwarder is None:
        made = forwarder = HttpForwarder(gateway.ownership.replica_id, mark=gateway.mark)

        async def close_forwarder(app: web.Application) -> None:
            await made.close()

        app.on_cleanup.append(close_forwarder)
    api = PrivacyApi(gateway, forwarder)
    counted = partial(_counted, gateway)
    app.router.add_post(PRIVACY_PATH, counted(api.update))
    app.router.add_get(PRIVACY_PATH, counted(api.get))
    app.router.add_get(f"{PRIVACY_PATH}/operations", counted(api.list_operations))
    app.router.add_get(f"{PRIVACY_PATH}/operations/{{operation_id}}", counted(api.get_operation))
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/healthz", partial(_healthz, gateway))
    return app


class PrivacyApi:
    def __init__(self, gateway: Gateway, forwarder: HttpForwarder | None = None) -> None:
        self._gateway = gateway
        self._forwarder = forwarder

    async def get(self, request: web.Request) -> web.StreamResponse:
        caller = await self._admit_to(request)
        if isinstance(caller, Forward):
            return await self._proxy(request, caller)
        settings = await caller.read_settings(_instance(request))
        return web.json_response(responses.settings_body(settings))

    async def update(self, request: web.Request) -> web.StreamResponse:
        caller = await self._admit_to(request)
        if isinstance(caller, Forward):
            return await self._proxy(request, caller)
        # Who may act on which instance is judged before the body, as on gRPC.
        caller.instance(_instance(request))
        requested = request_body.requested_settings(await _json_body(request))
        query = request_body.update_query(request.query)
        update = UpdateInput(
            _instance(request),
            requested,
            policy=query.policy,
            force=query.force,
            validate_only=query.validate_only,
            request_id=request.headers.get("Idempotency-Key"),
        )
        # A client that hangs up cancels this handler (``handler_cancellation``) or fails a
        # write: either way the handle is left by an exception and halts the update.
        async with await caller.start_update(update) as handle:
            if NDJSON in request.headers.get("Accept", ""):
                return await _stream(request, handle)
            _, snapshot = await handle.outcome()
        return web.json_response(responses.updated_body(snapshot, handle.operation_id))

    async def get_operation(self, request: web.Request) -> web.StreamResponse:
        caller = await self._admit(request)
        row = await caller.operation(_instance(request), request.match_info["operation_id"])
        return web.json_response({"success": True, "operation": responses.operation_json(row)})

    async def list_operations(self, request: web.Request) -> web.StreamResponse:
        caller = await self._admit(request)
        page = await caller.operations(
            _instance(request), request.query.get("pageSize"), request.query.get("pageToken", "")
        )
        body = {
            "success": True,
            "operations": [responses.operation_json(r) for r in page.operations],
            "nextPageToken": page.next_page_token,
        }
        return web.json_response(body)

    async def _admit(self, request: web.Request) -> Caller:
        caller = await self._gateway.admit(request.headers.get(TOKEN_KEY), REST)
        request[PRINCIPAL] = caller.principal
        return caller

    async def _admit_to(self, request: web.Request) -> Caller | Forward:
        """Admission for a call its instance's owner serves (``Gateway.admit_to``)."""
        admission = await self._gateway.admit_to(
            request.headers.get(TOKEN_KEY),
            REST,
            _instance(request),
            marked=MARKER in request.headers,
        )
        request[PRINCIPAL] = admission.principal
        return admission

    async def _proxy(self, request: web.Request, forward: Forward) -> web.StreamResponse:
        assert self._forwarder is not None  # a Forward needs ownership, which makes one
        return await self._forwarder.proxy(request, forward)


def _counted(gateway: Gateway, handler: Handler) -> Handler:
    """``handler`` holding a place among the calls in progress (``max_concurrent_calls``, shared
    with gRPC) for as long as it runs, a stream's included; TOO_MANY_CALLS when there is none.
    The place is taken before the token is looked at, as on gRPC."""

    @wraps(handler)
    async def counted(request: web.Request) -> web.StreamResponse:
        with gateway.calls.held():
            return await handler(request)

    return counted


def _instance(request: web.Request) -> str:
    return request.match_info["instance"]


async def _json_body(request: web.Request) -> Any:
    # aiohttp reports a missing Content-Type as application/octet-stream: look at the header.
    given = request.content_type if hdrs.CONTENT_TYPE in request.headers else "missing"
    if given != "application/json":
        raise errors.UNSUPPORTED_MEDIA_TYPE.error(given=shown(given))
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise errors.BODY_TOO_LARGE.error(limit=MAX_BODY_BYTES)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.BODY_TOO_LARGE.error(limit=MAX_BODY_BYTES) from exc
    except RequestPayloadError as exc:
        # The body's framing broke after the headers were read (a chunk size that is not hex, a
        # body compressed wrong): the parser's reason, which quotes none of the body.
        raise errors.MALFORMED_HTTP_REQUEST.error(
            detail="the body is not framed as declared"
        ) from exc
    return request_body.parse_json(raw)


async def _stream(request: web.Request, handle: UpdateHandle) -> web.StreamResponse:
    """NDJSON progress: one line per engine event; a failure ends it with an error line."""
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    event: Event
    async for event in handle.follow():
        # Errors before the plan (not connected...) still get a plain error response: the
        # stream only begins with the first event.
        if not response.prepared:
            await response.prepare(request)
        await response.write(_line(responses.event_json(event, handle.operation_id)))
        if isinstance(event, Snapshot) and event.error is not None:
            error_body = responses.error_body(handle.failure(event.error))
            await response.write(_line({"event": "error", "error": error_body["error"]}))
    await response.write_eof()
    return response


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def _record_calls(gateway: Gateway) -> Middleware:
    """Records each call (``service.observability.calls``) from its start to its answer."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else UNMATCHED
        if template in UNRECORDED:
            return await handler(request)
        verb = request.method if request.method in METHODS else "OTHER"
        instance = request.match_info.get("instance")
        call = calls.begin("rest", f"{verb} {template}", instance, gateway.instances)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # below 400: _envelope_errors answers the others
            call.http_status = exc.status
            raise
        except BaseException as exc:
            crashed = not isinstance(exc, asyncio.CancelledError | ConnectionError)
            call.interrupted(exc, "INTERNAL" if crashed else calls.CANCELLED)
            call.http_status = 500 if crashed else None
            raise
        else:
            call.http_status = response.status
            return response
        finally:
            principal = request.get(PRINCIPAL)
            if principal is not None:
                call.admitted(principal)
            calls.finish(call, gateway.metrics)

    return record


@web.middleware
async def _envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in the contract's envelope: domain errors, and aiohttp's own (404, 405...)."""
    try:
        return await handler(request)
    except GatewayError as error:
        calls.note_failure(error)
        headers = {}
        if error.retry_after_whole_seconds is not None:
            headers["Retry-After"] = str(error.retry_after_whole_seconds)
        body = responses.error_body(error)
        return web.json_response(body, status=error.http_status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        refusal = responses.http_refusal(exc.status, exc.reason)
        calls.note_failure(refusal)
        body = responses.error_body(refusal)
        return web.json_response(body, status=exc.status, headers=_allow(exc))


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document())


async def _healthz(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    if not gateway.healthy():
        body = {"status": "unavailable", "time": time.time()}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ok", "time": time.time()})
