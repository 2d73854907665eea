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
from service.operations.record import OperationRecord
from service.settings import Settings

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


def operation_json(record: OperationRecord) -> dict[str, Any]:
    """A journaled operation, named as the REST surface names things."""
    out: dict[str, Any] = {
        "id": record.id,
        "instance": record.instance,
        "requestedBy": record.requested_by,
        "requestId": record.request_id or "",
        "requested": {f.spec.rest_path: v for f, v in record.requested.items()},
        "failurePolicy": record.policy.name,
        "force": record.force,
        "state": record.state.value,
        "fields": [field_json(o) for o in record.outcomes],
        "startTime": record.started_at,
    }
    if record.settings:
        out["settings"] = settings_json(record.settings)
    if record.ended_at is not None:
        out["endTime"] = record.ended_at
    error = record.error
    if error is not None and error.message:
        out["error"] = {"message": error.message, "reason": error.reason}
    return out
