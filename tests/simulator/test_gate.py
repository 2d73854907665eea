"""The replicas' gate (``may_connect``) and the lease's life cycle as a session sees them: a
replica that does not hold an instance's lease neither dials nor sends, even with its socket still
open (a stalled replica that resumes); ``close`` ends the connection at once and for good, and
``start`` after it (the lease regained) connects again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from service.sessions.base import SessionError, SessionState, StanzaFate
from service.sessions.simulator.server import Ending, SimulatorServer
from service.sessions.simulator.session import NO_LEASE_REASON, SimulatorSession
from service.settings import Field
from tests.helpers.simulator import GATED_RECONNECT_MAX, Gate, wait_state, wait_until


async def refused(stanza: Awaitable[object]) -> SessionError:
    with pytest.raises(SessionError) as raised:
        await stanza
    return raised.value


async def test_a_closed_gate_means_no_dial_and_no_stanza_until_it_opens(
    gated: tuple[SimulatorSession, Gate], simulator: SimulatorServer
) -> None:
    session, gate = gated
    await session.start()
    await wait_until(lambda: session.status().last_error == NO_LEASE_REASON, "the gate's answer")
    await wait_until(lambda: gate.asked >= 3, "the gate asked again")

    assert simulator.connections == []
    assert session.status().state is SessionState.DISCONNECTED
    for stanza in (session.read_settings(), session.set_setting(Field.LAST_SEEN, "none")):
        error = await refused(stanza)
        assert (error.fate, error.reason) == (StanzaFate.NOT_SENT, NO_LEASE_REASON)
    assert simulator.stanzas == []

    gate.open = True
    await session.start()  # the lease regained: dial now, not at the next poll
    await wait_state(session, SessionState.CONNECTED, within=1.0)
    assert [c.client for c in simulator.connections] == ["r1"]
    assert (await session.set_setting(Field.LAST_SEEN, "none"))[Field.LAST_SEEN] == "none"


async def test_a_gate_that_closes_while_connected_stops_every_stanza_and_every_redial(
    gated: tuple[SimulatorSession, Gate], simulator: SimulatorServer
) -> None:
    session, gate = gated
    gate.open = True
    await session.start()
    await wait_state(session, SessionState.CONNECTED)
    await wait_until(lambda: len(simulator.stanzas) == 1, "the first fetch")

    # The lease expired while this replica was stalled; its socket is still open.
    gate.open = False
    error = await refused(session.set_setting(Field.LAST_SEEN, "none"))
    assert (error.fate, error.reason) == (StanzaFate.NOT_SENT, NO_LEASE_REASON)
    assert await session.confirm(Field.LAST_SEEN) is None
    assert [s.kind for s in simulator.stanzas] == ["fetch"]
    assert simulator.settings("sales")[Field.LAST_SEEN] == "all"

    simulator.drop("sales")
    await wait_until(lambda: session.status().last_error == NO_LEASE_REASON, "the gate's answer")
    await asyncio.sleep(3 * GATED_RECONNECT_MAX)
    assert len(simulator.connections) == 1


async def test_close_disconnects_at_once_and_start_after_it_connects_again(
    gated: tuple[SimulatorSession, Gate], simulator: SimulatorServer
) -> None:
    session, gate = gated
    gate.open = True
    await session.start()
    await wait_state(session, SessionState.CONNECTED)

    await session.close()
    await wait_until(lambda: not simulator.connections[0].open, "the connection's end", 1.0)
    assert simulator.connections[0].ended is Ending.CLIENT_CLOSED
    assert session.status().state is SessionState.DISCONNECTED
    assert simulator.connected_client("sales") is None
    await asyncio.sleep(3 * GATED_RECONNECT_MAX)
    assert len(simulator.connections) == 1
    error = await refused(session.read_settings())
    assert error.connection_lost

    await session.start()
    await wait_state(session, SessionState.CONNECTED)
    assert [c.ended for c in simulator.connections] == [Ending.CLIENT_CLOSED, None]
    assert (await session.read_settings())[Field.LAST_SEEN] == "all"
