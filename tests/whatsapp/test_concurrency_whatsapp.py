"""The WhatsApp kind updates many instances at once: a stanza blocks a thread, not the gateway.

200 linked WhatsApp instances on the stand-in, whose every stanza blocks its calling thread for
50 ms the way neonize's Go call does. Run one after another, 200 one-field updates would take
200 x 50 ms = 10 s; the gateway runs them in about one round trip, because each instance's stanza
goes to the shared stanza threads (``stanza_threads``, up to 1,024 by default) and the event loop
is free meanwhile. With only 8 threads the same work queues up behind them, which shows it is
those threads, not the event loop alone, that carry the load.

Every instance's settings are read once before the clock starts, and the stanza threads a burst
needs are started, so the timed part is only the set stanzas (whatsmeow fetches the settings with
one stanza before an instance's first set).
Measured figures are printed; ``pytest -s`` shows them.
"""

from __future__ import annotations

import asyncio
import time

from service.config import from_mapping
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.whatsapp.session import WhatsAppSession
from service.sessions.whatsapp.standin import StandInFFI
from service.settings import Field, by_category
from tests.helpers.updates import EVERY_FIELD_CHANGED
from tests.helpers.whatsapp_harness import CONNECTED, JID, StartWhatsApp, WaGateway

INSTANCES = 200
LATENCY = 0.05
#: One-field updates done one after another would take this long.
SERIAL_ONE_FIELD = INSTANCES * LATENCY

NAMES = [f"wa-{index:03}" for index in range(INSTANCES)]
#: How long the 200 may take to connect: each registration takes neonize's map guard alone
#: (``guard``), so they connect one after another (about 4-5 s on the stand-in).
START_TIMEOUT = 30.0


async def many_linked(
    start_whatsapp: StartWhatsApp, latency: float = LATENCY, **overrides: object
) -> WaGateway:
    """200 linked WhatsApp instances, all CONNECTED, each with its settings read once."""
    # The stand-in's overlap window off, as in the benchmarks: its sleeps are not the gateway's
    # cost (the other WhatsApp tests keep it, and check the guard).
    ffi = StandInFFI(latency=latency, map_window=0.0)
    for name in NAMES:
        ffi.link_account(name, JID)
    running = await start_whatsapp(ffi, *NAMES, **overrides)
    for name in NAMES:
        instance = running.gateway.instances.get(name)
        assert instance is not None
        assert isinstance(instance.session, WhatsAppSession)

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        response = await running.instances.ListInstances(
            instance_pb.ListInstancesRequest(), metadata=running.metadata()
        )
        states = [i.state for i in response.instances]
        if len(states) == INSTANCES and set(states) == {CONNECTED}:
            break
        assert time.monotonic() < deadline, f"{states.count(CONNECTED)} of {INSTANCES} connected"
        await asyncio.sleep(0.02)

    await asyncio.gather(*(running.get(name) for name in NAMES))
    assert ffi.stanzas == INSTANCES, "one fetch per instance warms its settings cache"
    # The session fetches each instance's settings when it connects, spread over the start, so
    # the reads above need few stanza threads; the threads a burst needs are started (on the
    # event loop) by the first burst. Start them before the clock, as 200 reads at once did.
    blocking = running.gateway.blocking
    assert blocking is not None
    await asyncio.gather(*(blocking.run(time.sleep, LATENCY) for _ in NAMES))
    assert blocking.threads == min(INSTANCES, blocking.max_threads)
    return running


async def timed_updates(running: WaGateway, values: dict[Field, str]) -> tuple[float, int]:
    """Updates every instance at once with ``values``: (seconds taken, stanzas sent)."""
    before = running.ffi.stanzas
    requested = {field.value: value for field, value in values.items()}
    started = time.monotonic()
    responses = await asyncio.gather(*(running.update(name, **requested) for name in NAMES))
    elapsed = time.monotonic() - started
    for response in responses:
        assert [u.state for u in response.fields] == [pb.FIELD_STATE_APPLIED] * len(values)
    for name in NAMES:
        raw = running.ffi.device(name).raw_settings  # WhatsApp's strings per category
        held = {by_category(category).field: value for category, value in raw.items()}
        assert all(held[f] == v for f, v in values.items()), name
    return elapsed, running.ffi.stanzas - before


async def test_200_instances_update_one_field_each_concurrently(
    start_whatsapp: StartWhatsApp,
) -> None:
    running = await many_linked(start_whatsapp)

    elapsed, stanzas = await timed_updates(running, {Field.LAST_SEEN: "none"})

    print(
        f"\n{INSTANCES} WhatsApp instances, one field each, {LATENCY * 1000:.0f} ms per stanza, "
        f"{from_mapping({}).stanza_threads} stanza threads: {elapsed:.3f} s "
        f"(one after another: {SERIAL_ONE_FIELD:.1f} s)"
    )
    assert stanzas == INSTANCES
    assert elapsed < SERIAL_ONE_FIELD * 0.5, f"{elapsed:.2f} s"


async def test_200_instances_update_all_seven_fields_each_concurrently(
    start_whatsapp: StartWhatsApp,
) -> None:
    running = await many_linked(start_whatsapp)

    elapsed, stanzas = await timed_updates(running, EVERY_FIELD_CHANGED)

    serial = INSTANCES * len(Field) * LATENCY
    floor = len(Field) * LATENCY  # one instance's seven stanzas go one after another
    print(
        f"\n{INSTANCES} WhatsApp instances, all seven fields each: {elapsed:.3f} s "
        f"(one after another: {serial:.0f} s; one instance alone: {floor:.2f} s)"
    )
    assert stanzas == INSTANCES * len(Field)
    assert floor <= elapsed < SERIAL_ONE_FIELD * 0.5, f"{elapsed:.2f} s"


async def test_the_stanza_executor_is_what_carries_the_concurrency(
    start_whatsapp: StartWhatsApp,
) -> None:
    assert from_mapping({}).stanza_threads == 1024
    # A longer round trip than the other tests': the gateway's own cost per update is fixed, so
    # this keeps what is compared (queued rounds against one round) clear of the machine's noise.
    latency = 4 * LATENCY
    default = await many_linked(start_whatsapp, latency)
    default_elapsed, default_stanzas = await timed_updates(default, {Field.LAST_SEEN: "none"})
    few = await many_linked(start_whatsapp, latency, stanza_threads=8)
    few_elapsed, few_stanzas = await timed_updates(few, {Field.LAST_SEEN: "none"})

    queued = INSTANCES / 8 * latency  # 25 rounds of 8 stanzas
    print(
        f"\n{INSTANCES} one-field updates: {default_elapsed:.3f} s with the default threads, "
        f"{few_elapsed:.3f} s with 8 (8 threads cannot beat {queued:.2f} s); "
        f"ratio {few_elapsed / default_elapsed:.1f}x"
    )
    assert default_stanzas == few_stanzas == INSTANCES
    assert few_elapsed >= queued * 0.9
    assert few_elapsed > 3 * default_elapsed
