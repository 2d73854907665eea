"""Replicas as processes: a gateway process that is stalled (SIGSTOP) while another replica
takes its account finds, when it resumes, that it was replaced, and neither redials nor sends;
the simulator's history, shared by both, shows it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from service.auth import hash_token
from service.sessions.simulator.server import Ending, SimulatorServer
from tests.helpers.harness import ACME_TOKEN
from tests.helpers.processes import started_gateways, stripped_env
from tests.helpers.simulator import (
    RECONNECT_INITIAL,
    RECONNECT_MAX,
    OnSimulator,
    wait_until,
)


def replica_config(path: Path, simulator: str, replica: str) -> Path:
    path.write_text(
        f"""
listen = "127.0.0.1:0"
http_listen = ""
data_dir = "{path.parent / replica}"
replica_id = "{replica}"
reconnect_initial_seconds = {RECONNECT_INITIAL}
reconnect_max_seconds = {RECONNECT_MAX}

[[accounts]]
name = "acme"
token_sha256 = "{hash_token(ACME_TOKEN)}"

[[instances]]
name = "sales"
account = "acme"
simulator = "{simulator}"
"""
    )
    return path


async def test_a_stalled_replica_that_resumes_replaced_neither_redials_nor_sends(
    tmp_path: Path, simulator: SimulatorServer, on_simulator: OnSimulator
) -> None:
    config = replica_config(tmp_path / "r1.toml", simulator.address, "r1")
    with started_gateways(tmp_path) as start:
        stalled = start("--config", str(config), env=stripped_env())
        await wait_until(lambda: simulator.connected_client("sales") == "r1", "r1 connected")
        await wait_until(lambda: len(simulator.stanzas_of("sales", "r1")) == 1, "r1's fetch")

        stalled.process.send_signal(signal.SIGSTOP)
        try:
            await on_simulator("r2")
        finally:
            stalled.process.send_signal(signal.SIGCONT)
        # Resumed, it reads the ``replaced`` the simulator sent while it was stopped.
        await wait_until(lambda: "another client connected" in stalled.stderr(), "r1 replaced")
        await asyncio.sleep(3 * RECONNECT_MAX)

        assert stalled.process.poll() is None, stalled.stderr()
        connections = [(c.client, c.ended) for c in simulator.connections_of("sales")]
        assert connections == [("r1", Ending.REPLACED), ("r2", None)]
        assert [s.kind for s in simulator.stanzas_of("sales", "r1")] == ["fetch"]
        assert simulator.connected_client("sales") == "r2"
