"""2. Stanza cost: stanzas sent per update, against the seed's fields sent + 1 read.

This part counts, it does not time, so it runs the gateway in this process: the real gRPC server
on a loopback port, called through a real channel, with simulated sessions whose own counter
(``SimulatedSession.stanzas``) says exactly how many stanzas each update sent. The count is
cross-checked against the stanzas the update's plan announced.

Each of the seed's four examples runs on a fresh instance (WhatsApp's default settings) whose
settings were read once before, since whatsmeow fetches them with one stanza on a session's first
use and caches them after; the same update on a cold session is reported too. Then, on the
instance of the first example: the identical update again, a one-field change, and a seven-field
request in which one field changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import aio

from benchmarks.common import ACCOUNT, TOKEN, Row
from service.assembly import build_gateway
from service.auth import hash_token
from service.config import from_mapping
from service.grpc.convert import settings_to_proto
from service.grpc.server import start_server
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.simulated import SimulatedSession
from service.settings import Field, Settings
from tests.helpers.seed import EXAMPLES, settings_from_body

SECTION = "2 stanzas"


@dataclass(frozen=True)
class Case:
    """One update and what it cost."""

    name: str
    sent: int
    changes: int
    stanzas: int
    planned: int
    cold: bool = False

    @property
    def seed(self) -> int:
        """What the seed spent: a stanza per field sent, plus one read."""
        return self.sent + 1

    @property
    def expected(self) -> int:
        """Exactly the fields that change (plus the one fetch of a session's first use)."""
        return self.changes + (1 if self.cold else 0)


class _Gateway:
    def __init__(
        self, stub: pb_grpc.PrivacyServiceAsyncStub, sessions: dict[str, SimulatedSession]
    ) -> None:
        self.stub = stub
        self.sessions = sessions
        self.metadata = (("token", TOKEN),)

    async def read(self, instance: str) -> None:
        await self.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance=instance), metadata=self.metadata
        )

    async def update(self, name: str, instance: str, requested: Settings, cold: bool) -> Case:
        session = self.sessions[instance]
        current = session.server_settings
        changes = sum(1 for field, value in requested.items() if current[field] != value)
        before = session.stanzas
        request = pb.UpdatePrivacySettingsRequest(
            instance=instance, settings=settings_to_proto(requested)
        )
        response = await self.stub.UpdatePrivacySettings(request, metadata=self.metadata)
        stanzas = session.stanzas - before
        return Case(name, len(requested), changes, stanzas, response.plan.stanzas, cold)


async def measure(data_dir: Path) -> list[Case]:
    """Every case, counted on a gateway served from this process."""
    names = [f"warm-{i}" for i in range(len(EXAMPLES))] + [
        f"cold-{i}" for i in range(len(EXAMPLES))
    ]
    config = from_mapping(
        {
            "rate_limit_per_minute": 0,
            "data_dir": str(data_dir),
            "accounts": [{"name": ACCOUNT, "token_sha256": hash_token(TOKEN)}],
            "instances": [{"name": n, "account": ACCOUNT} for n in names],
        },
        env={},
    )
    gateway = build_gateway(config)
    await gateway.start()
    server = await start_server(gateway, "127.0.0.1:0")
    sessions: dict[str, SimulatedSession] = {}
    for instance in gateway.instances:
        assert isinstance(instance.session, SimulatedSession)
        sessions[instance.name] = instance.session
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            return await _cases(_Gateway(pb_grpc.PrivacyServiceStub(channel), sessions))
    finally:
        await server.stop(None)
        await gateway.close()


async def _cases(gateway: _Gateway) -> list[Case]:
    cases: list[Case] = []
    for index, (name, body) in enumerate(EXAMPLES.items()):
        requested = settings_from_body(body)
        await gateway.read(f"warm-{index}")
        cases.append(await gateway.update(f"seed '{name}'", f"warm-{index}", requested, False))
        cases.append(await gateway.update(f"seed '{name}'", f"cold-{index}", requested, True))
    restrictive = settings_from_body(EXAMPLES["fully restrictive"])
    cases.append(await gateway.update("identical repeat", "warm-0", restrictive, False))
    one = Settings({Field.LAST_SEEN: "contacts"})
    cases.append(await gateway.update("one field sent, it changes", "warm-0", one, False))
    cases.append(await gateway.update("all seven sent, one changes", "warm-0", restrictive, False))
    return cases


def run(workdir: Path) -> tuple[list[Row], list[dict[str, Any]]]:
    """Counts every case; the table's rows and the raw counts."""
    cases = asyncio.run(measure(workdir / "stanzas-data"))
    rows: list[Row] = []
    for case in cases:
        if case.cold and case.name != "seed 'fully restrictive'":
            continue  # the table shows one cold case; the raw results hold all four
        label = f"{case.name} ({case.sent} sent, {case.changes} change)"
        if case.cold:
            label = f"{case.name} on a cold session (first use)"
        target = f"= {case.changes}" + (" + 1 fetch" if case.cold else "")
        ok = case.stanzas == case.planned + (1 if case.cold else 0) == case.expected
        rows.append(
            Row(
                SECTION,
                label,
                str(case.stanzas),
                f"{case.seed} (seed)",
                f"{case.stanzas / case.seed:.2f}",
                target,
                "yes" if ok else "NO",
            )
        )
    raw = [
        {
            "case": c.name,
            "cold": c.cold,
            "sent": c.sent,
            "changes": c.changes,
            "stanzas": c.stanzas,
            "planned": c.planned,
            "seed": c.seed,
            "expected": c.expected,
        }
        for c in cases
    ]
    return rows, raw
