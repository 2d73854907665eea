"""aiohttp's connection handling, made to answer what its parser refuses in the contract's envelope.

aiohttp parses each request before any application code runs; what its parser refuses never
reaches a handler or a middleware. It is answered from ``RequestHandler.handle_error``
(aiohttp/web_protocol.py, 3.14)::

    data_received():                                   # web_protocol.py:438-456
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            messages = [(_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)]
    start():                                           # web_protocol.py:663-666
        if isinstance(message, _ErrInfo):
            request_handler = self._make_error_handler(message)
    _make_error_handler() -> handle_error(request, err_info.status, err_info.exc,
                                          err_info.message)      # web_protocol.py:912-920
    handle_error():                                    # web_protocol.py:850-910
        self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        ...
        resp = Response(status=status, text=message, content_type="text/plain")

so a parser's refusal is a text/plain 400 whose body is the exception's message, which quotes
the offending line (a ``token: ...\\r`` header, token and all), logged at ERROR with its
traceback by the ``aiohttp.server`` logger. ``handle_error`` is also where an exception a
handler let escape becomes the bare 500 (``_handle_request``, web_protocol.py:588-590).

``GatewayRequestHandler`` overrides ``handle_error``: the refusal becomes the catalogue's reason
(``refusal``) in the contract's envelope with its own 4xx, and one log line that names the reason
and nothing of the request. It keeps what aiohttp's version guarantees: a response already
begun is not answered twice (the ``ConnectionError``, web_protocol.py:876-880) and the
connection is closed after the answer (``resp.force_close()``). Its ``log_exception`` likewise
drops a parser exception's text wherever aiohttp itself would log it.

The parser's limits are set here (``server_limits``): the request line and a header's line have
limits of different sizes, so that ``LineTooLong`` (which both raise, with the limit as its
second argument: _http_parser.pyx cb_on_url and cb_on_header_value) says which one was crossed.
"""

from __future__ import annotations

import logging
import traceback
from http import HTTPStatus
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_request import BaseRequest

from service import errors
from service.errors import GatewayError, shown
from service.http import responses

log = logging.getLogger("service.http")

#: The request line (method, path, query string), aiohttp's default.
MAX_REQUEST_LINE_BYTES = 8190
#: One header's name and value together.
MAX_HEADER_BYTES = 8192
#: Headers in one request, aiohttp's default.
MAX_HEADERS = 128

_TOO_MANY_HEADERS = "Too many headers received"
#: llhttp's reasons are its own fixed texts; aiohttp's C parser quotes the offending line after
#: them (``"{reason}:\\n\\n  {line!r}\\n  {pointer}"``, _http_parser.pyx parser_error_from_errno).
_QUOTE = ":\n\n  "
#: The singleton headers aiohttp refuses twice (``Duplicate '<name>' header found.``).
_DUPLICATE = ("Duplicate '", "' header found.")


def server_limits() -> dict[str, Any]:
    """The parser's limits, as ``web.AppRunner``'s keyword arguments (passed to RequestHandler)."""
    return {
        "max_line_size": MAX_REQUEST_LINE_BYTES,
        "max_field_size": MAX_HEADER_BYTES,
        "max_headers": MAX_HEADERS,
    }


def refusal(exc: BaseException | None) -> GatewayError:
    """The catalogue's reason for what aiohttp's parser refused; its detail quotes none of it."""
    if isinstance(exc, LineTooLong):
        if len(exc.args) > 1 and exc.args[1] == MAX_REQUEST_LINE_BYTES:
            return errors.REQUEST_LINE_TOO_LONG.error(limit=MAX_REQUEST_LINE_BYTES)
        return errors.HEADERS_TOO_LARGE.error(detail=f"a header exceeds {MAX_HEADER_BYTES} bytes")
    message = exc.message if isinstance(exc, HttpProcessingError) else ""
    if isinstance(exc, BadHttpMessage) and message == _TOO_MANY_HEADERS:
        return errors.HEADERS_TOO_LARGE.error(detail=f"more than {MAX_HEADERS} headers")
    return errors.MALFORMED_HTTP_REQUEST.error(detail=_detail(message))


def _detail(message: str) -> str:
    """The parser's own reason, where it is a fixed text; else a word that quotes nothing."""
    if _QUOTE in message:
        return shown(message.split(_QUOTE, 1)[0])
    start, end = _DUPLICATE
    if message.startswith(start) and message.endswith(end):
        name = message[len(start) : -len(end)]
        if name.replace("-", "").isalpha():
            return f"repeated {shown(name)} header"
    return "not a valid HTTP/1.1 request"


class GatewayRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering its refusals in the envelope (module doc)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp's own: part of a response is out, so no error can be sent in its place.
            raise ConnectionError("a response was begun: the error cannot be sent in its place")
        if isinstance(exc, HttpProcessingError):
            error = refusal(exc)
            log.info("an HTTP request the parser refused: %s %s", error.code.value, error.reason)
            status = error.http_status
        elif status >= 500 and exc is not None:
            # A handler let an exception escape: a bug, logged as one (never a request's text).
            log.error(
                "REST handler failed with %s\n%s",
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            error = errors.INTERNAL.error(detail=type(exc).__name__)
        else:
            error = responses.http_refusal(status, _status_phrase(status))
        response = web.json_response(responses.error_body(error), status=status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            log.info("HTTP request refused: %s", refusal(exc).reason)
            return
        super().log_exception(*args, **kw)


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"


class _Server(web.Server):
    """``web.Server`` whose connections get a ``GatewayRequestHandler``: aiohttp's own makes a
    ``RequestHandler(self, loop=self._loop, **self._kwargs)`` per connection
    (web_server.py:74-76)."""

    def __call__(self) -> web_protocol.RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` serving its application through ``GatewayRequestHandler``.

    ``AppRunner._make_server`` (web_runner.py:415-422) starts the application and returns
    ``app._make_handler(...)``, a ``web.Server``; the same server, made a ``_Server``, takes its
    place with the same handler, request factory and arguments.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


class _NoRequestText(logging.Filter):
    """Keeps a parser's exception (which quotes the request's lines) out of aiohttp's own log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "HTTP request refused: %s", (refusal(exc).reason,)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_aiohttp_server_log() -> None:
    """Installs ``_NoRequestText`` on the ``aiohttp.server`` logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _NoRequestText) for f in logger.filters):
        logger.addFilter(_NoRequestText())
