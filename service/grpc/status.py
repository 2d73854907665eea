"""The one place a ``GatewayError`` becomes a gRPC status (AIP-193 style rich details)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.errors import ERROR_DOMAIN, Code, GatewayError, UpdateFailed
from service.grpc.convert import update_response

_CODES: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.value] for code in Code}


def to_status(error: GatewayError) -> grpc.Status:
    """The status for ``error``: its code and message, with ErrorInfo and whatever else helps.

    BadRequest lists invalid fields, RetryInfo says when to come back, and a failed update carries
    the full ``UpdatePrivacySettingsResponse`` so a unary caller learns exactly what was applied.
    """
    details: list[Message] = [
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
        )
    ]
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if error.retry_after_whole_seconds is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromSeconds(error.retry_after_whole_seconds)
        details.append(retry)
    if isinstance(error, UpdateFailed):
        details.append(update_response(error.snapshot))
    status = status_pb2.Status(
        code=_CODES[error.code].value[0], message=error.message, details=[_pack(d) for d in details]
    )
    return rpc_status.to_status(status)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
