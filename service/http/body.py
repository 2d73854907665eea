"""The REST contract's request body: parsed and validated exactly as the contract documents.

Validation walks the fields in the contract's table order and stops at the first invalid one,
with the contract's own message (``Invalid lastSeen value: everyone. Valid values: all, ...``);
values are case-sensitive, and nothing is applied when anything is invalid. What the contract
does not list (an unknown key, a subsection that is not an object, a value that is not a string)
still gets a message that says exactly what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service import errors
from service.errors import GatewayError, Violation, shown
from service.settings import FIELDS, SECTIONS, Field, Settings

MAX_BODY_BYTES = 16 * 1024
_FIELDS_OF = {section: [s for s in FIELDS if s.section == section] for section in SECTIONS}


def invalid_value(field: str, value: object, valid: str) -> GatewayError:
    """INVALID_VALUE for ``field``, with the one violation that names it."""
    message = errors.INVALID_VALUE.message.format(field=field, value=shown(value), valid=valid)
    return errors.INVALID_VALUE.error(
        violations=(Violation(field, message),), field=field, value=shown(value), valid=valid
    )


def _unknown_field(name: str, valid: str) -> GatewayError:
    return errors.UNKNOWN_FIELD.error(
        violations=(Violation(name, "not a field of the contract"),), name=shown(name), valid=valid
    )


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints, depth
        raise errors.MALFORMED_JSON.error(detail=shown(exc)) from exc


def requested_settings(body: Any) -> dict[Field, str]:
    """The fields a body sets, by the contract's rules; raises the contract's 400s."""
    if not isinstance(body, dict):
        raise errors.BODY_NOT_OBJECT.error()
    for key in body:
        if key not in SECTIONS:
            raise _unknown_field(key, ", ".join(SECTIONS))
    for section in SECTIONS:
        part = body.get(section)
        if section in body and not isinstance(part, dict):
            raise errors.SECTION_NOT_OBJECT.error(
                violations=(Violation(section, "must be an object"),), section=section
            )
        names = [s.rest_name for s in _FIELDS_OF[section]]
        for key in part or {}:
            if key not in names:
                raise _unknown_field(f"{section}.{key}", ", ".join(names))
    requested: dict[Field, str] = {}
    for spec in FIELDS:
        part = body.get(spec.section) or {}
        if spec.rest_name not in part:
            continue
        value = part[spec.rest_name]
        if not isinstance(value, str) or value not in spec.values:
            given = value if isinstance(value, str) else json.dumps(value)
            error = invalid_value(spec.rest_name, given, ", ".join(spec.values))
            error.violations = (Violation(spec.rest_path, error.message),)
            raise error
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


_FLAGS = {"true": True, "false": False}
UPDATE_QUERY = ("failurePolicy", "validateOnly", "force")


@dataclass(frozen=True, slots=True)
class UpdateQuery:
    """``?failurePolicy=STOP|CONTINUE|ROLLBACK&validateOnly=true&force=true``, as sent."""

    policy: str | None
    force: bool
    validate_only: bool


def update_query(query: Mapping[str, str]) -> UpdateQuery:
    """The update's query string; the policy's name is checked by the application's rules."""
    for key in query:
        if key not in UPDATE_QUERY:
            raise errors.UNKNOWN_QUERY_PARAMETER.error(
                violations=(Violation(key, "not a parameter of this endpoint"),),
                name=shown(key),
                valid=", ".join(UPDATE_QUERY),
            )
    return UpdateQuery(
        query.get("failurePolicy"), _flag(query, "force"), _flag(query, "validateOnly")
    )


def _flag(query: Mapping[str, str], key: str) -> bool:
    value = _FLAGS.get(query.get(key, "false"))
    if value is None:
        raise invalid_value(key, query[key], "true, false")
    return value
