"""One connection per account, as WhatsApp allows one per device: a second gateway on an account
takes it and the first is told ``replaced`` and stays off; a connection that merely drops is
redialled, with a backoff that grows while the dials fail."""

from __future__ import annotations

import asyncio
import itertools
import time

from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.base import SessionState
from service.sessions.simulator.server import Ending, SimulatorServer
from service.settings import Field
from tests.helpers.simulator import (
    INSTANCES,
    RECONNECT_INITIAL,
    RECONNECT_MAX,
    OnSimulator,
    not_connected,
    rpc_error,
    simulator_session,
    wait_connected,
    wait_state,
    wait_until,
)


async def test_a_second_gateway_on_the_accounts_replaces_the_first_which_does_not_redial(
    on_simulator: OnSimulator, simulator: SimulatorServer
) -> None:
    first = await on_simulator("r1")
    second = await on_simulator("r2")

    for name in INSTANCES:
        await wait_state(simulator_session(first, name), SessionState.REPLACED)
        assert simulator.connected_client(name) == "r2"
        connections = [(c.client, c.ended) for c in simulator.connections_of(name)]
        assert connections == [("r1", Ending.REPLACED), ("r2", None)]
    replaced = simulator.connections_of("sales")[0]
    assert replaced.closed is not None
    assert replaced.closed <= simulator.connections_of("sales")[1].opened + 0.001

    # Well past the longest backoff, the first has not dialled again, nor sent anything.
    await asyncio.sleep(3 * RECONNECT_MAX)
    assert [c.client for c in simulator.connections_of("sales")] == ["r1", "r2"]
    assert not_connected(await rpc_error(first.get("sales")))
    assert "another client" in simulator_session(first).status().last_error
    before = len(simulator.stanzas_of("sales", "r1"))
    contacts = spb.Visibility(last_seen=spb.VISIBILITY_VALUE_CONTACTS)
    await second.update(spb.PrivacySettings(visibility=contacts))
    assert len(simulator.stanzas_of("sales", "r1")) == before
    assert [s.kind for s in simulator.stanzas_of("sales", "r2")] == ["fetch", "set"]
    assert simulator.settings("sales")[Field.LAST_SEEN] == "contacts"


async def test_a_dropped_connection_is_redialled_with_a_growing_backoff(
    on_simulator: OnSimulator, simulator: SimulatorServer
) -> None:
    gateway = await on_simulator("r1")
    session = simulator_session(gateway)
    simulator.refuse("sales")

    assert simulator.drop("sales")
    await wait_until(lambda: len(simulator.connections_of("sales")) >= 5, "four refused dials")

    connections = simulator.connections_of("sales")
    assert connections[0].ended is Ending.DROPPED
    assert {c.ended for c in connections[1:]} == {Ending.REFUSED}
    assert connections[0].closed is not None
    instants = [connections[0].closed, *(c.opened for c in connections[1:])]
    gaps = [later - earlier for earlier, later in itertools.pairwise(instants)]
    # initial, then doubling up to the maximum (lower bounds: a loaded machine is only slower).
    floors = [RECONNECT_INITIAL, 2 * RECONNECT_INITIAL, RECONNECT_MAX, RECONNECT_MAX]
    for gap, floor in zip(gaps, floors, strict=True):
        assert gap >= floor * 0.95, (gaps, floors)
    status = session.status()
    assert status.state in (SessionState.DISCONNECTED, SessionState.CONNECTING)
    assert not_connected(await rpc_error(gateway.get("sales")))

    simulator.refuse("sales", None)
    await wait_connected(gateway, ("sales",))
    assert simulator.connections_of("sales")[-1].ended is None
    assert simulator.connected_client("sales") == "r1"
    assert (await gateway.get("sales"))[Field.LAST_SEEN] == "all"
    # A new connection is a new client: its cache is empty, so it fetched again.
    await wait_until(
        lambda: [s.kind for s in simulator.stanzas_of("sales")] == ["fetch", "fetch"],
        "one fetch per connection",
    )


async def test_a_drop_without_refusals_reconnects_after_the_first_delay(
    on_simulator: OnSimulator, simulator: SimulatorServer
) -> None:
    gateway = await on_simulator("r1")
    session = simulator_session(gateway)
    dropped = time.monotonic()

    simulator.drop("other")
    await wait_until(lambda: len(simulator.connections_of("other")) == 2, "the redial")
    await wait_state(simulator_session(gateway, "other"), SessionState.CONNECTED)

    redial = simulator.connections_of("other")[1]
    assert redial.opened - dropped >= RECONNECT_INITIAL * 0.95
    assert redial.client == "r1"
    assert session.connected  # the other accounts' connections were not touched
    assert len(simulator.connections_of("sales")) == 1
