"""What a caller sends comes back bounded and sanitised, and a token never comes back at all.

Every value a message or ErrorInfo metadata echoes is ``shown()``: at most 64 characters and an
ellipsis, control characters escaped. So a 6 KB or a 1 MB instance name is NOT_FOUND with
trailers of a few hundred bytes (before, a 6 KB name ended RESOURCE_EXHAUSTED on the client's
metadata limit, and a 1 MB name made the server send 3 MB of trailers). On REST, what the
HTTP parser refuses is answered in the envelope, without quoting the request, and logged as one
line naming the reason, not as aiohttp's traceback quoting the header line, token and all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_status import rpc_status

from service.errors import SHOWN_CHARACTERS, shown
from service.observability import calls
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from tests.helpers.harness import ACME_TOKEN, SALES_TOKEN, Harness
from tests.helpers.hostile import SECRETS, parse_reply, trailer_bytes
from tests.helpers.rest_client import Rest
from tests.helpers.rich_status import error_info

#: An error's whole trailers (message, status details) stay under this, however long the input.
SMALL = 1024
SIZES = {"6 KB": 6 * 1024, "1 MB": 1024 * 1024}
LAST_SEEN_NONE = spb.PrivacySettings(visibility=spb.Visibility(last_seen=spb.VISIBILITY_VALUE_NONE))

Call = Callable[[Harness, str], Awaitable[Any]]


def _md(token: str = ACME_TOKEN) -> tuple[tuple[str, str], ...]:
    return (("token", token),)


async def _stream_first(call: Any) -> Any:
    async for message in call:
        return message
    return None


CALLS: dict[str, tuple[Call, str]] = {
    "GetPrivacySettings": (
        lambda h, v: h.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=v), metadata=_md()
        ),
        "INSTANCE_NOT_FOUND",
    ),
    "UpdatePrivacySettings": (
        lambda h, v: h.stub.UpdatePrivacySettings(
            pb.UpdatePrivacySettingsRequest(instance=v, settings=LAST_SEEN_NONE), metadata=_md()
        ),
        "INSTANCE_NOT_FOUND",
    ),
    "StreamUpdatePrivacySettings": (
        lambda h, v: _stream_first(
            h.stub.StreamUpdatePrivacySettings(
                pb.StreamUpdatePrivacySettingsRequest(instance=v, settings=LAST_SEEN_NONE),
                metadata=_md(),
            )
        ),
        "INSTANCE_NOT_FOUND",
    ),
    "WatchPrivacySettings": (
        lambda h, v: _stream_first(
            h.stub.WatchPrivacySettings(pb.WatchPrivacySettingsRequest(instance=v), metadata=_md())
        ),
        "INSTANCE_NOT_FOUND",
    ),
    "ListUpdateOperations": (
        lambda h, v: h.stub.ListUpdateOperations(
            pb.ListUpdateOperationsRequest(instance=v), metadata=_md()
        ),
        "INSTANCE_NOT_FOUND",
    ),
    "GetInstance": (
        lambda h, v: instance_grpc.InstanceServiceStub(h.channel).GetInstance(
            instance_pb.GetInstanceRequest(instance=v), metadata=_md()
        ),
        "INSTANCE_NOT_FOUND",
    ),
    "an instance token naming another instance": (
        lambda h, v: h.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=v), metadata=_md(SALES_TOKEN)
        ),
        "INSTANCE_FORBIDDEN",
    ),
    "GetUpdateOperation's operation_id": (
        lambda h, v: h.stub.GetUpdateOperation(
            pb.GetUpdateOperationRequest(instance="sales", operation_id=v), metadata=_md()
        ),
        "OPERATION_NOT_FOUND",
    ),
    "UpdatePrivacySettings' request_id": (
        lambda h, v: h.stub.UpdatePrivacySettings(
            pb.UpdatePrivacySettingsRequest(
                instance="sales", settings=LAST_SEEN_NONE, request_id=v
            ),
            metadata=_md(),
        ),
        "INVALID_REQUEST_ID",
    ),
    "ListUpdateOperations' page_token": (
        lambda h, v: h.stub.ListUpdateOperations(
            pb.ListUpdateOperationsRequest(instance="sales", page_token=v), metadata=_md()
        ),
        "INVALID_PAGE_TOKEN",
    ),
}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("call", CALLS.keys())
async def test_a_long_value_is_answered_with_small_trailers(
    gateway: Harness, call: str, size: int
) -> None:
    make, reason = CALLS[call]
    value = "x" * size

    with pytest.raises(aio.AioRpcError) as raised:
        await make(gateway, value)

    error = raised.value
    status = rpc_status.from_call(error)
    assert status is not None, (error.code(), error.details())
    info = error_info(status)
    assert info.reason == reason
    assert trailer_bytes(error) < SMALL, trailer_bytes(error)
    assert value[: SHOWN_CHARACTERS + 1] not in (error.details() or "")
    for echoed in info.metadata.values():
        assert len(echoed) <= SHOWN_CHARACTERS + 3
    assert gateway.session().stanzas == 0


async def test_control_characters_come_back_escaped(gateway: Harness) -> None:
    name = "sales\n\x1b[31mred\u202e"

    with pytest.raises(aio.AioRpcError) as raised:
        await gateway.get(name)

    status = rpc_status.from_call(raised.value)
    assert status is not None
    assert raised.value.details() == f"Instance not found: {shown(name)}"
    assert error_info(status).metadata["instance"] == "sales\\n\\x1b[31mred\\u202e"


async def test_a_message_that_does_not_parse_is_a_caller_error(gateway: Harness) -> None:
    """Bytes that are not the method's message, or a string field that is not UTF-8: once the
    caller is known, INVALID_ARGUMENT MALFORMED_REQUEST (before, grpc answered UNKNOWN and
    logged the DecodeError's traceback)."""
    raw = gateway.channel.unary_unary("/wagateway.privacy.v1.PrivacyService/GetPrivacySettings")
    answers = []
    for body in (b"\xff\xff\xff", b"\x0a\x02\xc3\x28"):  # garbage; field 1 with invalid UTF-8
        with pytest.raises(aio.AioRpcError) as raised:
            await raw(body, metadata=_md())
        status = rpc_status.from_call(raised.value)
        assert status is not None
        answers.append((raised.value.code(), error_info(status).reason, raised.value.details()))
    with pytest.raises(aio.AioRpcError) as anonymous:
        await raw(b"\xff\xff\xff")

    message = "The request is not a valid wagateway.privacy.v1.GetPrivacySettingsRequest message"
    assert answers == [(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", message)] * 2
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- REST: the parser's refusals ---------------------------------------------------------------


async def _raw(rest: Rest, request: bytes) -> Any:
    port = int(rest.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    reply = parse_reply(raw)
    assert reply is not None, raw
    return reply, raw


def _get(*headers: bytes, path: bytes = b"/api/profile/privacy/sales") -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: gateway", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


TOKEN = ACME_TOKEN.encode()
REFUSED = {
    "a token ending in CR": (_get(b"token: " + TOKEN + b"\r"), 400, "MALFORMED_HTTP_REQUEST"),
    "a token ending in LF": (_get(b"token: " + TOKEN + b"\n"), 400, "MALFORMED_HTTP_REQUEST"),
    "a token ending in a bare LF line": (
        _get(b"token: " + TOKEN + b"\nX-After: 1"),
        400,
        "MALFORMED_HTTP_REQUEST",
    ),
    "a token with a control character": (
        _get(b"token: " + TOKEN + b"\x01"),
        400,
        "MALFORMED_HTTP_REQUEST",
    ),
    "a repeated Content-Type": (
        _get(b"token: " + TOKEN, b"Content-Type: a/b", b"Content-Type: a/b"),
        400,
        "MALFORMED_HTTP_REQUEST",
    ),
    "Content-Length with Transfer-Encoding": (
        _get(b"token: " + TOKEN, b"Content-Length: 2", b"Transfer-Encoding: chunked"),
        400,
        "MALFORMED_HTTP_REQUEST",
    ),
    "a 9 KB path": (
        _get(b"token: " + TOKEN, path=b"/" + b"a" * 9000),
        414,
        "REQUEST_LINE_TOO_LONG",
    ),
    "a 100 KB header": (
        _get(b"token: " + TOKEN, b"X-Big: " + b"a" * 100_000),
        431,
        "HEADERS_TOO_LARGE",
    ),
    "a 100 KB token": (_get(b"token: " + TOKEN * 6000), 431, "HEADERS_TOO_LARGE"),
    "200 headers": (
        _get(b"token: " + TOKEN, *(b"X-H%d: v" % i for i in range(200))),
        431,
        "HEADERS_TOO_LARGE",
    ),
    "an unknown method": (
        _get(b"token: " + TOKEN).replace(b"GET", b"BREW", 1),
        400,
        "MALFORMED_HTTP_REQUEST",
    ),
    "a token that is not UTF-8": (_get(b"token: \xff\xfe" + TOKEN), 401, "TOKEN_INVALID"),
}


@pytest.mark.parametrize("case", REFUSED.keys())
async def test_what_the_parser_refuses_is_an_envelope_without_the_request(
    rest: Rest, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    request, status, reason = REFUSED[case]
    caplog.set_level(logging.DEBUG)

    reply, raw = await _raw(rest, request)

    assert (reply.status, reply.headers["content-type"].split(";")[0]) == (
        status,
        "application/json",
    )
    body = reply.body.decode()
    assert f'"reason": "{reason}"' in body
    assert '"success": false' in body
    for secret in SECRETS:
        assert secret.encode() not in raw
        assert secret not in caplog.text
    assert len(raw) < SMALL
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    refusals = [r for r in caplog.records if r.name.startswith("service.")]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    # One line: the parser's refusal, or the call's own line (with its reason as a field).
    said = getattr(refusals[0], calls.FIELDS, {}).get("reason") or refusals[0].getMessage()
    assert said.endswith(reason), refusals[0].getMessage()
