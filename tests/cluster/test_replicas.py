"""Replicas as real processes on one PostgreSQL: each instance connected by exactly one of them,
and taken over within the lease's TTL and a few seconds when its owner is killed or stopped.

The accounts live in one simulated WhatsApp (the ``whatsapp`` fixture), which records every
connection and stanza with the replica that made it. Leases here last ``TTL_SECONDS`` (2 s) and
are renewed every 0.5 s (tests/helpers/replicas.py), so every takeover figure printed is for that
TTL; with the defaults (10 s, 2 s) add about 8 s.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as ipb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from service.sessions.simulator.server import Ending, SimulatorServer
from service.settings import Field
from tests.helpers.harness import visibility
from tests.helpers.postgres import running_server
from tests.helpers.processes import CLI, started_gateways, stripped_env
from tests.helpers.replicas import (
    INSTANCES,
    METADATA,
    RENEW_SECONDS,
    TTL_SECONDS,
    Replica,
    ReplicaSet,
    replica_config,
    replica_set,
    rpc_code,
)

NONE = visibility(last_seen=spb.VISIBILITY_VALUE_NONE)
#: Seconds a takeover may take: the lease's TTL, a renewal, and a redial.
TAKEOVER = TTL_SECONDS + 2 * RENEW_SECONDS + 2.0


async def update(replica: Replica, instance: str) -> pb.UpdatePrivacySettingsResponse:
    request = pb.UpdatePrivacySettingsRequest(instance=instance, settings=NONE, force=True)
    return await replica.privacy.UpdatePrivacySettings(request, metadata=METADATA, timeout=5)


async def served_within(replica: Replica, instance: str, within: float) -> float:
    """Seconds until an update of ``instance`` called on ``replica`` succeeds (UNAVAILABLE and
    FAILED_PRECONDITION, "not connected yet", are retried); fails after ``within``."""
    started = time.monotonic()
    retried = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
    while True:
        try:
            await update(replica, instance)
        except aio.AioRpcError as error:
            late = time.monotonic() - started > within
            if late or error.code() not in retried:
                raise AssertionError(f"{instance} not served via {replica.name}: {error}") from None
            await asyncio.sleep(0.05)
        else:
            return time.monotonic() - started


async def connected_by(whatsapp: SimulatorServer, owners: dict[str, str], within: float) -> None:
    """Waits until each account is connected by the replica ``owners`` names."""
    deadline = time.monotonic() + within
    while True:
        now = {i: whatsapp.connected_client(i) for i in owners}
        if now == owners:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"connected: {now}, not {owners}")
        await asyncio.sleep(0.05)


def replaced(whatsapp: SimulatorServer) -> list[str]:
    """The connections another client pushed out: two replicas on one account."""
    return [
        f"{c.account} by {c.client}"
        for i in INSTANCES
        for c in whatsapp.connections_of(i)
        if c.ended is Ending.REPLACED
    ]


async def test_three_replicas_share_the_instances_each_connected_by_its_owner_alone(
    replicas: ReplicaSet, whatsapp: SimulatorServer
) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    c = await replicas.start("c")
    assert a.started_serving == len(INSTANCES)  # the first up takes all; b and c settle first

    # Once b and c have settled (3 TTLs), a hands each its rendezvous share between updates.
    _, owners = await replicas.wait_owners(
        lambda o: len(o) == len(INSTANCES) and set(o.values()) == {"a", "b", "c"},
        3 * TTL_SECONDS + 6 * RENEW_SECONDS + 5,
    )
    await connected_by(whatsapp, owners, TAKEOVER)

    assert replaced(whatsapp) == [], "two replicas were connected to one account at once"
    for instance in INSTANCES:
        # Whichever replica is called, the owner serves and says so.
        for replica in (a, b, c):
            got = await replica.instances.GetInstance(
                ipb.GetInstanceRequest(instance=instance), metadata=METADATA, timeout=5
            )
            assert got.instance.replica == owners[instance]
        await update(c, instance)
        assert whatsapp.settings(instance)[Field.LAST_SEEN] == "none"
        sent_by = {s.client for s in whatsapp.stanzas_of(instance) if s.kind == "set"}
        assert sent_by == {owners[instance]}


async def test_a_killed_owners_instances_are_served_by_another_replica_within_the_ttl(
    replicas: ReplicaSet, whatsapp: SimulatorServer
) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    assert a.started_serving == len(INSTANCES)
    assert b.started_serving == 0
    await connected_by(whatsapp, dict.fromkeys(INSTANCES, "a"), TAKEOVER)

    a.signal(signal.SIGKILL)
    killed = time.monotonic()
    moved, _ = await replicas.wait_owners(lambda o: o == dict.fromkeys(INSTANCES, "b"), TAKEOVER)
    await served_within(b, INSTANCES[0], TAKEOVER)
    served = time.monotonic() - killed
    await connected_by(whatsapp, dict.fromkeys(INSTANCES, "b"), TAKEOVER)

    print(
        f"\nSIGKILL of the owner: leases moved after {moved:.2f} s, an update served "
        f"{served:.2f} s after the kill (ttl {TTL_SECONDS} s, renew {RENEW_SECONDS} s)"
    )
    assert served < TAKEOVER
    assert replaced(whatsapp) == []
    # What an operator watches: b now serves every instance, having taken each lease once.
    async with aiohttp.ClientSession() as client, client.get(f"{b.http}/metrics") as scraped:
        metrics = await scraped.text()
    assert f"privacy_gateway_leases_held {float(len(INSTANCES))}" in metrics
    assert f'privacy_gateway_lease_events_total{{event="acquired"}} {float(len(INSTANCES))}' in (
        metrics
    )
    assert f'privacy_gateway_instances{{state="connected"}} {float(len(INSTANCES))}' in metrics


async def test_a_stopped_owner_is_taken_over_and_once_resumed_neither_redials_nor_sends(
    replicas: ReplicaSet, whatsapp: SimulatorServer
) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    await connected_by(whatsapp, dict.fromkeys(INSTANCES, "a"), TAKEOVER)

    a.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    await replicas.wait_owners(lambda o: o == dict.fromkeys(INSTANCES, "b"), TAKEOVER)
    await served_within(b, INSTANCES[0], TAKEOVER)
    served = time.monotonic() - stopped
    # a's sockets stayed open while it was stopped: b's connections pushed them out, as
    # WhatsApp does (StreamReplaced), so a stalled owner cannot keep an account.
    await connected_by(whatsapp, dict.fromkeys(INSTANCES, "b"), TAKEOVER)
    print(f"\nSIGSTOP of the owner: an update served by b {served:.2f} s after the stop")

    a.signal(signal.SIGCONT)
    resumed = time.monotonic()
    # Called on a, every instance is forwarded to b, its owner now: a serves nothing itself.
    for instance in INSTANCES:
        await update(a, instance)
    await asyncio.sleep(4 * RENEW_SECONDS)
    assert await replicas.owners() == dict.fromkeys(INSTANCES, "b")
    for instance in INSTANCES:
        late = [c for c in whatsapp.connections_of(instance) if c.opened > resumed]
        assert all(c.client == "b" for c in late), "the resumed owner dialled again"
        sent = whatsapp.stanzas_of(instance, client="a")
        assert all(s.at < resumed for s in sent), "the resumed owner sent a stanza"
    assert served < TAKEOVER


async def test_sigterm_hands_the_leases_over_at_once(
    replicas: ReplicaSet, whatsapp: SimulatorServer
) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    await connected_by(whatsapp, dict.fromkeys(INSTANCES, "a"), TAKEOVER)

    a.signal(signal.SIGTERM)
    moved, _ = await replicas.wait_owners(lambda o: o == dict.fromkeys(INSTANCES, "b"), 5)
    code = await asyncio.to_thread(a.process.process.wait, 20)
    await connected_by(whatsapp, dict.fromkeys(INSTANCES, "b"), TAKEOVER)

    print(f"\nSIGTERM of the owner: leases moved after {moved:.2f} s")
    assert code == 0
    assert moved < TTL_SECONDS
    assert replaced(whatsapp) == [], "a disconnected before b connected"
    await served_within(b, INSTANCES[0], 2)


def test_an_unreachable_database_stops_the_start_with_one_line(tmp_path: Path) -> None:
    config = replica_config(tmp_path, "a", "postgres://gw:s3cret@127.0.0.1:1/gw", INSTANCES)

    done = subprocess.run(
        [*CLI, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=stripped_env(),
        timeout=30,
        check=False,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "privacy-gateway: database_url: cannot connect "
        "(ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 1))"
    ]
    assert "s3cret" not in done.stderr


async def test_the_rate_limit_is_one_for_the_deployment_exact_under_a_burst(
    tmp_path: Path, database_url: str, whatsapp: SimulatorServer
) -> None:
    limit = 60
    with started_gateways(tmp_path) as start:
        async with replica_set(
            tmp_path,
            database_url,
            INSTANCES,
            start,
            simulator=whatsapp.address,
            rate_limit_per_minute=limit,
        ) as deployment:
            a, b, c = [await deployment.start(name) for name in ("a", "b", "c")]
            # Each replica serving some instances, so that the calls are counted on all three.
            await deployment.wait_owners(
                lambda o: len(o) == len(INSTANCES) and set(o.values()) == {"a", "b", "c"},
                3 * TTL_SECONDS + 6 * RENEW_SECONDS + 5,
            )
            # A ListInstances asks the other two replicas too: it is counted once, where called.
            listed = 10
            for _ in range(listed):
                answer = await a.instances.ListInstances(
                    ipb.ListInstancesRequest(), metadata=METADATA, timeout=5
                )
                assert {i.replica for i in answer.instances} == {"a", "b", "c"}
            calls = [
                (replica, instance)
                for instance in INSTANCES
                for replica in (a, b, c)
                for _ in range(10)
            ]  # 180 calls, 3x the limit, every instance on every replica
            codes = await asyncio.gather(
                *(
                    rpc_code(
                        replica.privacy.GetPrivacySettings(
                            pb.GetPrivacySettingsRequest(instance=instance),
                            metadata=METADATA,
                            timeout=10,
                        )
                    )
                    for replica, instance in calls
                )
            )

    counts = {code: codes.count(code) for code in set(codes)}
    print(f"\nburst of {len(calls)} calls over 3 replicas, limit {limit}/min: {counts}")
    assert counts == {
        grpc.StatusCode.OK: limit - listed,
        grpc.StatusCode.RESOURCE_EXHAUSTED: len(calls) - (limit - listed),
    }


async def health(replica: Replica) -> tuple[int, int]:
    """The replica's gRPC health status and its REST /healthz status code."""
    stub = health_pb2_grpc.HealthStub(replica.channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    async with aiohttp.ClientSession() as client, client.get(f"{replica.http}/healthz") as got:
        return answer.status, got.status


async def test_a_replica_cut_off_from_its_database_says_so_in_its_health_until_it_is_back(
    tmp_path: Path, whatsapp: SimulatorServer
) -> None:
    serving = (health_pb2.HealthCheckResponse.SERVING, 200)
    cut_off = (health_pb2.HealthCheckResponse.NOT_SERVING, 503)
    with running_server() as server, started_gateways(tmp_path) as start:
        async with replica_set(
            tmp_path, server.new_database(), INSTANCES, start, simulator=whatsapp.address
        ) as deployment:
            a = await deployment.start("a")
            assert await health(a) == serving

            server.pause()  # the database answers nothing; its connections stay open
            paused = time.monotonic()
            while await health(a) != cut_off:
                assert time.monotonic() - paused < TTL_SECONDS + 2, "still SERVING"
                await asyncio.sleep(0.1)
            print(f"\nNOT_SERVING {time.monotonic() - paused:.2f} s after the database stopped")

            server.resume()
            while await health(a) != serving:
                assert time.monotonic() - paused < 30, "not SERVING again"
                await asyncio.sleep(0.1)
            await served_within(a, INSTANCES[0], TAKEOVER)
