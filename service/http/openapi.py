"""The OpenAPI 3 document of the REST surface, built from the field table so it cannot drift.

The tests exercise it against the running server with schemathesis: every response the server
gives must match what this says.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from service import errors
from service.engine import FINAL_STATES, FieldState
from service.http.body import MAX_BODY_BYTES
from service.http.responses import NDJSON, UPDATED_MESSAGE
from service.operations import OperationState
from service.settings import FIELDS, SECTIONS

#: The states a field can end an update in, in the order the engine declares them.
FINAL_STATES_IN_ORDER = [s for s in FieldState if s in FINAL_STATES]

#: The reasons a REST caller can meet: the catalogue's, and only those.
REST_REASONS = [r for r in errors.CATALOGUE.values() if r.edges & errors.Edge.REST]


def _section_schema(section: str, *, required: bool) -> dict[str, Any]:
    specs = [s for s in FIELDS if s.section == section]
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            s.rest_name: {"type": "string", "enum": list(s.values), "description": s.proto_path}
            for s in specs
        },
    }
    if required:
        schema["required"] = [s.rest_name for s in specs]
    return schema


def _settings_schema(*, complete: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {s: _section_schema(s, required=complete) for s in SECTIONS},
    }
    if complete:
        schema["required"] = list(SECTIONS)
    else:
        # At least one setting, in any subsection (empty subsections beside it are fine).
        schema["anyOf"] = [
            {"required": [s], "properties": {s: {"minProperties": 1}}} for s in SECTIONS
        ]
    return schema


_FIELD_OUTCOME = {
    "type": "object",
    "required": ["field", "state", "value", "previous"],
    "properties": {
        "field": {"type": "string", "enum": [s.rest_path for s in FIELDS]},
        "state": {
            "type": "string",
            "enum": [s.name for s in FINAL_STATES_IN_ORDER],
        },
        "value": {"type": "string"},
        "previous": {
            "type": "string",
            "description": "the value before the update; empty when WhatsApp had not reported it",
        },
        "elapsedMs": {"type": "number", "description": "the stanza's round trip"},
        "error": {"type": "string"},
    },
}

_ERROR = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "error": {
            "type": "object",
            "required": ["message", "reason"],
            "properties": {
                "message": {"type": "string"},
                "reason": {
                    "type": "string",
                    "enum": [r.name for r in REST_REASONS],
                    "description": "stable UPPER_SNAKE identifier (see the README's table)",
                },
            },
        },
        "settings": {"$ref": "#/components/schemas/Settings"},
        "fields": {"type": "array", "items": {"$ref": "#/components/schemas/FieldOutcome"}},
        "operationId": {
            "type": "string",
            "description": "A failed update's operation (look it up under /operations).",
        },
    },
}


def _error_response(description: str, status: int) -> dict[str, Any]:
    """An error response, listing the catalogue's reasons that answer with ``status``."""
    reasons = ", ".join(f"`{r.name}`" for r in REST_REASONS if r.http_status == status)
    return {
        "description": f"{description} Reasons: {reasons}.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_COMMON_ERRORS = {
    "401": _error_response("Missing or unknown `token`.", 401),
    "403": _error_response("The token may not act on this instance.", 403),
    "404": _error_response("No instance of that name.", 404),
    "429": {
        **_error_response(
            "Rate limit exceeded (the gateway's, or WhatsApp's own during an update: reason "
            "`WHATSAPP_RATE_LIMITED`); `Retry-After` says when to come back.",
            429,
        ),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
    "503": _error_response("WhatsApp's current settings could not be read.", 503),
}

_INSTANCE = {
    "name": "instance",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Instance name.",
}


_UPDATE_PARAMETERS = [
    {
        "name": "failurePolicy",
        "in": "query",
        "schema": {"type": "string", "enum": ["STOP", "CONTINUE", "ROLLBACK"]},
        "description": "STOP (default, the contract's behaviour), CONTINUE, or ROLLBACK.",
    },
    {"name": "validateOnly", "in": "query", "schema": {"type": "boolean"}},
    {"name": "force", "in": "query", "schema": {"type": "boolean"}},
    {
        "name": "Idempotency-Key",
        "in": "header",
        "schema": {"type": "string", "format": "uuid"},
        "description": "A retry with the same key and body returns the recorded outcome.",
    },
]

_OPERATION = {
    "type": "object",
    "required": ["id", "instance", "requestedBy", "state", "fields", "startTime"],
    "properties": {
        "id": {"type": "string"},
        "instance": {"type": "string"},
        "requestedBy": {"type": "string"},
        "requestId": {"type": "string"},
        "requested": {"type": "object", "additionalProperties": {"type": "string"}},
        "failurePolicy": {"type": "string", "enum": ["STOP", "CONTINUE", "ROLLBACK"]},
        "force": {"type": "boolean"},
        "state": {
            "type": "string",
            "enum": [s.value for s in OperationState],
        },
        "fields": {"type": "array", "items": {"type": "object"}},
        "settings": {"$ref": "#/components/schemas/Settings"},
        "startTime": {"type": "number"},
        "endTime": {"type": "number"},
        "error": {"type": "object"},
    },
}  # fmt: skip
_OPERATION_ONE = {
    "type": "object",
    "required": ["success", "operation"],
    "properties": {"success": {"type": "boolean", "enum": [True]}, "operation": _OPERATION},
}
_OPERATION_PAGE = {
    "type": "object",
    "required": ["success", "operations", "nextPageToken"],
    "properties": {
        "success": {"type": "boolean", "enum": [True]},
        "operations": {"type": "array", "items": _OPERATION},
        "nextPageToken": {"type": "string"},
    },
}


@cache
def openapi_document() -> dict[str, Any]:
    settings_ok = {
        "type": "object",
        "required": ["success", "settings"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "settings": {"$ref": "#/components/schemas/Settings"},
        },
    }
    updated = {
        "type": "object",
        "required": ["success", "message", "settings", "fields", "operationId"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "message": {"type": "string", "enum": [UPDATED_MESSAGE]},
            "settings": {"$ref": "#/components/schemas/Settings"},
            "fields": {"type": "array", "items": {"$ref": "#/components/schemas/FieldOutcome"}},
            "operationId": {
                "type": "string",
                "description": "The journal's id for this update; empty for validateOnly.",
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "privacy-gateway REST",
            "version": "1",
            "description": "Updates the privacy settings of a linked WhatsApp instance. The gRPC "
            "service wagateway.privacy.v1.PrivacyService is the primary interface.",
        },
        "security": [{"token": []}],
        "paths": {
            "/api/profile/privacy/{instance}": {
                "parameters": [_INSTANCE],
                "get": {
                    "summary": "Get privacy settings",
                    "operationId": "getPrivacy",
                    "responses": {
                        "200": {
                            "description": "The complete current settings.",
                            "content": {"application/json": {"schema": settings_ok}},
                        },
                        "400": _error_response(errors.INSTANCE_NOT_CONNECTED.message, 400),
                        **_COMMON_ERRORS,
                    },
                },
                "post": {
                    "summary": "Update privacy",
                    "operationId": "updatePrivacy",
                    "parameters": _UPDATE_PARAMETERS,
                    "description": "Partial update: only the fields sent change, one WhatsApp "
                    "stanza per field whose value differs; not transactional. With `Accept: "
                    f"{NDJSON}` the response streams one JSON line per event (plan, field, "
                    "snapshot, and an error line after a failure).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/UpdateRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Applied; the complete settings WhatsApp confirmed.",
                            "content": {
                                "application/json": {"schema": updated},
                                NDJSON: {"schema": {"type": "string"}},
                            },
                        },
                        "400": _error_response(
                            f"`{errors.NO_SETTINGS.message}`, an invalid value, malformed JSON, an "
                            f"unknown key, an invalid query parameter or Idempotency-Key, or "
                            f"`{errors.INSTANCE_NOT_CONNECTED.message}`.",
                            400,
                        ),
                        "409": _error_response(
                            "The Idempotency-Key was used with another body.", 409
                        ),
                        "413": _error_response(f"The body exceeds {MAX_BODY_BYTES} bytes.", 413),
                        "415": _error_response("Content-Type is not application/json.", 415),
                        "500": _error_response(
                            "`failed to update <field> privacy: <reason>`; the fields before it "
                            "stay applied (see `settings` and `fields`). A field whose stanza "
                            "was sent but whose answer was lost is `UNCONFIRMED` (reason "
                            "`STANZA_UNCONFIRMED`).",
                            500,
                        ),
                        **_COMMON_ERRORS,
                    },
                },
            },
            "/api/profile/privacy/{instance}/operations": {
                "parameters": [_INSTANCE],
                "get": {
                    "summary": "List recorded updates, newest first",
                    "operationId": "listOperations",
                    "parameters": [
                        {
                            "name": "pageSize",
                            "in": "query",
                            "description": (
                                "How many operations a page holds: 0 or none is 20, and any"
                                " number over 100 is 100. Digits only."
                            ),
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {"name": "pageToken", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of operations.",
                            "content": {"application/json": {"schema": _OPERATION_PAGE}},
                        },
                        "400": _error_response("An invalid pageSize or pageToken.", 400),
                        **_COMMON_ERRORS,
                    },
                },
            },
            "/api/profile/privacy/{instance}/operations/{operationId}": {
                "parameters": [
                    _INSTANCE,
                    {
                        "name": "operationId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "get": {
                    "summary": "One recorded update",
                    "operationId": "getOperation",
                    "responses": {
                        "200": {
                            "description": "The operation as the journal recorded it.",
                            "content": {"application/json": {"schema": _OPERATION_ONE}},
                        },
                        **_COMMON_ERRORS,
                    },
                },
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "operationId": "healthz",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The gateway is serving.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "token"}},
            "schemas": {
                "UpdateRequest": _settings_schema(complete=False),
                "Settings": _settings_schema(complete=True),
                "FieldOutcome": _FIELD_OUTCOME,
                "Error": _ERROR,
            },
        },
    }
