"""What ``tests/whatsapp/test_whatsapp_postgres.py`` shares: a whatsmeow device row in a real
PostgreSQL database, the connections a database holds, and gateways in child processes that
open a fresh database together (``child_gateway``, run by ``start_gateway_processes``).

Every WhatsApp dial goes through a loopback proxy (a closed port, or ``AnsweringProxy``): the
real neonize library never resolves or reaches WhatsApp.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from neonize.proto import Neonize_pb2 as npb

from service.sessions.whatsapp.postgres import APPLICATION_PREFIX
from tests.helpers.neonize_offline import CLOSED_SOCKS, DEVICE_JID, ROOT

#: The device ``insert_device`` makes, as neonize's JID (``DEVICE_JID`` in whatsmeow's form).
DEVICE = npb.JID(
    User=DEVICE_JID.split(":")[0], Server="s.whatsapp.net", RawAgent=0, Device=1, Integrator=0,
    IsEmpty=False,
)  # fmt: skip


async def insert_device(url: str, jid: str = DEVICE_JID) -> None:
    """A ``whatsmeow_device`` row whatsmeow loads as a paired device (random keys of the
    lengths container.go:140 checks), in a database whose schema whatsmeow made."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, "
            "signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, "
            "adv_account_sig, adv_account_sig_key, adv_device_sig) "
            "VALUES ($1, 1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $10)",
            jid, os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(64),
            os.urandom(32), b"details", os.urandom(64), os.urandom(32), os.urandom(64),
        )  # fmt: skip
    finally:
        await connection.close()


async def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


async def connections_to(url: str) -> int:
    """How many connections neonize's calls hold to ``url``'s database (named by the
    ``application_name`` each call's DSN carries; the gateway's own pools are not counted:
    they are bounded by their size)."""
    rows = await query(
        url,
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND application_name LIKE $1",
        APPLICATION_PREFIX + "%",
    )
    return int(rows[0]["n"])


def start_gateway_processes(url: str, root: Path, count: int) -> list[dict[str, Any]]:
    """Starts ``count`` gateways in child processes on ``url`` at once (each waits for a common
    moment after its imports); what each reported."""
    at = time.time() + 6.0
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from tests.helpers.whatsapp_postgres import child_gateway; "
                "child_gateway(*sys.argv[1:])",
                url,
                str(root / f"replica-{n}"),
                f"wa{n}",
                str(at),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=60)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert child.returncode == 0, f"a replica died: {err[-2000:]}"
        assert lines, f"a replica reported nothing: {err[-2000:]}"
        reports.append(lines[-1])
    return reports


def child_gateway(url: str, data_dir: str, instance: str, at: str) -> None:
    """Child process: a gateway with one WhatsApp instance on the shared database (no JID yet:
    it opens the store, whatsmeow's upgrade, and waits to be paired), started at ``at``."""
    from service.assembly import build_gateway
    from service.config import from_mapping
    from service.sessions.base import SessionState
    from tests.helpers.harness import gateway_config

    async def main() -> None:
        table = {"name": instance, "account": "acme", "session": "whatsapp", "proxy": CLOSED_SOCKS}
        # Four replicas, each configured with its own instance: an instance rendezvous hashing
        # gives to a replica that lacks it is taken by its own after a TTL (short, here).
        raw = gateway_config(
            data_dir=data_dir,
            database_url=url,
            instances=[table],
            lease_ttl_seconds=1.5,
            lease_renew_seconds=0.5,
        )
        gateway = build_gateway(from_mapping(raw, env={}))
        await asyncio.sleep(max(0.0, float(at) - time.time()))
        began = time.monotonic()
        await asyncio.wait_for(gateway.start(), 15)
        started = time.monotonic() - began
        session = next(iter(gateway.instances)).session
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            state = session.status().state
            if state in (SessionState.NOT_PAIRED, SessionState.DISCONNECTED):
                break
            await asyncio.sleep(0.02)
        status = session.status()
        settled = time.monotonic() - began
        await asyncio.wait_for(gateway.close(), 10)
        report = {
            "state": status.state.value,
            "error": status.last_error,
            "seconds": [round(started, 2), round(settled, 2), round(time.monotonic() - began, 2)],
        }
        print(json.dumps(report), flush=True)

    asyncio.run(main())
