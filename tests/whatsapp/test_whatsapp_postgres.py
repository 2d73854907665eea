"""WhatsApp sessions on the shared PostgreSQL database (``database_url``), on the real neonize
library and a real server, every dial through a loopback proxy.

What is shown: the DSN neonize gets (lib/pq's sslmode and connect_timeout), the device book as a
table, a recorded device the store no longer holds (never dialled: GetDevice's nil would abort
the process), whatsmeow's first upgrade taken in turns by replicas starting together, and the
connections failed dials leave (neonize opens a container per call and never closes it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from neonize.proto import Neonize_pb2 as npb

from service.sessions.base import SessionState
from service.sessions.whatsapp.devices import SharedDeviceBook
from service.sessions.whatsapp.ffi import NeonizeFFI
from service.sessions.whatsapp.postgres import WhatsmeowDatabase, neonize_dsn, store_jid
from tests.helpers.neonize_offline import (
    CLOSED_SOCKS,
    DEVICE_JID,
    AnsweringProxy,
    Attempts,
    StartGateway,
    wait_until,
    whatsapp_instance,
)
from tests.helpers.postgres import PostgresServer
from tests.helpers.whatsapp_postgres import (
    DEVICE,
    connections_to,
    insert_device,
    query,
    start_gateway_processes,
)

# -- the DSN --------------------------------------------------------------------------------


def test_a_dsn_from_database_url_prefers_ssl_and_bounds_the_connect() -> None:
    dsn = neonize_dsn("postgres://u:p@db:5432/gw", derived=True, application_name="pgw-wa-x-1")
    assert dsn == (
        "postgres://u:p@db:5432/gw?sslmode=prefer&connect_timeout=5&application_name=pgw-wa-x-1"
    )


def test_an_operators_sslmode_and_timeout_are_kept() -> None:
    url = "postgresql://u:p@db/gw?sslmode=verify-full&connect_timeout=2&application_name=me"
    assert neonize_dsn(url, derived=True, application_name="pgw-wa-x-2") == (
        "postgresql://u:p@db/gw?sslmode=verify-full&connect_timeout=2&application_name=pgw-wa-x-2"
    )


def test_an_instances_own_store_url_keeps_lib_pqs_sslmode() -> None:
    """An operator's own ``store`` URL without sslmode meant lib/pq's ``require`` before: kept."""
    assert (
        neonize_dsn("postgres://u:p@db/s", derived=False) == "postgres://u:p@db/s?connect_timeout=5"
    )


def test_the_store_key_is_whatsmeows_jid_string() -> None:
    """types/jid.go:216-228."""
    assert store_jid(DEVICE) == DEVICE_JID
    assert store_jid(npb.JID(User="1", Server="s.whatsapp.net", Device=0)) == "1@s.whatsapp.net"
    agent = npb.JID(User="1", Server="lid", Device=2, RawAgent=3)
    assert store_jid(agent) == "1.3:2@lid"


async def test_neonize_opens_the_derived_dsn_on_a_server_without_ssl(database_url: str) -> None:
    """lib/pq's default (require) fails there; ``prefer`` falls back to a plain connection."""
    ffi = NeonizeFFI()
    plain = await asyncio.to_thread(ffi.open_store, database_url)
    derived = await asyncio.to_thread(ffi.open_store, neonize_dsn(database_url, derived=True))

    assert plain.endswith("pq: SSL is not enabled on the server")
    assert derived == ""
    rows = await query(database_url, "SELECT version FROM whatsmeow_version")
    assert len(rows) == 1
    assert rows[0]["version"] >= 15


# -- the device book ------------------------------------------------------------------------


async def test_the_shared_book_is_seen_by_another_replicas_book(database_url: str) -> None:
    database = WhatsmeowDatabase(database_url, NeonizeFFI(), derived=True)
    other = WhatsmeowDatabase(database_url, NeonizeFFI(), derived=True)
    mine, theirs = SharedDeviceBook(database.pool), SharedDeviceBook(other.pool)
    try:
        await mine.open()
        await theirs.open()
        mine.record("wa", DEVICE)
        assert mine.jid("wa") == DEVICE  # at once, from memory
        await mine.flush()
        assert theirs.jid("wa") is None
        await theirs.refresh("wa")
        assert theirs.jid("wa") == DEVICE
        rows = await query(database_url, "SELECT device_jid FROM whatsapp_devices")
        assert [r["device_jid"] for r in rows] == [DEVICE_JID]

        theirs.record("wa", None)
        await theirs.flush()
        await mine.refresh("wa")
        assert mine.jid("wa") is None
    finally:
        await mine.close()
        await theirs.close()
        await database.close()
        await other.close()


async def test_a_recorded_device_the_store_no_longer_holds_is_not_dialled(
    start_offline_gateway: StartGateway, attempts: Attempts, database_url: str
) -> None:
    """GetDevice answers nil for a JID it does not hold (container.go:182-187) and neonize
    hands it to NewClient (main.go:642-653), which aborts the process: never dialled."""
    database = WhatsmeowDatabase(database_url, NeonizeFFI(), derived=True)
    book = SharedDeviceBook(database.pool)
    book.record("wa", DEVICE)
    await book.close()
    await database.close()

    harness = await start_offline_gateway(
        whatsapp_instance("wa", CLOSED_SOCKS), database_url=database_url
    )
    session = harness.gateway.instances.get("wa").session  # type: ignore[union-attr]
    await wait_until(
        lambda: session.status().state is SessionState.NOT_PAIRED, 20, "the session not paired"
    )

    status = session.status()
    assert "no longer holds this instance's device" in status.last_error
    assert DEVICE_JID.split(":")[0] in status.last_error
    assert attempts.connects == []
    rows = await query(database_url, "SELECT instance FROM whatsapp_devices")
    assert rows == [], "the stale JID was forgotten: the instance may be paired again"


# -- whatsmeow's first upgrade, four replicas at once ---------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("round_", range(3))
async def test_four_replicas_on_a_fresh_database_upgrade_it_once(
    postgres_server: PostgresServer, database_url: str, tmp_path: Path, round_: int
) -> None:
    """Without the lock four processes opening a fresh store together failed 18 of 24 times
    (23505 in pg_type, or 42701 on the version table's column: dbutil/upgrades.go:53-72)."""
    log_before = postgres_server.log.read_bytes()

    reports = start_gateway_processes(database_url, tmp_path, 4)

    assert [r["state"] for r in reports] == ["not_paired"] * 4, reports
    assert all("session store" not in r["error"] for r in reports), reports
    rows = await query(database_url, "SELECT version FROM whatsmeow_version")
    assert len(rows) == 1
    assert rows[0]["version"] >= 15
    new_log = postgres_server.log.read_bytes()[len(log_before) :].decode(errors="replace")
    assert "duplicate key" not in new_log, new_log[-2000:]
    assert "already exists" not in new_log, new_log[-2000:]


# -- connections left by failed dials -------------------------------------------------------


async def _paired_database(database_url: str) -> None:
    """whatsmeow's schema, one device in it, and the book naming it for ``wa``."""
    ffi = NeonizeFFI()
    assert await asyncio.to_thread(ffi.open_store, neonize_dsn(database_url, derived=True)) == ""
    await insert_device(database_url)
    database = WhatsmeowDatabase(database_url, ffi, derived=True)
    book = SharedDeviceBook(database.pool)
    book.record("wa", DEVICE)
    await book.close()
    await database.close()


@pytest.mark.parametrize("released", [True, False], ids=["released", "neonize-alone"])
async def test_failed_dials_leave_a_bounded_number_of_connections(
    start_offline_gateway: StartGateway,
    attempts: Attempts,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    released: bool,
) -> None:
    """Each ``Neonize`` call opens a container of its own and never closes it (main.go:58-64,
    623): without ``release`` every failed dial leaves its idle connections for good."""
    if not released:

        async def kept(self: WhatsmeowDatabase, name: str) -> int:
            return 0

        monkeypatch.setattr(WhatsmeowDatabase, "release", kept)
    await _paired_database(database_url)
    async with AnsweringProxy("socks5") as proxy:
        await start_offline_gateway(
            whatsapp_instance("wa", proxy.url),
            database_url=database_url,
            reconnect_initial_seconds=0.05,
            reconnect_max_seconds=0.1,
        )
        await wait_until(lambda: len(attempts.connects) >= 12, 60, "12 failed dials")
        await asyncio.sleep(0.5)  # the last releases
        held = await connections_to(database_url)

    dials = len(attempts.connects)
    print(f"released={released}: {dials} dials, {held} connections held")
    if released:
        assert held <= 4, f"{held} connections after {dials} dials"
    else:
        assert held >= dials - 1, f"neonize alone: {held} connections after {dials} dials"
