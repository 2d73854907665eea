"""Recording proxies on 127.0.0.1, so the real neonize library can dial without leaving the host.

A proxy accepts a connection, reads what the client asks for (an HTTP ``CONNECT`` head, or a SOCKS5
greeting and connect request), records it, and never forwards anything: it closes the connection
at once, or holds it open (``hold``) to keep a dial in flight until ``release``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

Protocol = Literal["http", "socks5"]
#: How long a client may take to say what it wants before the proxy gives up on it.
READ_TIMEOUT = 5.0


@dataclass
class Dial:
    """What a proxy saw of one connection attempt."""

    #: HTTP: the request line and headers. SOCKS5: the greeting (version, methods).
    head: bytes = b""
    #: SOCKS5 only: the connect request's command, address type, host and port.
    command: int = 0
    address_type: int = 0
    host: str = ""
    port: int = 0
    #: HTTP only: the request line, decoded.
    request_line: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class RecordingProxy:
    """An HTTP or SOCKS5 proxy on a free loopback port that records dials and forwards nothing."""

    def __init__(self, protocol: Protocol, *, hold: bool = False) -> None:
        self.protocol = protocol
        self.hold = hold
        self.dials: list[Dial] = []
        self._server: asyncio.Server | None = None
        self._released = asyncio.Event()
        self._dialed = asyncio.Condition()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"{self.protocol}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def release(self) -> None:
        """Closes the connections being held (their dials then fail) and holds no more."""
        self._released.set()

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=READ_TIMEOUT)

    async def wait_for_dials(self, count: int = 1, within: float = 5.0) -> list[Dial]:
        """The dials recorded, once there are at least ``count``."""
        async with self._dialed:
            await asyncio.wait_for(self._dialed.wait_for(lambda: len(self.dials) >= count), within)
        return list(self.dials)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            read = self._read_http if self.protocol == "http" else self._read_socks5
            dial = await asyncio.wait_for(read(reader, writer), READ_TIMEOUT)
            async with self._dialed:
                self.dials.append(dial)
                self._dialed.notify_all()
            if self.hold:
                await self._released.wait()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)

    @staticmethod
    async def _read_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Dial:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return Dial(head=head, request_line=request_line, headers=headers)

    @staticmethod
    async def _read_socks5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Dial:
        version, methods = await reader.readexactly(2)
        greeting = bytes([version, methods]) + await reader.readexactly(methods)
        writer.write(b"\x05\x00")  # version 5, no authentication
        await writer.drain()
        _, command, _, address_type = await reader.readexactly(4)
        if address_type == 3:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode("ascii")
        elif address_type == 1:
            host = ".".join(str(b) for b in await reader.readexactly(4))
        else:
            host = (await reader.readexactly(16)).hex()
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        return Dial(head=greeting, command=command, address_type=address_type, host=host, port=port)
