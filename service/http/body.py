"""The REST contract's request body: parsed and validated exactly as the contract documents.

Validation walks the fields in the contract's table order and stops at the first invalid one,
with the contract's own message (``Invalid lastSeen value: everyone. Valid values: all, ...``);
values are case-sensitive, and nothing is applied when anything is invalid. What the contract
does not list (an unknown key, a subsection that is not an object, a value that is not a string)
still gets a message that says exactly what is wrong.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from service import errors
from service.engine import FailurePolicy, UpdateOptions
from service.errors import Code, GatewayError, Violation
from service.settings import FIELDS, SECTIONS, Field, Settings

MAX_BODY_BYTES = 16 * 1024
_FIELDS_OF = {section: [s for s in FIELDS if s.section == section] for section in SECTIONS}


def invalid(message: str, reason: str, field: str = "") -> GatewayError:
    violations = (Violation(field, message),) if field else ()
    return GatewayError(Code.INVALID_ARGUMENT, message, reason, violations=violations)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints, depth
        raise invalid(f"Malformed JSON: {exc}", "MALFORMED_JSON") from exc


def requested_settings(body: Any) -> dict[Field, str]:
    """The fields a body sets, by the contract's rules; raises the contract's 400s."""
    if not isinstance(body, dict):
        raise invalid("Request body must be a JSON object", "BODY_NOT_OBJECT")
    for key in body:
        if key not in SECTIONS:
            raise invalid(
                f"Unknown field: {key}. Valid fields: {', '.join(SECTIONS)}", "UNKNOWN_FIELD", key
            )
    for section in SECTIONS:
        part = body.get(section)
        if section in body and not isinstance(part, dict):
            raise invalid(f"{section} must be an object", "SECTION_NOT_OBJECT", section)
        names = [s.rest_name for s in _FIELDS_OF[section]]
        for key in part or {}:
            if key not in names:
                raise invalid(
                    f"Unknown field: {section}.{key}. Valid fields: {', '.join(names)}",
                    "UNKNOWN_FIELD",
                    f"{section}.{key}",
                )
    requested: dict[Field, str] = {}
    for spec in FIELDS:
        part = body.get(spec.section) or {}
        if spec.rest_name not in part:
            continue
        value = part[spec.rest_name]
        if not isinstance(value, str) or value not in spec.values:
            shown = value if isinstance(value, str) else json.dumps(value)
            raise invalid(
                f"Invalid {spec.rest_name} value: {shown}. Valid values: {', '.join(spec.values)}",
                "INVALID_VALUE",
                spec.rest_path,
            )
        requested[spec.field] = value
    if not requested:
        raise errors.no_settings()
    return requested


def settings_json(settings: Settings) -> dict[str, dict[str, str]]:
    """Settings grouped and named as the contract's responses have them."""
    grouped: dict[str, dict[str, str]] = {section: {} for section in SECTIONS}
    for spec in FIELDS:
        if spec.field in settings:
            grouped[spec.section][spec.rest_name] = settings[spec.field]
    return grouped


_POLICIES = {p.name: p for p in FailurePolicy}
_FLAGS = {"true": True, "false": False}


def update_options(query: Mapping[str, str]) -> UpdateOptions:
    """``?failurePolicy=STOP|CONTINUE|ROLLBACK&validateOnly=true&force=true``."""
    for key in query:
        if key not in ("failurePolicy", "validateOnly", "force"):
            raise invalid(
                f"Unknown query parameter: {key}. Valid: failurePolicy, validateOnly, force",
                "UNKNOWN_FIELD",
                key,
            )
    policy = _POLICIES.get(query.get("failurePolicy", "STOP"))
    if policy is None:
        raise invalid(
            f"Invalid failurePolicy value: {query['failurePolicy']}. "
            "Valid values: STOP, CONTINUE, ROLLBACK",
            "INVALID_VALUE",
            "failurePolicy",
        )
    return UpdateOptions(policy, _flag(query, "force"), _flag(query, "validateOnly"))


def _flag(query: Mapping[str, str], key: str) -> bool:
    value = _FLAGS.get(query.get(key, "false"))
    if value is None:
        raise invalid(
            f"Invalid {key} value: {query[key]}. Valid values: true, false", "INVALID_VALUE", key
        )
    return value


def idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header: the request_id of a safe retry (a UUID)."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise invalid(
            f"Idempotency-Key must be a UUID, not {value!r}",
            "INVALID_REQUEST_ID",
            "Idempotency-Key",
        ) from None


def page_size(value: str | None) -> int:
    if value is None:
        return 20
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise invalid(
            f"Invalid pageSize value: {value}. Valid values: 1 to 100",
            "INVALID_PAGE_SIZE",
            "pageSize",
        )
    return int(value)
