"""``probe_path``: the gateway's own try of the path to WhatsApp, against loopback servers.

Every server here is an asyncio server on 127.0.0.1 that plays one kind of proxy (or none), so
the probe never resolves or reaches WhatsApp. What the probe must do: say why a path does not
answer, in words an operator can act on, and within its patience; pass a path that answers; and
through a SOCKS5 proxy hand over the domain name, so that nothing resolves WhatsApp's host here.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from service.sessions.whatsapp.probe import WHATSAPP_HOST, WHATSAPP_PORT, probe_path

DIAL_ERROR = "failed to dial whatsapp web websocket"
AUTHORITY = f"{WHATSAPP_HOST}:{WHATSAPP_PORT}"
#: What the servers may take to see a probe through, before a test gives up on them.
TIMEOUT = 5.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Seen:
    """What a server read from the probe."""

    chunks: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """Runs ``handler`` for each connection on a free loopback port; yields the port."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT)
        await server.wait_closed()


def http_proxy(status_line: bytes, seen: Seen) -> Handler:
    """An HTTP proxy that reads the request head and answers ``status_line``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.chunks.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(status_line + b"\r\n\r\n")
        await writer.drain()
        # Until the probe hangs up (it must, once it has its answer).
        seen.chunks.append(await reader.read())
        seen.closed.set()

    return handle


def socks5_proxy(seen: Seen, *, method: int = 0x00, reply: int = 0x00) -> Handler:
    """A SOCKS5 proxy (RFC 1928): the method ``method`` chosen, then a reply ``reply``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        seen.chunks.append(bytes([version, count]) + await reader.readexactly(count))
        writer.write(bytes([0x05, method]))
        await writer.drain()
        if method != 0x00:
            seen.chunks.append(await reader.read())
            seen.closed.set()
            return
        head = await reader.readexactly(5)  # VER CMD RSV ATYP, and a domain name's length
        request = head + await reader.readexactly(head[4] + 2)
        seen.chunks.append(request)
        # VER REP RSV ATYP(IPv4) BND.ADDR BND.PORT
        writer.write(bytes([0x05, reply, 0x00, 0x01]) + bytes(4) + struct.pack(">H", 0))
        await writer.drain()
        seen.chunks.append(await reader.read())
        seen.closed.set()

    return handle


def silent(seen: Seen) -> Handler:
    """Accepts, reads whatever comes, and never answers, until the probe hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(1024):
            seen.chunks.append(chunk)
        seen.closed.set()

    return handle


async def closed_port() -> int:
    """A loopback port nothing listens on (a server's, closed again)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def timed(probe: Awaitable[str]) -> tuple[str, float]:
    started = time.monotonic()
    result = await asyncio.wait_for(probe, TIMEOUT)
    return result, time.monotonic() - started


# -- no proxy listening -------------------------------------------------------------------------


async def test_closed_port_names_the_proxy() -> None:
    for scheme in ("http", "socks5"):
        port = await closed_port()
        result, elapsed = await timed(probe_path(f"{scheme}://127.0.0.1:{port}"))
        assert result.startswith(f"{DIAL_ERROR}: proxy 127.0.0.1:{port}: "), (scheme, result)
        assert elapsed < 1.0, (scheme, elapsed)


async def test_closed_port_says_the_connection_was_refused() -> None:
    port = await closed_port()
    result = await probe_path(f"http://127.0.0.1:{port}")
    assert "connection refused" in result.lower(), result


# -- HTTP CONNECT -------------------------------------------------------------------------------


async def test_http_proxy_answering_200_passes() -> None:
    seen = Seen()
    async with serving(http_proxy(b"HTTP/1.1 200 Connection established", seen)) as port:
        result = await probe_path(f"http://127.0.0.1:{port}")
        await asyncio.wait_for(seen.closed.wait(), TIMEOUT)
    assert result == ""
    request_line, *headers = seen.chunks[0].decode().split("\r\n")
    assert request_line == f"CONNECT {AUTHORITY} HTTP/1.1"
    assert f"Host: {AUTHORITY}" in headers
    assert seen.chunks[1] == b"", "the probe sent nothing past the CONNECT"


async def test_http_proxy_answering_403_is_named() -> None:
    seen = Seen()
    async with serving(http_proxy(b"HTTP/1.1 403 Forbidden", seen)) as port:
        result = await probe_path(f"http://127.0.0.1:{port}")
        await asyncio.wait_for(seen.closed.wait(), TIMEOUT)
    assert result.startswith(DIAL_ERROR), result
    assert "HTTP/1.1 403 Forbidden" in result
    assert result == f"{DIAL_ERROR}: the proxy answered 'HTTP/1.1 403 Forbidden'"


async def test_http_proxy_that_hangs_up_is_named() -> None:
    seen = Seen()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.chunks.append(await reader.readuntil(b"\r\n\r\n"))

    async with serving(hang_up) as port:
        result = await probe_path(f"http://127.0.0.1:{port}")
    assert result.startswith(DIAL_ERROR), result
    assert "closed the connection" in result
    assert seen.chunks[0].startswith(f"CONNECT {AUTHORITY} ".encode())


# -- SOCKS5 -------------------------------------------------------------------------------------


async def test_socks5_proxy_passes_and_gets_the_domain_name() -> None:
    seen = Seen()
    async with serving(socks5_proxy(seen)) as port:
        result = await probe_path(f"socks5://127.0.0.1:{port}")
        await asyncio.wait_for(seen.closed.wait(), TIMEOUT)
    assert result == ""
    greeting, request, rest = seen.chunks
    assert greeting == b"\x05\x01\x00", "version 5, one method: no authentication"
    name = WHATSAPP_HOST.encode()
    # CONNECT to a domain name (ATYP 3), so that the proxy resolves it, not this host.
    assert request == b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x01\xbb"
    assert request[3] == 0x03
    assert request[5 : 5 + len(name)] == b"web.whatsapp.com"
    assert struct.unpack(">H", request[-2:]) == (443,)
    assert rest == b"", "the probe sent nothing past the CONNECT"


async def test_socks5_proxy_refusing_the_method_is_named() -> None:
    seen = Seen()
    async with serving(socks5_proxy(seen, method=0xFF)) as port:
        result = await probe_path(f"socks5://127.0.0.1:{port}")
    assert result == f"{DIAL_ERROR}: the SOCKS5 proxy refused the handshake"


async def test_socks5_proxy_failing_the_connect_is_named() -> None:
    seen = Seen()
    async with serving(socks5_proxy(seen, reply=0x05)) as port:  # 05: connection refused
        result = await probe_path(f"socks5://127.0.0.1:{port}")
    assert result == f"{DIAL_ERROR}: the SOCKS5 proxy answered 5"


# -- a proxy that never answers -----------------------------------------------------------------


async def test_silent_proxy_fails_within_the_patience() -> None:
    for scheme in ("http", "socks5"):
        seen = Seen()
        async with serving(silent(seen)) as port:
            result, elapsed = await timed(probe_path(f"{scheme}://127.0.0.1:{port}", patience=0.2))
            # The probe hangs up when it gives up, and the proxy sees that.
            await asyncio.wait_for(seen.closed.wait(), TIMEOUT)
        assert result == f"{DIAL_ERROR}: proxy 127.0.0.1:{port}: no answer", scheme
        assert 0.15 <= elapsed < 1.0, (scheme, elapsed)
        assert seen.data, f"{scheme}: the probe said nothing to the proxy"


# -- a proxy's credentials, offered as Go offers them -----------------------------------------


async def test_http_proxy_credentials_go_in_proxy_authorization() -> None:
    seen = Seen()
    async with serving(http_proxy(b"HTTP/1.1 200 OK", seen)) as port:
        result = await probe_path(f"http://gw%40acme:s3cret@127.0.0.1:{port}")
        await asyncio.wait_for(seen.closed.wait(), TIMEOUT)
    assert result == ""
    assert b"Proxy-Authorization: Basic Z3dAYWNtZTpzM2NyZXQ=\r\n" in seen.chunks[0]


def socks5_with_credentials(seen: Seen) -> Handler:
    """A SOCKS5 proxy that asks for username/password (RFC 1929) and accepts them."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        seen.chunks.append(bytes([version, count]) + await reader.readexactly(count))
        writer.write(b"\x05\x02")
        await writer.drain()
        version, length = await reader.readexactly(2)
        name = await reader.readexactly(length)
        password = await reader.readexactly((await reader.readexactly(1))[0])
        seen.chunks.append(name + b":" + password)
        writer.write(b"\x01\x00")
        head = await reader.readexactly(5)
        seen.chunks.append(head + await reader.readexactly(head[4] + 2))
        writer.write(bytes([0x05, 0x00, 0x00, 0x01]) + bytes(4) + struct.pack(">H", 0))
        await writer.drain()
        seen.chunks.append(await reader.read())
        seen.closed.set()

    return handle


async def test_socks5_credentials_are_offered_and_sent() -> None:
    seen = Seen()
    async with serving(socks5_with_credentials(seen)) as port:
        result = await probe_path(f"socks5://gw:s3cret@127.0.0.1:{port}")
        await asyncio.wait_for(seen.closed.wait(), TIMEOUT)
    assert result == ""
    assert seen.chunks[0] == b"\x05\x01\x02"
    assert seen.chunks[1] == b"gw:s3cret"
    assert b"web.whatsapp.com" in seen.chunks[2]
