"""The one REST client the tests call the gateway's HTTP surface with, over loopback.

Every reply must be JSON: the contract promises its envelope even where aiohttp would answer
with a bare text 500 or an HTML page, so the client checks that on every call instead of leaving
it to each test. Streams (NDJSON) are read with ``Rest.client`` directly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.http.server import HttpServer
from service.sessions.simulated import SimulatedSession
from tests.helpers.harness import ACME_TOKEN, Harness

PATH = "/api/profile/privacy/{}"
#: The stanza latency of the ``slow_rest`` fixture's instance: long enough to hang up mid-update.
SLOW_LATENCY_MS = 100


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Rest:
    """Calls as a REST caller would, with ``harness`` at hand to look behind the gateway.

    ``token=None`` sends no token header at all, which the contract answers differently from an
    empty or a wrong token. ``tail`` follows the instance's path: a sub-path, a query, or both.
    """

    harness: Harness
    base: str
    client: aiohttp.ClientSession

    async def get(self, instance: str, *, tail: str = "", token: str | None = ACME_TOKEN) -> Reply:
        headers = {"token": token} if token is not None else {}
        return await self.request("GET", PATH.format(instance) + tail, headers=headers)

    async def post(
        self,
        instance: str,
        body: Any,
        *,
        tail: str = "",
        token: str | None = ACME_TOKEN,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return await self.post_raw(
            instance, json.dumps(body).encode(), tail=tail, token=token, headers=headers
        )

    async def post_raw(
        self,
        instance: str,
        data: bytes | AsyncIterable[bytes],
        *,
        tail: str = "",
        token: str | None = ACME_TOKEN,
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """A missing Content-Type must reach the server missing, so ``content_type=None`` also
        stops aiohttp from adding its own application/octet-stream."""
        sent = {}
        if token is not None:
            sent["token"] = token
        if content_type is not None:
            sent["Content-Type"] = content_type
        return await self.request(
            "POST",
            PATH.format(instance) + tail,
            data=data,
            headers={**sent, **(headers or {})},
            skip_auto_headers=() if content_type is not None else ("Content-Type",),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | AsyncIterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        skip_auto_headers: tuple[str, ...] = (),
    ) -> Reply:
        async with self.client.request(
            method,
            self.base + path,
            data=data,
            headers=headers or {},
            skip_auto_headers=skip_auto_headers,
        ) as response:
            text = await response.text()
            assert response.content_type == "application/json", (response.status, text)
            return Reply(response.status, dict(response.headers), json.loads(text))


class Unchanged:
    """Records a session's state; ``check()`` asserts that nothing reached WhatsApp since."""

    def __init__(self, session: SimulatedSession) -> None:
        self.session = session
        self.settings = session.server_settings
        self.sent = list(session.sent)

    def check(self) -> None:
        assert self.session.server_settings == self.settings
        assert self.session.sent == self.sent


@asynccontextmanager
async def serving(harness: Harness) -> AsyncIterator[Rest]:
    """Serves REST on ``harness.gateway`` itself, so a test can mix REST and gRPC calls on the
    same instances and sessions."""
    http = HttpServer(harness.gateway)
    await http.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as client:
            yield Rest(harness, f"http://127.0.0.1:{http.port}", client)
    finally:
        await http.stop()
