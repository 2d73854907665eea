"""What the simulator tests share: gateways whose instances live in a ``SimulatorServer``, waits
on the sessions and the simulator's history, and the simulator run as a process of its own.

Every wait polls with a deadline rather than blocking: what is awaited (a redial, a socket
closing) needs the event loop the test runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_status import rpc_status

from service.auth import hash_token
from service.sessions.base import SessionState
from service.sessions.simulator.__main__ import LISTENING_PREFIX
from service.sessions.simulator.session import SimulatorSession
from tests.helpers.harness import SALES_TOKEN, Harness
from tests.helpers.rich_status import error_info

#: Seconds any wait may take.
TIMEOUT = 10.0
#: The gateways' backoff between dials: short, so that a redial shows within a test.
RECONNECT_INITIAL = 0.1
RECONNECT_MAX = 0.4
INSTANCES = ("sales", "support", "other")
#: The ``gated`` session's backoff between dials (and between askings of its gate).
GATED_RECONNECT_INITIAL, GATED_RECONNECT_MAX = 0.05, 0.2
#: The ``on_simulator`` fixture: starts a gateway on the simulator (``replica``, ``connected``,
#: configuration overrides).
OnSimulator = Callable[..., Awaitable[Harness]]


class Gate:
    """What the lease code will pass: a yes or no a test flips."""

    def __init__(self, open_: bool) -> None:
        self.open = open_
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.open


def simulator_config(address: str, replica: str | None, **overrides: Any) -> dict[str, Any]:
    """``make_gateway`` overrides: the usual three instances, on the simulator at ``address``."""
    raw: dict[str, Any] = {
        "reconnect_initial_seconds": RECONNECT_INITIAL,
        "reconnect_max_seconds": RECONNECT_MAX,
        "instances": [
            {
                "name": "sales",
                "account": "acme",
                "token_sha256": hash_token(SALES_TOKEN),
                "simulator": address,
            },
            {"name": "support", "account": "acme", "simulator": address},
            {"name": "other", "account": "globex", "simulator": address},
        ],
    }
    if replica is not None:
        raw["replica_id"] = replica
    raw.update(overrides)
    return raw


def simulator_session(harness: Harness, name: str = "sales") -> SimulatorSession:
    instance = harness.gateway.instances.get(name)
    assert instance is not None
    session = instance.session
    assert isinstance(session, SimulatorSession)
    return session


async def wait_until(condition: Callable[[], bool], what: str, within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_state(
    session: SimulatorSession, state: SessionState, within: float = TIMEOUT
) -> None:
    await wait_until(
        lambda: session.status().state is state,
        f"{session.name} to be {state.value} (it is {session.status().state.value}: "
        f"{session.status().last_error})",
        within,
    )


async def wait_connected(harness: Harness, names: tuple[str, ...] = INSTANCES) -> None:
    """Every instance of ``harness`` connected to the simulator."""
    for name in names:
        await wait_state(simulator_session(harness, name), SessionState.CONNECTED)


async def rpc_error(call: Any) -> aio.AioRpcError:
    """The error a unary call must end with."""
    try:
        await call
    except aio.AioRpcError as error:
        return error
    pytest.fail("the call succeeded")


def reason_of(error: aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status: {error.code()} {error.details()}"
    return error_info(status).reason


def not_connected(error: aio.AioRpcError) -> bool:
    return error.code() is grpc.StatusCode.FAILED_PRECONDITION and (
        reason_of(error) == "INSTANCE_NOT_CONNECTED"
    )


@dataclass
class SimulatorProcess:
    """``python -m service.sessions.simulator`` and the address it printed."""

    process: subprocess.Popen[str]
    address: str


_LISTENING = re.compile(re.escape(LISTENING_PREFIX) + r"(127\.0\.0\.1:\d+)$")


@contextlib.contextmanager
def simulator_process(*arguments: str) -> Iterator[SimulatorProcess]:
    """The simulator as a process of its own on a loopback port; stopped (SIGTERM) at the end."""
    command = [sys.executable, "-m", "service.sessions.simulator", "--listen", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*command, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # bounded by the test's timeout
        match = _LISTENING.match(line)
        if match is None:
            process.kill()
            _, stderr = process.communicate(timeout=TIMEOUT)
            pytest.fail(f"the simulator printed {line!r}; stderr:\n{stderr}")
        yield SimulatorProcess(process, match.group(1))
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
