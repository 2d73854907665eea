"""5. Journal commit cost: how long an update waits for each write, PostgreSQL against SQLite.

An update waits for each journal write before its next stanza, so a write's commit time is added
to every stanza. This part times that wait directly on the stores, in this process, without a
gateway around them: one update after another, each a ``begin``, one outcome per field and a
``finish``, each awaited before the next (as ``Operations`` does), on

- SQLite as the gateway keeps it by default (WAL, ``synchronous=NORMAL``) and with
  ``journal_fsync`` (``FULL``);
- PostgreSQL on loopback as replicas share it (the server durable, ``fsync`` on), each write
  fenced by a lease (the ``FENCE`` subquery on ``gateway_leases``): as a replica runs it by
  default (``synchronous_commit`` off), and with ``journal_fsync`` (on).

Not in the default run (it starts a PostgreSQL server): ``python -m benchmarks --only journal``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.common import ALTERNATING, Row
from service.cluster.database import open_pool
from service.engine import FailurePolicy, FieldEvent, FieldState
from service.journal.postgres import postgres_journal
from service.journal.protocol import JournalStore
from service.journal.sqlite import sqlite_journal
from service.operations.record import OperationRecord, OperationState
from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import Settings
from tests.helpers.leases import TestLeases
from tools.postgres import PostgresServer

SECTION = "5 journal"
#: Five fields changed, as a five-field update journals them.
CHANGES = dict(list(ALTERNATING[0].items())[:5])


@dataclass(frozen=True)
class Size:
    updates: int = 400
    warmup: int = 20


def run(size: Size, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    return asyncio.run(_run(size, workdir))


async def _run(size: Size, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    raw: dict[str, Any] = {}
    for name, fsync in (("sqlite", False), ("sqlite fsync", True)):
        store = await sqlite_journal(workdir / f"{name.replace(' ', '-')}.db", fsync=fsync)()
        raw[name] = await _timed(store, size)
    server = PostgresServer(workdir / "postgres", durable=True).start()
    try:
        url = server.new_database("bench")
        leases = TestLeases(url)
        await leases.take("bench")
        # As a replica runs it by default (synchronous_commit off: survives the gateway being
        # killed, as SQLite's default does), and with journal_fsync (a flush per commit).
        pool = await open_pool(url, flushed=False)

        async def shared() -> asyncpg.Pool:
            return pool

        try:
            raw["postgres"] = await _timed(await postgres_journal(url, leases, pool=shared)(), size)
        finally:
            await pool.close()
        raw["postgres fsync"] = await _timed(await postgres_journal(url, leases)(), size)
    finally:
        server.destroy()
    base = raw["sqlite"]["p50_ms"]
    rows = [
        Row(
            SECTION,
            f"commit p50 / p99, {name}",
            f"{figures['p50_ms']:.3f} / {figures['p99_ms']:.3f} ms",
            f"sqlite {base:.3f} ms",
            f"{figures['p50_ms'] / base:.1f}x",
        )
        for name, figures in raw.items()
    ]
    return rows, raw


async def _timed(store: JournalStore, size: Size) -> dict[str, Any]:
    """Each write's wait, in milliseconds, over ``size.updates`` updates (after a warm-up)."""
    waits: list[float] = []
    try:
        for n in range(size.warmup + size.updates):
            counted = waits if n >= size.warmup else []
            await _update(store, f"op-{n}", counted)
    finally:
        await store.close()
    cuts = statistics.quantiles(waits, n=100)
    return {"writes": len(waits), "p50_ms": statistics.median(waits), "p99_ms": cuts[98]}


async def _update(store: JournalStore, operation_id: str, waits: list[float]) -> None:
    record = OperationRecord(
        id=operation_id,
        instance="bench",
        requested_by="account:bench#t",
        request_id=operation_id,
        body_hash="hash",
        requested=CHANGES,
        policy=FailurePolicy.CONTINUE,
        validate_only=False,
        force=False,
        state=OperationState.RUNNING,
        started_at=time.time(),
    )
    await _wait(lambda: store.begin(record), waits)
    for position, (field, value) in enumerate(CHANGES.items()):
        outcome = FieldEvent(field, FieldState.APPLIED, value, DEFAULT_SETTINGS[field], 0.01)
        await _wait(partial(store.record, "bench", operation_id, position, outcome), waits)
    settings = Settings({**DEFAULT_SETTINGS, **CHANGES})
    ending = partial(store.finish, "bench", operation_id, OperationState.COMPLETED, settings, None)
    await _wait(ending, waits)


async def _wait(write: Callable[[], Awaitable[None]], waits: list[float]) -> None:
    """Times the call too: SQLite commits a lone write on the loop, inside the call."""
    started = time.perf_counter()
    await write()
    waits.append((time.perf_counter() - started) * 1000)
