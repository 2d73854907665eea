"""The contract's rules for what a caller sends, written once for both edges.

Each edge turns its wire into plain values (a proto enum's name, a query string's text) and hands
them here; what is valid, what a default is and what a mistake is told are decided only here. A
parameter is named in a message the way the caller's own wire names it (``WireNames``), so the
same mistake gets the same reason and message on gRPC and REST, bar that name.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from service import errors
from service.engine import FailurePolicy
from service.errors import Violation, shown

#: What a caller's token travels under, on both edges: gRPC's metadata key, REST's header.
TOKEN_KEY = "token"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
#: A page size as text: ASCII digits only (no sign, no ``²``). With more digits than this (bar
#: leading zeros) it is over 100 whatever they read, so they are not parsed.
_DIGITS = re.compile(r"[0-9]+")
_PARSED_DIGITS = 9


@dataclass(frozen=True, slots=True)
class WireNames:
    """How one edge names the parameters a message may mention."""

    request_id: str
    page_size: str
    failure_policy: str
    #: What the edge's failure-policy values are called: ``FAILURE_POLICY_STOP`` or ``STOP``.
    policy_prefix: str


GRPC = WireNames("request_id", "page_size", "failure_policy", "FAILURE_POLICY_")
REST = WireNames("Idempotency-Key", "pageSize", "failurePolicy", "")


def request_id(value: str | None, names: WireNames) -> str | None:
    """A retry's id: a UUID in its canonical form; None means not a retry (an empty header is
    a mistake; gRPC's empty string, which proto3 cannot tell from none, arrives as None)."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise errors.INVALID_REQUEST_ID.error(
            violations=(Violation(names.request_id, "a UUID, e.g. from uuid4()"),),
            field=names.request_id,
            value=repr(shown(value)),
        ) from None


def failure_policy(name: str | None, names: WireNames) -> FailurePolicy:
    """The policy an update asked for by its wire name (without prefix); none means STOP."""
    if name is None:
        return FailurePolicy.STOP
    policy = FailurePolicy.__members__.get(name)
    if policy is None:
        valid = ", ".join(names.policy_prefix + p.name for p in FailurePolicy)
        raise errors.INVALID_VALUE.error(
            violations=(Violation(names.failure_policy, "STOP, CONTINUE or ROLLBACK"),),
            field=names.failure_policy,
            value=shown(names.policy_prefix + name if name.isidentifier() else name) or '""',
            valid=valid,
        )
    return policy


def page_size(value: int | str | None, names: WireNames) -> int:
    """One rule for both edges (AIP-158): none or 0 is 20, over 100 is 100, however large;
    negative or not a whole number is a mistake. Text (REST's query) is digits only."""
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise _bad_page_size(value, names)
        digits = value.lstrip("0")
        value = int(digits or "0") if len(digits) <= _PARSED_DIGITS else MAX_PAGE_SIZE
    if value is None or value == 0:
        return DEFAULT_PAGE_SIZE
    if value < 0:
        raise _bad_page_size(value, names)
    return min(value, MAX_PAGE_SIZE)


def _bad_page_size(value: object, names: WireNames) -> errors.GatewayError:
    return errors.INVALID_PAGE_SIZE.error(
        violations=(Violation(names.page_size, "0 (the default, 20) or more; over 100 is 100"),),
        field=names.page_size,
        value=shown(value),
    )


_PHONE = re.compile(r"[1-9][0-9]{6,14}")


def phone(value: str | None) -> str | None:
    """A pairing phone number: international format, digits only; none pairs by QR code."""
    if not value:
        return None
    if not _PHONE.fullmatch(value):
        raise errors.INVALID_PHONE.error(
            violations=(Violation("phone", "7 to 15 digits, not starting with 0"),)
        )
    return value
