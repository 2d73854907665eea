"""The errors a caller can meet, as plain data.

Domain code raises ``GatewayError`` with a ``Code``; each transport turns it into its own status in
exactly one place (``service.grpc.status`` for gRPC). The ``reason`` is the stable UPPER_SNAKE
identifier that goes into ``google.rpc.ErrorInfo``, so callers can branch on it without parsing
messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

NO_SETTINGS_MESSAGE = "At least one privacy setting must be provided"
NOT_CONNECTED_MESSAGE = "Instance is not connected to WhatsApp"
ERROR_DOMAIN = "privacy-gateway"


class Code(enum.Enum):
    """What kind of failure, named after the gRPC status it becomes."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True, slots=True)
class Violation:
    """One invalid request field (becomes a ``BadRequest.FieldViolation``)."""

    field: str
    description: str


@dataclass(eq=False)
class GatewayError(Exception):
    """A failure the caller is told about, with everything a transport needs to report it."""

    code: Code
    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[Violation, ...] = ()
    retry_after_seconds: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def no_settings() -> GatewayError:
    return GatewayError(
        Code.INVALID_ARGUMENT,
        NO_SETTINGS_MESSAGE,
        "NO_SETTINGS",
        violations=(Violation("settings", NO_SETTINGS_MESSAGE),),
    )


def not_connected(instance: str) -> GatewayError:
    return GatewayError(
        Code.FAILED_PRECONDITION,
        NOT_CONNECTED_MESSAGE,
        "INSTANCE_NOT_CONNECTED",
        {"instance": instance},
    )


def instance_not_found(instance: str) -> GatewayError:
    return GatewayError(
        Code.NOT_FOUND,
        f"Instance not found: {instance}",
        "INSTANCE_NOT_FOUND",
        {"instance": instance},
    )


def instance_required() -> GatewayError:
    return GatewayError(
        Code.INVALID_ARGUMENT,
        "instance is required",
        "INSTANCE_REQUIRED",
        violations=(Violation("instance", "must name a configured instance"),),
    )


def settings_unknown(instance: str, detail: str) -> GatewayError:
    return GatewayError(
        Code.UNAVAILABLE,
        f"The current privacy settings could not be read from WhatsApp: {detail}",
        "SETTINGS_UNKNOWN",
        {"instance": instance},
    )
