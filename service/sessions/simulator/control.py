"""Steering a simulator that runs in a process of its own, over its control channel.

A test that starts the simulator as ``python -m service.sessions.simulator`` cannot call the
server's methods; this client asks for the same things (one connection per request, as the
protocol's control requests are one request, one answer) and reads the same history records.
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.sessions.simulator.protocol import (
    MAX_LINE,
    ProtocolError,
    decode,
    encode,
    settings_from_wire,
)
from service.sessions.simulator.server import ConnectionRecord, StanzaRecord
from service.settings import Field, Settings

#: The longest one control request may take.
CONTROL_TIMEOUT = 10.0


class SimulatorControl:
    """The control channel of the simulator at ``address`` (``host:port``)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)

    async def history(self) -> tuple[list[ConnectionRecord], list[StanzaRecord]]:
        answer = await self._ask("history")
        return (
            [ConnectionRecord.from_wire(c) for c in answer["connections"]],
            [StanzaRecord.from_wire(s) for s in answer["stanzas"]],
        )

    async def settings(self, account: str) -> Settings:
        return settings_from_wire((await self._ask("settings", account=account))["settings"])

    async def connected_client(self, account: str) -> str | None:
        client = (await self._ask("connected_client", account=account))["client"]
        return None if client is None else str(client)

    async def change_on_phone(self, account: str, field: Field, value: str) -> None:
        await self._ask("change_on_phone", account=account, field=field.value, value=value)

    async def drop(self, account: str) -> bool:
        return bool((await self._ask("drop", account=account))["dropped"])

    async def fail_field(self, account: str, field: Field, reason: str) -> None:
        await self._ask("fail_field", account=account, field=field.value, reason=reason)

    async def clear_faults(self, account: str) -> None:
        await self._ask("clear_faults", account=account)

    async def refuse(self, account: str, reason: str | None = "connection refused") -> None:
        await self._ask("refuse", account=account, reason=reason)

    async def set_latency(self, seconds: float, account: str | None = None) -> None:
        await self._ask("set_latency", seconds=seconds, account=account)

    async def _ask(self, op: str, **arguments: Any) -> dict[str, Any]:
        async with asyncio.timeout(CONTROL_TIMEOUT):
            reader, writer = await asyncio.open_connection(self._host, self._port, limit=MAX_LINE)
            try:
                writer.write(encode({"type": "control", "op": op, **arguments}))
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                await writer.wait_closed()
        if not line:
            raise ProtocolError(f"the simulator closed the control connection ({op})")
        answer = decode(line)
        if answer["type"] != "ok":
            raise ProtocolError(f"the simulator refused {op}: {answer.get('reason')}")
        return answer
