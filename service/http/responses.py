"""JSON shapes of the REST surface: the contract's envelopes, engine events and operations.

An error's HTTP status is the catalogue's (``service.errors``): the contract answers 400 for an
instance that is not connected and 500 for a field WhatsApp refused; the rest follow HTTP's usual
meanings.
"""

from __future__ import annotations

from typing import Any

from service import errors
from service.engine import Event, FieldEvent, Plan, Snapshot
from service.errors import GatewayError, UpdateFailed
from service.http.body import settings_json
from service.journal import OperationRow
from service.settings import FIELDS, Field, Settings

UPDATED_MESSAGE = "Privacy settings updated successfully"
NDJSON = "application/x-ndjson"


def http_refusal(status: int, text: str) -> GatewayError:
    """An error aiohttp itself answered (a path or a method it does not serve), as the
    catalogue's reason for it."""
    if status == 404:
        return errors.ROUTE_NOT_FOUND.error()
    if status == 405:
        return errors.METHOD_NOT_ALLOWED.error()
    return errors.HTTP_ERROR.error(detail=text)


def error_body(error: GatewayError) -> dict[str, Any]:
    """The contract's error envelope, with a stable reason and, after a partial update, the
    settings as they now are and every field's outcome (so no GET is needed to know)."""
    body: dict[str, Any] = {
        "success": False,
        "error": {"message": error.message, "reason": error.reason},
    }
    if isinstance(error, UpdateFailed):
        if "operation_id" in error.metadata:
            body["operationId"] = error.metadata["operation_id"]
        body["settings"] = settings_json(error.snapshot.settings)
        body["fields"] = [field_json(o) for o in error.snapshot.outcomes]
    return body


def updated_body(snapshot: Snapshot, operation_id: str = "") -> dict[str, Any]:
    return {
        "success": True,
        "message": UPDATED_MESSAGE,
        "settings": settings_json(snapshot.settings),
        "fields": [field_json(o) for o in snapshot.outcomes],
        "operationId": operation_id,
    }


def settings_body(settings: Settings) -> dict[str, Any]:
    return {"success": True, "settings": settings_json(settings)}


def field_json(event: FieldEvent) -> dict[str, Any]:
    spec = event.field.spec
    out: dict[str, Any] = {
        "field": spec.rest_path,
        "state": event.state.name,
        "value": event.value,
        "previous": event.previous,
    }
    if event.elapsed is not None:
        out["elapsedMs"] = round(event.elapsed * 1000, 3)
    if event.error:
        out["error"] = event.error
    return out


def event_json(event: Event, operation_id: str = "") -> dict[str, Any]:
    """One line of the NDJSON progress stream: the same events as the gRPC stream."""
    if isinstance(event, Plan):
        return {
            "event": "plan",
            "operationId": operation_id,
            "stanzas": event.stanzas,
            "fields": [
                {
                    "field": step.field.spec.rest_path,
                    "current": step.current,
                    "target": step.target,
                    "changes": step.sends,
                }
                for step in event.steps
            ],
        }
    if isinstance(event, FieldEvent):
        return {"event": "field", **field_json(event)}
    return {"event": "snapshot", "settings": settings_json(event.settings)}


def operation_json(row: OperationRow) -> dict[str, Any]:
    """A journaled operation, named as the REST surface names things."""
    specs = {spec.field.value: spec for spec in FIELDS}
    out: dict[str, Any] = {
        "id": row.id,
        "instance": row.instance,
        "requestedBy": row.requested_by,
        "requestId": row.request_id or "",
        "requested": {specs[k].rest_path: v for k, v in row.requested.items()},
        "failurePolicy": row.policy,
        "force": row.force,
        "state": row.state,
        "fields": [
            {
                "field": specs[o.field].rest_path,
                "state": o.state,
                "value": o.value,
                "previous": o.previous,
                **({"elapsedMs": round(o.elapsed * 1000, 3)} if o.elapsed is not None else {}),
                **({"error": o.error} if o.error else {}),
            }
            for o in row.outcomes
        ],
        "startTime": row.started_at,
    }
    if row.settings:
        out["settings"] = settings_json(Settings({Field(k): v for k, v in row.settings.items()}))
    if row.ended_at is not None:
        out["endTime"] = row.ended_at
    if row.error_message:
        out["error"] = {"message": row.error_message, "reason": row.error_reason or ""}
    return out
