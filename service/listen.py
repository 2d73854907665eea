"""The gateway's ports, bound by one gateway only, and the one-line error when one is taken.

Neither edge shares its port: a second gateway started on a busy port must fail at once, saying
which port and what to change, not start quietly and take half of the first one's calls (grpc
sets ``SO_REUSEPORT`` unless told not to) or end in a traceback (aiohttp's ``OSError``).
"""

from __future__ import annotations

import errno
import os
import socket


class ListenError(Exception):
    """A port the gateway cannot listen on; the message names it and what to change."""


def host_and_port(address: str) -> tuple[str, int]:
    """``"[::1]:80"`` -> ``("::1", 80)``: the configuration has checked the shape already."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def listen_error(surface: str, address: str, option: str, cause: OSError | None) -> ListenError:
    """What to tell the operator about ``address`` (``surface`` is "gRPC" or "REST").

    ``cause`` is why binding failed, when known: a port in use is by far the likeliest, and the
    one with an obvious fix, so it gets its own wording.
    """
    if cause is not None and cause.errno == errno.EADDRINUSE:
        return ListenError(
            f"{surface} port {address} is already in use (another gateway?); "
            f"choose another {option}"
        )
    reason = f": {_why(cause)}" if cause is not None else ""
    return ListenError(f"{surface} cannot listen on {address}{reason}; check {option}")


def _why(cause: OSError) -> str:
    """The errno's own words: asyncio's messages repeat the address the caller already names."""
    if cause.errno is not None and cause.errno > 0:
        return os.strerror(cause.errno)
    return cause.strerror or str(cause)  # a failed lookup (gaierror: negative codes)


def bind_error(address: str) -> OSError | None:
    """Why ``address`` cannot be bound now, or None if it can (the socket is closed at once).

    grpc reports a failed bind as a bare ``RuntimeError``; this asks the kernel the same question
    (with ``SO_REUSEADDR``, as grpc and asyncio bind) to learn the errno.
    """
    host, port = host_and_port(address)
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return exc
    for family, kind, proto, _, sockaddr in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                return exc
    return None
