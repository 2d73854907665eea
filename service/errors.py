"""Every error a caller can meet, defined once: its reason, gRPC code, HTTP status and message.

Domain code raises a ``GatewayError`` made from one of the ``Reason``s below and nothing else
(a test walks the source to hold that); each transport renders it in exactly one place
(``service.grpc.status``, ``service.http.responses``). The ``reason`` is the stable
UPPER_SNAKE identifier that goes into ``google.rpc.ErrorInfo`` and the REST envelope, so callers
branch on it without parsing messages. The README's error table, the proto comments and the
OpenAPI document list exactly this catalogue (``tests`` check each against it).

A message is the same on both edges for the same mistake; only a parameter's name differs where
the wire names it differently (``page_size`` on gRPC, ``pageSize`` on REST).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.engine import Snapshot

ERROR_DOMAIN = "privacy-gateway"
#: A longer value is shown cut to this, so that nothing a caller sends comes back unbounded.
SHOWN_CHARACTERS = 64


def shown(value: object) -> str:
    """``value`` as a message or a log line may echo it: its text, cut to a bounded length, with
    every character that is not printable (control characters, line breaks, lone surrogates from
    bytes that were not UTF-8) written as its escape (``\\n``, ``\\x01``, ``\\udcff``).

    At most ``SHOWN_CHARACTERS`` characters and an ellipsis, however long the value; showing a
    shown value again changes nothing, so a value may pass through here twice.
    """
    text = str(value)
    head = text[: SHOWN_CHARACTERS + 1]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else _escaped(c) for c in head)
    if len(text) <= SHOWN_CHARACTERS and len(head) <= SHOWN_CHARACTERS:
        return head
    return head[:SHOWN_CHARACTERS] + "..."


def _escaped(character: str) -> str:
    return character.encode("unicode_escape", "backslashreplace").decode("ascii")


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
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class Edge(enum.Flag):
    """Where a caller can meet a reason."""

    GRPC = enum.auto()
    REST = enum.auto()
    BOTH = GRPC | REST


@dataclass(frozen=True, slots=True)
class Violation:
    """One invalid request field (becomes a ``BadRequest.FieldViolation``)."""

    field: str
    description: str


@dataclass(eq=False)
class GatewayError(Exception):
    """A failure the caller is told about, with everything a transport needs to report it.

    Made only by a ``Reason`` (``INSTANCE_NOT_FOUND.error(instance=...)``), never directly.
    """

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

    @property
    def http_status(self) -> int:
        """The REST status: the catalogue's for this reason."""
        return CATALOGUE[self.reason].http_status

    @property
    def retry_after_whole_seconds(self) -> int | None:
        """The retry hint as both edges send it: whole seconds, at least one."""
        if self.retry_after_seconds is None:
            return None
        return max(1, math.ceil(self.retry_after_seconds))


class UpdateFailed(GatewayError):
    """An update stopped part-way; ``snapshot`` says what was applied and what the settings are."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Reason:
    """One entry of the catalogue. ``message`` is a ``str.format`` template; the values named in
    ``metadata`` also go into ``ErrorInfo.metadata``, and are ``shown()`` in both (an instance
    name, an operation id: what a caller sent comes back bounded, whoever made the error). A
    value the message alone shows is ``shown()`` by whoever passes it, when a caller sent it."""

    name: str
    code: Code
    http_status: int
    message: str
    when: str
    edges: Edge = Edge.BOTH
    metadata: tuple[str, ...] = ()

    def error(
        self,
        *,
        violations: tuple[Violation, ...] = (),
        retry_after: float | None = None,
        extra: Mapping[str, str] | None = None,
        **values: Any,
    ) -> GatewayError:
        return GatewayError(**self._fields(violations, retry_after, extra, values))

    def failure(
        self,
        snapshot: Snapshot,
        *,
        retry_after: float | None = None,
        extra: Mapping[str, str] | None = None,
        **values: Any,
    ) -> UpdateFailed:
        """An update that ended part-way for this reason, with what it did (``snapshot``)."""
        failed = UpdateFailed(**self._fields((), retry_after, extra, values))
        failed.snapshot = snapshot
        return failed

    def recorded(
        self, message: str, metadata: Mapping[str, str], snapshot: Snapshot
    ) -> UpdateFailed:
        """An update the journal recorded as failed for this reason, with its recorded message."""
        failed = UpdateFailed(self.code, message, self.name, dict(metadata))
        failed.snapshot = snapshot
        return failed

    def _fields(
        self,
        violations: tuple[Violation, ...],
        retry_after: float | None,
        extra: Mapping[str, str] | None,
        values: Mapping[str, Any],
    ) -> dict[str, Any]:
        # What ErrorInfo's metadata names is what a caller sent or a name it can act on: each is
        # shown bounded, in the message and the metadata alike, however the caller spelled it.
        values = {**values, **{key: shown(values[key]) for key in self.metadata}}
        metadata = {key: values[key] for key in self.metadata}
        if extra:
            metadata.update(extra)
        return {
            "code": self.code,
            "message": self.message.format(**values),
            "reason": self.name,
            "metadata": metadata,
            "violations": violations,
            "retry_after_seconds": retry_after,
        }


CATALOGUE: dict[str, Reason] = {}


def _reason(
    name: str,
    code: Code,
    http_status: int,
    message: str,
    when: str,
    *,
    edges: Edge = Edge.BOTH,
    metadata: tuple[str, ...] = (),
) -> Reason:
    assert name not in CATALOGUE, name
    entry = Reason(name, code, http_status, message, when, edges, metadata)
    CATALOGUE[name] = entry
    return entry


def reason_named(name: str | None) -> Reason:
    """The catalogue's entry for a reason a journal recorded.

    A journal written by an older gateway may name a reason the catalogue no longer has: such an
    operation is replayed as INTERRUPTED, the one reason that promises nothing about its cause.
    """
    return CATALOGUE.get(name or "", INTERRUPTED)


_Inv, _Auth, _Perm = Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED
_Gone, _Pre, _Full = Code.NOT_FOUND, Code.FAILED_PRECONDITION, Code.RESOURCE_EXHAUSTED
_Late, _Off, _Bug = Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE, Code.INTERNAL

# -- who is calling ----------------------------------------------------------------------------
TOKEN_MISSING = _reason(
    "TOKEN_MISSING", _Auth, 401,
    "Missing token: send it as `token` (gRPC metadata, or an HTTP header)",
    "no `token` metadata or header",
)  # fmt: skip
TOKEN_INVALID = _reason(
    "TOKEN_INVALID", _Auth, 401, "Invalid token", "a token the gateway does not know"
)
INSTANCE_FORBIDDEN = _reason(
    "INSTANCE_FORBIDDEN", _Perm, 403, "This token may not act on instance {instance}",
    "an instance token used for another instance, or another account's instance",
    metadata=("instance",),
)  # fmt: skip
RATE_LIMITED = _reason(
    "RATE_LIMITED", _Full, 429, "Rate limit exceeded: {limit_per_minute} requests per minute",
    "the token made more calls this minute than `rate_limit_per_minute` (+ RetryInfo; REST "
    "Retry-After)",
    metadata=("limit_per_minute",),
)  # fmt: skip

# -- what it names -----------------------------------------------------------------------------
INSTANCE_REQUIRED = _reason(
    "INSTANCE_REQUIRED", _Inv, 400, "instance is required", "`instance` is empty", edges=Edge.GRPC
)
INSTANCE_NOT_FOUND = _reason(
    "INSTANCE_NOT_FOUND", _Gone, 404, "Instance not found: {instance}",
    "no instance of that name (an account token's own instances only)", metadata=("instance",),
)  # fmt: skip
OPERATION_NOT_FOUND = _reason(
    "OPERATION_NOT_FOUND", _Gone, 404, "Operation not found: {operation_id}",
    "no such operation for the instance (or it is past retention)",
    metadata=("instance", "operation_id"),
)  # fmt: skip

# -- what it asks for --------------------------------------------------------------------------
NO_SETTINGS = _reason(
    "NO_SETTINGS", _Inv, 400, "At least one privacy setting must be provided",
    "an update that sets no field",
)  # fmt: skip
INVALID_VALUE = _reason(
    "INVALID_VALUE", _Inv, 400, "Invalid {field} value: {value}. Valid values: {valid}",
    "a value outside a field's (or an option's) value set (+ BadRequest)",
)  # fmt: skip
INVALID_REQUEST_ID = _reason(
    "INVALID_REQUEST_ID", _Inv, 400, "{field} must be a UUID, not {value}",
    "`request_id` (REST: `Idempotency-Key`) that is not a UUID",
)  # fmt: skip
REQUEST_ID_REUSED = _reason(
    "REQUEST_ID_REUSED", _Inv, 409,
    "Request id {request_id} was already used for a different request",
    "a retry whose body differs from the first request with its id (REST: 409)",
    metadata=("request_id",),
)  # fmt: skip
INVALID_PAGE_SIZE = _reason(
    "INVALID_PAGE_SIZE", _Inv, 400,
    "Invalid {field} value: {value}. Valid values: 0 or more (0 or none: 20; over 100: 100)",
    "a page size that is negative or not a whole number",
)  # fmt: skip
INVALID_PAGE_TOKEN = _reason(
    "INVALID_PAGE_TOKEN", _Inv, 400, "Invalid page token",
    "a page token this gateway did not hand out",
)  # fmt: skip
INVALID_PHONE = _reason(
    "INVALID_PHONE", _Inv, 400,
    "phone must be the number in international format, digits only (for example 5511999999999)",
    "PairInstance with a phone that is not 7 to 15 digits", edges=Edge.GRPC,
)  # fmt: skip

# -- the REST body -----------------------------------------------------------------------------
UNSUPPORTED_MEDIA_TYPE = _reason(
    "UNSUPPORTED_MEDIA_TYPE", _Inv, 415, "Content-Type must be application/json, not {given}",
    "a POST body that is not declared application/json", edges=Edge.REST,
)  # fmt: skip
BODY_TOO_LARGE = _reason(
    "BODY_TOO_LARGE", _Inv, 413, "Request body exceeds {limit} bytes",
    "a POST body over 16 KiB", edges=Edge.REST,
)  # fmt: skip
MALFORMED_JSON = _reason(
    "MALFORMED_JSON",
    _Inv,
    400,
    "Malformed JSON: {detail}",
    "a body that is not JSON",
    edges=Edge.REST,
)
BODY_NOT_OBJECT = _reason(
    "BODY_NOT_OBJECT", _Inv, 400, "Request body must be a JSON object",
    "a JSON body that is not an object", edges=Edge.REST,
)  # fmt: skip
SECTION_NOT_OBJECT = _reason(
    "SECTION_NOT_OBJECT", _Inv, 400, "{section} must be an object",
    "`visibility`, `privacy` or `permissions` that is not an object", edges=Edge.REST,
)  # fmt: skip
UNKNOWN_FIELD = _reason(
    "UNKNOWN_FIELD", _Inv, 400, "Unknown field: {name}. Valid fields: {valid}",
    "a body key the contract does not define", edges=Edge.REST,
)  # fmt: skip
UNKNOWN_QUERY_PARAMETER = _reason(
    "UNKNOWN_QUERY_PARAMETER", _Inv, 400,
    "Unknown query parameter: {name}. Valid query parameters: {valid}",
    "a query parameter the endpoint does not define", edges=Edge.REST,
)  # fmt: skip
ROUTE_NOT_FOUND = _reason(
    "ROUTE_NOT_FOUND",
    _Gone,
    404,
    "Not Found",
    "a path the REST surface does not serve",
    edges=Edge.REST,
)
METHOD_NOT_ALLOWED = _reason(
    "METHOD_NOT_ALLOWED", Code.UNIMPLEMENTED, 405, "Method Not Allowed",
    "a method the path does not serve (+ Allow)", edges=Edge.REST,
)  # fmt: skip

HTTP_ERROR = _reason(
    "HTTP_ERROR", _Inv, 400, "{detail}",
    "any other refusal by the HTTP layer itself, with the HTTP status it chose", edges=Edge.REST,
)  # fmt: skip

# -- the instance ------------------------------------------------------------------------------
INSTANCE_NOT_CONNECTED = _reason(
    "INSTANCE_NOT_CONNECTED", _Pre, 400, "Instance is not connected to WhatsApp",
    "the instance's session is not connected (see its state)", metadata=("instance",),
)  # fmt: skip
SETTINGS_UNKNOWN = _reason(
    "SETTINGS_UNKNOWN", _Off, 503,
    "The current privacy settings could not be read from WhatsApp: {detail}",
    "WhatsApp did not answer the read of the current settings", metadata=("instance",),
)  # fmt: skip
NOT_PAIRABLE = _reason(
    "NOT_PAIRABLE", _Pre, 400,
    "Instance {instance} is simulated: it has no WhatsApp account to pair",
    "PairInstance on a simulated instance", edges=Edge.GRPC, metadata=("instance",),
)  # fmt: skip

# -- pairing (PairInstance) --------------------------------------------------------------------
PAIRING_TIMED_OUT = _reason(
    "PAIRING_TIMED_OUT", _Late, 504, "Pairing failed: {detail}",
    "no QR code was scanned before WhatsApp's six codes expired", edges=Edge.GRPC,
)  # fmt: skip
PAIRING_REFUSED = _reason(
    "PAIRING_REFUSED", _Pre, 400, "Pairing failed: {detail}",
    "WhatsApp refused the pairing for a reason an operator must fix (client outdated, a phone "
    "without multi-device, PairPhone refused)", edges=Edge.GRPC,
)  # fmt: skip
ALREADY_PAIRED = _reason(
    "ALREADY_PAIRED", _Pre, 400, "Pairing failed: already paired as {jid}",
    "the instance's store already holds a device", edges=Edge.GRPC,
)  # fmt: skip
PAIRING_IN_PROGRESS = _reason(
    "PAIRING_IN_PROGRESS", _Pre, 409, "Pairing failed: a pairing is already in progress",
    "PairInstance while another PairInstance for the instance is running", edges=Edge.GRPC,
)  # fmt: skip
PHONE_REJECTED = _reason(
    "PHONE_REJECTED", _Inv, 400, "Pairing failed: pairing by phone failed: {detail}",
    "WhatsApp rejected the phone number", edges=Edge.GRPC,
)  # fmt: skip
PAIRING_RATE_LIMITED = _reason(
    "PAIRING_RATE_LIMITED", _Full, 429, "Pairing failed: WhatsApp's rate limit: {detail}",
    "WhatsApp's rate limit on pairing codes (+ RetryInfo)", edges=Edge.GRPC,
)  # fmt: skip
PAIRING_UNAVAILABLE = _reason(
    "PAIRING_UNAVAILABLE", _Off, 503, "Pairing failed: {detail}",
    "WhatsApp could not be reached, or ended the pairing: try again", edges=Edge.GRPC,
)  # fmt: skip

# -- an update that ended part-way (REST: 500, but WhatsApp's rate limit: 429) -----------------
STANZA_FAILED = _reason(
    "STANZA_FAILED", _Bug, 500, "failed to update {field} privacy: {detail}",
    "WhatsApp refused a field",
)  # fmt: skip
CONNECTION_LOST = _reason(
    "CONNECTION_LOST", _Off, 500, "failed to update {field} privacy: {detail}",
    "the connection was lost before a stanza left (nothing was sent for that field)",
)  # fmt: skip
STANZA_UNCONFIRMED = _reason(
    "STANZA_UNCONFIRMED", _Off, 500, "failed to update {field} privacy: {detail}",
    "a stanza was sent but its answer was lost: WhatsApp may hold the new value",
)  # fmt: skip
WHATSAPP_RATE_LIMITED = _reason(
    "WHATSAPP_RATE_LIMITED", _Full, 429, "failed to update {field} privacy: {detail}",
    "WhatsApp answered 429 (+ RetryInfo; REST Retry-After)",
)  # fmt: skip
WHATSAPP_UNAVAILABLE = _reason(
    "WHATSAPP_UNAVAILABLE", _Off, 500, "failed to update {field} privacy: {detail}",
    "WhatsApp answered a 5xx",
)  # fmt: skip
CANCELLED = _reason(
    "CANCELLED", Code.CANCELLED, 500, "the caller cancelled before updating {field} privacy",
    "the caller went away before every field was sent",
)  # fmt: skip
DEADLINE_EXCEEDED = _reason(
    "DEADLINE_EXCEEDED", _Late, 500, "the deadline passed before updating {field} privacy",
    "the call's deadline passed before every field was sent",
)  # fmt: skip
SHUTTING_DOWN = _reason(
    "SHUTTING_DOWN", _Off, 500, "the gateway is shutting down before updating {field} privacy",
    "the gateway stopped before every field was sent",
)  # fmt: skip
JOURNAL_FAILED = _reason(
    "JOURNAL_FAILED", _Off, 500,
    "the journal could not record the update before updating {field} privacy",
    "the operation journal stayed unusable (a full disk, a lock held elsewhere): no further "
    "stanza was sent; what was applied is in the details, and is journaled once it can be",
)  # fmt: skip
JOURNAL_BEHIND = _reason(
    "JOURNAL_BEHIND", _Off, 500,
    "the update was applied, but the journal could not record it yet: {detail}",
    "every field was sent, but the journal could not record the outcome: it is journaled once "
    "it can be",
)  # fmt: skip
JOURNAL_UNAVAILABLE = _reason(
    "JOURNAL_UNAVAILABLE", _Off, 503, "The operation journal cannot record updates: {detail}",
    "the journal cannot take writes (nothing was sent), or still owes an earlier update's "
    "outcome for the instance (+ RetryInfo)",
)  # fmt: skip
LEASE_LOST = _reason(
    "LEASE_LOST", _Off, 503,
    "this replica lost the instance's lease before updating {field} privacy",
    "replicas only: the replica serving the update could no longer renew the instance's lease "
    "(the database was unreachable, or it was stalled), so it stopped before another replica "
    "could take over; what was applied is in the details",
)  # fmt: skip
INSTANCE_UNOWNED = _reason(
    "INSTANCE_UNOWNED", _Off, 503,
    "No replica serves instance {instance} right now: its lease is moving to another replica",
    "replicas only: the instance's owner stopped or died and no other replica has taken its "
    "lease yet (within about lease_ttl_seconds); retry (+ RetryInfo)", metadata=("instance",),
)  # fmt: skip
OWNER_UNREACHABLE = _reason(
    "OWNER_UNREACHABLE", _Off, 503,
    "Instance {instance} is served by replica {replica}, which could not be reached: {detail}",
    "replicas only: the call was forwarded to the instance's owner and the owner did not answer "
    "(it died, or the network failed); a retry with the same request id is safe",
    metadata=("instance", "replica"),
)  # fmt: skip
INTERRUPTED = _reason(
    "INTERRUPTED", _Off, 500, "{detail}",
    "a retry of an update the previous gateway process was stopped in the middle of",
)  # fmt: skip
INTERNAL = _reason(
    "INTERNAL", _Bug, 500, "internal error: {detail}", "a fault in the gateway itself (a bug)"
)

# -- hostile input and limits ------------------------------------------------------------------
MALFORMED_REQUEST = _reason(
    "MALFORMED_REQUEST", _Inv, 400, "The request is not a valid {message} message",
    "a request message that cannot be parsed as its type (a string field that is not UTF-8 "
    "included)", edges=Edge.GRPC,
)  # fmt: skip
TOO_MANY_CALLS = _reason(
    "TOO_MANY_CALLS", _Full, 429, "Too many calls in progress: at most {limit} at once",
    "more calls in progress than `max_concurrent_calls`, gRPC and REST together; an open stream "
    "counts until it ends (+ RetryInfo; REST Retry-After)", metadata=("limit",),
)  # fmt: skip
MALFORMED_HTTP_REQUEST = _reason(
    "MALFORMED_HTTP_REQUEST", _Inv, 400, "Malformed HTTP request: {detail}",
    "a request the HTTP parser refuses: a control character in a header (the token's included), "
    "a repeated Content-Type or Content-Length, Content-Length with Transfer-Encoding, a broken "
    "chunked body, a method HTTP does not know", edges=Edge.REST,
)  # fmt: skip
REQUEST_LINE_TOO_LONG = _reason(
    "REQUEST_LINE_TOO_LONG", _Inv, 414, "Request line exceeds {limit} bytes",
    "a request line (method, path and query string) over 8190 bytes", edges=Edge.REST,
)  # fmt: skip
HEADERS_TOO_LARGE = _reason(
    "HEADERS_TOO_LARGE", _Inv, 431, "Request headers too large: {detail}",
    "a header over 8192 bytes (name and value), or more than 128 headers", edges=Edge.REST,
)  # fmt: skip


def no_settings() -> GatewayError:
    """NO_SETTINGS, naming ``settings`` as the field at fault."""
    return NO_SETTINGS.error(violations=(Violation("settings", NO_SETTINGS.message),))
