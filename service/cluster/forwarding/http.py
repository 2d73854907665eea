"""Proxies a REST call to the replica that owns its instance, and the owner's answer back.

The request goes to the owner's REST port (``Peer.http_address``) as it came: method, path and
query as sent, the body, and every end-to-end header (the ``token`` among them), minus the
hop-by-hop ones (and those ``Connection`` names), plus ``MARKER``. Headers the caller did not send
stay unsent (aiohttp's client would add its own Content-Type, Accept and User-Agent), since the
owner judges a missing Content-Type differently from a wrong one. The answer comes back as the
owner sent it: status, end-to-end headers and body, an NDJSON stream chunk by chunk as each
arrives (bodies are not decompressed, so an encoded body stays as encoded).

The caller hanging up cancels this handler (the server's ``handler_cancellation``), which closes
the connection to the owner, whose handler is cancelled in turn and halts its update as if the
caller had hung up on it directly.

The owner not answering (refused, reset, silent past ``read_timeout``) is the catalogue's
OWNER_UNREACHABLE in the REST envelope; when it dies in the middle of a stream, whose status is
already sent, the stream ends with an error line (``{"event": "error", ...}``) as an update's
failure does. An owner that serves no REST (``http_address`` None) is OWNER_UNREACHABLE too, with
a detail that says so: the replicas are expected to serve the same edges.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from service import errors
from service.cluster.forwarding.marker import MARKER
from service.errors import GatewayError
from service.gateway import Forward
from service.http import responses
from service.http.body import MAX_BODY_BYTES
from service.http.responses import NDJSON
from service.observability import calls

log = logging.getLogger(__name__)

#: Headers that describe one connection, never relayed either way (RFC 9110, 7.6.1), and the
#: ones recomputed for the next hop (Host, Content-Length).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        MARKER,
    }
)
#: Headers aiohttp's client adds on its own unless told not to.
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
CONNECT_TIMEOUT_SECONDS = 5.0
#: The longest the owner may stay silent: an update's stanzas are each bounded well below it.
READ_TIMEOUT_SECONDS = 300.0
_UNREACHABLE_DETAIL = "the connection to it failed or was lost"


class HttpForwarder:
    """Proxies REST calls to their owners through one aiohttp client (a pool per peer).

    ``ssl_context``: the peers' REST ports speak HTTPS, verified with it (None: plain HTTP).
    The client is made on first use, in the running loop; ``close`` closes it.
    """

    def __init__(
        self,
        replica_id: str,
        ssl_context: ssl.SSLContext | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        mark: str | None = None,
    ) -> None:
        """``mark``: what the calls it forwards carry as ``MARKER`` (see ``GrpcForwarder``)."""
        self.replica_id = replica_id
        self._mark = mark or replica_id
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._client: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._client

    async def proxy(self, request: web.Request, forward: Forward) -> web.StreamResponse:
        """The owner's answer to ``request``; raises OWNER_UNREACHABLE if there is none."""
        address = forward.peer.http_address
        if address is None:
            raise _unreachable(forward, "it serves no REST (call it over gRPC)")
        scheme = "https" if self._ssl is not None else "http"
        url = URL(f"{scheme}://{address}{request.raw_path}", encoded=True)
        body = await _body(request)
        try:
            upstream = await self._session().request(
                request.method,
                url,
                headers=self.headers(request),
                data=body,
                skip_auto_headers=_AUTO_HEADERS,
                allow_redirects=False,
                ssl=self._ssl if self._ssl is not None else True,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning(
                "replica %s, owner of %s, could not be reached: %s",
                forward.peer.replica_id,
                forward.instance,
                type(exc).__name__,
            )
            raise _unreachable(forward, _UNREACHABLE_DETAIL) from None
        try:
            return await _relay(request, upstream, forward)
        finally:
            # Read to its end, the connection goes back to the pool; cut short (the caller left,
            # the owner failed), it is closed, which tells the owner its caller is gone.
            if upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()

    def headers(self, request: web.Request) -> CIMultiDict[str]:
        """The caller's end-to-end headers, and the mark."""
        named = {
            token.strip().lower()
            for value in request.headers.getall(hdrs.CONNECTION, ())
            for token in value.split(",")
        }
        out: CIMultiDict[str] = CIMultiDict()
        for key, value in request.headers.items():
            lowered = key.lower()
            if lowered not in HOP_BY_HOP and lowered not in named:
                out.add(key, value)
        out[MARKER] = self._mark
        return out

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


async def _body(request: web.Request) -> bytes | AsyncIterator[bytes] | None:
    """The request's body: read whole when it is declared and small (sent on with its length),
    else streamed as it comes (the owner judges its size and framing as it would directly)."""
    if not request.body_exists:
        return None
    length = request.content_length
    if length is not None and length <= MAX_BODY_BYTES:
        try:
            return await request.read()
        except RequestPayloadError as exc:
            raise errors.MALFORMED_HTTP_REQUEST.error(
                detail="the body is not framed as declared"
            ) from exc
    return _chunks(request)


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, forward: Forward
) -> web.StreamResponse:
    headers = CIMultiDict(
        (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
    )
    if upstream.content_length is not None or request.method == "HEAD":
        try:
            body = await upstream.read()
        except (TimeoutError, aiohttp.ClientError):
            raise _unreachable(forward, _UNREACHABLE_DETAIL) from None
        return web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body
        )
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    last = b"\n"
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
            last = chunk[-1:] or last
    except (TimeoutError, aiohttp.ClientError):
        error = _unreachable(forward, _UNREACHABLE_DETAIL)
        calls.note_failure(error)
        if NDJSON in upstream.headers.get(hdrs.CONTENT_TYPE, ""):
            # A line the owner had begun is ended first, so the error is a line of its own.
            line = {"event": "error", "error": responses.error_body(error)["error"]}
            start = b"" if last == b"\n" else b"\n"
            await response.write(start + json.dumps(line, separators=(",", ":")).encode() + b"\n")
    await response.write_eof()
    return response


def _unreachable(forward: Forward, detail: str) -> GatewayError:
    return errors.OWNER_UNREACHABLE.error(
        instance=forward.instance, replica=forward.peer.replica_id, detail=detail
    )
