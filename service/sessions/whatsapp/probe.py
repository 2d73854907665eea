"""Trying the path to WhatsApp before neonize is asked to dial it.

Every ``Neonize`` call opens the session store again and never closes it (goneonize/main.go:58-64
``getDB``, called at 623; no ``Close`` anywhere in neonize), so a gateway that let neonize
retry an unreachable WhatsApp would leak one file descriptor, or one PostgreSQL connection, per
attempt until the process or the server runs out. The gateway therefore tries the path itself
first: a TCP connection to the proxy (or to WhatsApp), and through a proxy the proxy's own
handshake (HTTP ``CONNECT``, or SOCKS5 with the domain name, so nothing resolves WhatsApp's
host here). Only a path that answers is handed to neonize.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import struct
from urllib.parse import SplitResult, unquote, urlsplit

WHATSAPP_HOST = "web.whatsapp.com"
WHATSAPP_PORT = 443
#: How long each step of the probe may take.
PROBE_TIMEOUT = 5.0
#: whatsmeow's own words for a dial that fails (socket/constants.go:44).
DIAL_FAILED = "failed to dial whatsapp web websocket"


async def probe_path(proxy: str | None, patience: float = PROBE_TIMEOUT) -> str:
    """ "" when the path to WhatsApp answers, else why not (as the operator should read it).

    As whatsmeow dials (client.go:317-340, Go's net/http and x/net/proxy): an ``https://`` proxy
    is spoken to over TLS, a proxy's credentials are offered (HTTP Basic, SOCKS5
    username/password), and a SOCKS5 proxy gets the domain name.
    """
    if not proxy:
        target = f"{WHATSAPP_HOST}:{WHATSAPP_PORT}"
        host, port, scheme, parts = WHATSAPP_HOST, WHATSAPP_PORT, "", None
    else:
        parts = urlsplit(proxy)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or {"https": 443, "socks5": 1080}.get(scheme, 80)
        target = f"proxy {host}:{port}"
    tls = ssl.create_default_context() if scheme == "https" else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None),
            patience,
        )
    except (OSError, TimeoutError) as exc:
        return f"{DIAL_FAILED}: {target}: {_describe(exc)}"
    try:
        if scheme in ("http", "https"):
            return await asyncio.wait_for(_http_connect(reader, writer, parts), patience)
        if scheme == "socks5":
            return await asyncio.wait_for(_socks5_connect(reader, writer, parts), patience)
        return ""
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"{DIAL_FAILED}: {target}: {_describe(exc)}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _http_connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parts: SplitResult | None
) -> str:
    authority = f"{WHATSAPP_HOST}:{WHATSAPP_PORT}"
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if parts is not None and parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request += (
            f"Proxy-Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
        )
    writer.write((request + "\r\n").encode())
    await writer.drain()
    status_line = (await reader.readline()).decode(errors="replace").strip()
    if not status_line:
        return f"{DIAL_FAILED}: the proxy closed the connection"
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or fields[1] != "200":
        return f"{DIAL_FAILED}: the proxy answered {status_line[:80]!r}"
    return ""


async def _socks5_connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parts: SplitResult | None
) -> str:
    user = unquote(parts.username) if parts is not None and parts.username is not None else None
    # Version 5, one method: username/password when the URL carries them, else none (RFC 1928).
    writer.write(b"\x05\x01\x02" if user is not None else b"\x05\x01\x00")
    await writer.drain()
    version, method = await reader.readexactly(2)
    if version != 5 or method not in (0, 2) or (method == 2 and user is None):
        return f"{DIAL_FAILED}: the SOCKS5 proxy refused the handshake"
    if method == 2:
        assert parts is not None
        name, password = (user or "").encode(), unquote(parts.password or "").encode()
        writer.write(b"\x01" + bytes([len(name)]) + name + bytes([len(password)]) + password)
        await writer.drain()
        _, status = await reader.readexactly(2)  # RFC 1929
        if status != 0:
            return f"{DIAL_FAILED}: the SOCKS5 proxy refused the credentials"
    domain = WHATSAPP_HOST.encode()
    writer.write(b"\x05\x01\x00\x03" + bytes([len(domain)]) + domain + struct.pack(">H", 443))
    await writer.drain()
    reply = await reader.readexactly(2)
    if reply[1] != 0:
        return f"{DIAL_FAILED}: the SOCKS5 proxy answered {reply[1]}"
    return ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the proxy closed the connection"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # "connection refused", as Go says it
    return str(exc) or type(exc).__name__
