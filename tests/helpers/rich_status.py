"""Reading the ``google.rpc.Status`` details an error carries, as a caller in any language would.

Each helper expects exactly one detail of its kind: a second ErrorInfo or a second response would
be as much a defect as a missing one.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from service.errors import ERROR_DOMAIN
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb

M = TypeVar("M", bound=Message)


def details(status: status_pb2.Status, kind: type[M]) -> list[M]:
    """Every detail of ``kind``, unpacked."""
    found = []
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            message = kind()
            packed.Unpack(message)
            found.append(message)
    return found


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    (info,) = details(status, error_details_pb2.ErrorInfo)
    assert info.domain == ERROR_DOMAIN
    return info


def update_response(status: status_pb2.Status) -> pb.UpdatePrivacySettingsResponse:
    """The update's full response, which a failed update carries in its status."""
    (response,) = details(status, pb.UpdatePrivacySettingsResponse)
    return response
