"""File descriptors across failed dials, on the real neonize library, with no network at all.

Every ``Neonize`` call opens the session store again and never closes it (goneonize/main.go:58-64
``getDB``, called at 623; neonize has no ``Close`` anywhere). A gateway that let neonize retry an
unreachable WhatsApp would leak one descriptor per attempt, so the gateway tries the path itself
first (``service.sessions.whatsapp.probe``) and calls neonize only for a path that answers. Here:

- ``test_neonize_leaves_its_store_open_on_every_call``: the library's behaviour itself;
- ``test_a_gateway_that_keeps_failing_its_probe_stays_flat``: the gateway's promise, over at
  least 100 failed attempts against a closed port;
- ``test_a_gateway_whose_probe_passes_leaks_at_most_one_descriptor_per_attempt``: the residual
  leak, when the proxy answers the probe but neonize's own dial then fails: one store open per
  attempt, as often as the backoff lets attempts happen.

Each measurement is printed (run with ``-s`` to see them). Everything dials through 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path

from service.assembly import build_gateway
from service.config import from_mapping
from service.gateway import Gateway
from service.sessions.base import SessionState, SessionStatus
from service.sessions.whatsapp.ffi import NeonizeFFI
from tests.helpers.harness import gateway_config
from tests.helpers.neonize_offline import (
    CLOSED_HTTP,
    DIAL_ERROR,
    AnsweringProxy,
    Attempts,
    connect_in_thread,
    paired_store,
    store_with_device,
    whatsapp_instance,
)

#: How long any wait for the gateway may take before a test gives up.
TIMEOUT = 20.0


def descriptors() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def store_descriptors(store: Path) -> int:
    """Open file descriptors of this process on the SQLite store (and its -wal and -shm)."""
    names = {str(store), f"{store}-wal", f"{store}-shm"}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own descriptor, among others)
            continue
        count += target in names
    return count


def threads() -> int:
    """OS threads of this process (Go's included, which ``threading`` does not see)."""
    return len(os.listdir("/proc/self/task"))


# -- a. the library ----------------------------------------------------------------------------


def test_neonize_leaves_its_store_open_on_every_call(tmp_path: Path) -> None:
    """N direct ``Neonize`` calls on one store leave about N more descriptors on it.

    This documents goneonize/main.go:58-64 (``getDB`` opens a ``sqlstore`` container on every
    call and nothing closes it). If this test fails, neonize closes its store now: the gateway's
    probe (``service.sessions.whatsapp.probe``), which exists to keep failing dials away from
    neonize for this reason, is then no longer needed for it.
    """
    calls = 20
    store = tmp_path / "leak.db"
    ffi = NeonizeFFI()
    session_ids = [f"leak-{n}".encode() for n in range(calls)]
    before = store_descriptors(store)
    try:
        for session_id in session_ids:
            result = connect_in_thread(ffi, session_id, store, CLOSED_HTTP)
            assert result.startswith(DIAL_ERROR), result
        after = store_descriptors(store)
    finally:
        for session_id in session_ids:
            ffi.stop(session_id)
    print(f"\n[leak a] {calls} Neonize calls: descriptors on the store {before} -> {after}")
    assert after - before >= calls - 2, (
        f"{calls} Neonize calls left {after - before} more descriptors on the store: neonize "
        "seems to close its store now (the probe is no longer needed for this)"
    )
    # Stopping the clients does not give the stores back either.
    assert store_descriptors(store) == after


# -- b. and c. the gateway ---------------------------------------------------------------------


def leak_gateway(
    tmp_path: Path, name: str, proxy: str, store: Path, backoff: tuple[float, float]
) -> Gateway:
    """A gateway on the real library with one WhatsApp instance and the given backoff."""
    raw = gateway_config(
        data_dir=str(tmp_path / "data"),
        reconnect_initial_seconds=backoff[0],
        reconnect_max_seconds=backoff[1],
        instances=[whatsapp_instance(name, proxy, store)],
    )
    return build_gateway(from_mapping(raw, env={}))


def status_of(gateway: Gateway, name: str) -> SessionStatus:
    instance = gateway.instances.get(name)
    assert instance is not None
    return instance.session.status()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {TIMEOUT} s waiting for {what}"
        await asyncio.sleep(0.005)


async def test_a_gateway_that_keeps_failing_its_probe_stays_flat(
    tmp_path: Path, attempts: Attempts
) -> None:
    """At least 100 failed attempts against a closed port: no descriptor more than at the start.

    The store holds a device (so the supervisor dials), the proxy is a closed loopback port (so
    the probe fails), and the backoff is 10 ms: neonize is never called, and nothing is left
    open by the attempts.
    """
    warm_up, measured = 10, 100
    store = store_with_device(tmp_path / "stores" / "wa-flat.db")
    gateway = leak_gateway(tmp_path, "wa-flat", CLOSED_HTTP, store, (0.01, 0.01))
    await gateway.start()
    try:
        await until(lambda: attempts.count >= warm_up, f"{warm_up} attempts")
        start = (attempts.count, descriptors(), store_descriptors(store), threads())
        started = time.monotonic()
        await until(lambda: attempts.count >= start[0] + measured, f"{measured} more attempts")
        end = (attempts.count, descriptors(), store_descriptors(store), threads())
        elapsed = time.monotonic() - started
        status = status_of(gateway, "wa-flat")
    finally:
        await gateway.close()

    print(
        f"\n[leak b] {end[0] - start[0]} failed attempts in {elapsed:.2f} s (after {start[0]} "
        f"to warm up): descriptors {start[1]} -> {end[1]}, on the store {start[2]} -> {end[2]}, "
        f"threads {start[3]} -> {end[3]}; Neonize calls: {len(attempts.connects)}"
    )
    assert end[0] - start[0] >= measured
    refused = f"{DIAL_ERROR}: proxy 127.0.0.1:1: "
    assert all(result.startswith(refused) for _, result in attempts.probes)
    assert attempts.connects == [], "neonize was called although the probe failed"
    assert status.state is SessionState.DISCONNECTED
    assert status.last_error.startswith(DIAL_ERROR), status.last_error
    assert end[1] <= start[1] + 5, f"descriptors grew from {start[1]} to {end[1]}"
    assert end[2] <= start[2] + 5, f"descriptors on the store grew from {start[2]} to {end[2]}"


async def test_a_gateway_whose_probe_passes_leaks_at_most_one_descriptor_per_attempt(
    tmp_path: Path, attempts: Attempts
) -> None:
    """The residual leak: the proxy answers the probe's CONNECT (200), then hangs up on
    neonize's, so every attempt is a ``Neonize`` call that fails and leaves its store open.

    Measured, not held flat: at most one descriptor per attempt, and attempts no closer
    together than the backoff allows (10 ms doubling to 80 ms here; 1 s to 60 s by default,
    which bounds the leak to one descriptor a minute once the backoff is at its maximum).
    """
    warm_up, measured = 5, 30
    initial, maximum = 0.01, 0.08
    store = paired_store(tmp_path / "stores" / "wa-residual.db")
    attempts.connects.clear()  # the call that made the store's schema is not the gateway's
    async with AnsweringProxy("http") as proxy:
        gateway = leak_gateway(tmp_path, "wa-residual", proxy.url, store, (initial, maximum))
        await gateway.start()
        try:
            await until(lambda: len(attempts.connects) >= warm_up, f"{warm_up} Neonize calls")
            start = (len(attempts.connects), descriptors(), store_descriptors(store), threads())
            started = time.monotonic()
            await until(
                lambda: len(attempts.connects) >= start[0] + measured, f"{measured} more calls"
            )
            # The last call's store is open once it has failed; wait for that failure.
            await until(
                lambda: (
                    attempts.count > len(attempts.connects)
                    or status_of(gateway, "wa-residual").state is SessionState.DISCONNECTED
                ),
                "the last attempt to fail",
            )
            end = (len(attempts.connects), descriptors(), store_descriptors(store), threads())
            elapsed = time.monotonic() - started
            status = status_of(gateway, "wa-residual")
        finally:
            await gateway.close()

    calls = end[0] - start[0]
    grown, store_grown = end[1] - start[1], end[2] - start[2]
    print(
        f"\n[leak c] {calls} Neonize calls (failed dials) in {elapsed:.2f} s after {start[0]} to "
        f"warm up: descriptors {start[1]} -> {end[1]} (+{grown}), on the store {start[2]} -> "
        f"{end[2]} (+{store_grown}), threads {start[3]} -> {end[3]}; "
        f"{store_grown / calls:.2f} store descriptors per call; proxy saw {len(proxy.dials)} "
        f"CONNECTs for {attempts.count} probes"
    )
    assert status.last_error.startswith(DIAL_ERROR), status.last_error
    assert "proxy answered" not in status.last_error, "the probe failed, not neonize's dial"
    # Every probe passed, and each was followed by one Neonize call.
    assert all(result == "" for _, result in attempts.probes)
    assert len(attempts.connects) in (attempts.count, attempts.count - 1)
    # The leak: at most one descriptor per attempt, on the store and in all.
    assert store_grown <= calls + 1, f"{store_grown} store descriptors for {calls} calls"
    assert grown <= calls + 5, f"{grown} descriptors for {calls} calls"
    # Spaced by the backoff: the n-th wait is initial * 2**n, capped at the maximum.
    probes = [at for at, _ in attempts.probes]
    for n, (earlier, later) in enumerate(itertools.pairwise(probes)):
        delay = min(maximum, initial * 2**n)
        assert later - earlier >= delay * 0.95, (
            f"attempt {n + 2} came {later - earlier:.4f} s after attempt {n + 1}, "
            f"within the {delay} s backoff"
        )
