"""Replicas as real processes on one PostgreSQL: each instance served by exactly one of them,
and taken over within the lease's TTL and a few seconds when its owner is killed or stopped.

Leases here last ``TTL_SECONDS`` (2 s) and are renewed every 0.5 s (tests/helpers/replicas.py),
so every takeover figure printed is for that TTL; with the defaults (10 s, 2 s) add 8 s.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import settings_pb2 as spb
from tests.helpers.harness import visibility
from tests.helpers.processes import CLI, stripped_env
from tests.helpers.replicas import (
    INSTANCES,
    METADATA,
    RENEW_SECONDS,
    TTL_SECONDS,
    Replica,
    ReplicaSet,
    replica_config,
)

NONE = visibility(last_seen=spb.VISIBILITY_VALUE_NONE)


async def update(replica: Replica, instance: str) -> pb.UpdatePrivacySettingsResponse:
    request = pb.UpdatePrivacySettingsRequest(instance=instance, settings=NONE, force=True)
    return await replica.privacy.UpdatePrivacySettings(request, metadata=METADATA, timeout=5)


async def served_within(replica: Replica, instance: str, within: float) -> float:
    """Seconds until ``replica`` applies an update to ``instance``; fails after ``within``."""
    started = time.monotonic()
    while True:
        try:
            await update(replica, instance)
        except aio.AioRpcError as error:
            late = time.monotonic() - started > within
            if late or error.code() != grpc.StatusCode.UNAVAILABLE:
                raise AssertionError(f"{instance} not served by {replica.name}: {error}") from None
            await asyncio.sleep(0.05)
        else:
            return time.monotonic() - started


async def test_a_lone_replica_takes_every_lease(replicas: ReplicaSet) -> None:
    a = await replicas.start("a")

    assert a.started_serving == len(INSTANCES)
    owners = await replicas.owners()
    assert owners == dict.fromkeys(INSTANCES, "a")
    for instance in INSTANCES:
        await update(a, instance)


async def test_a_killed_owners_instances_are_served_by_another_replica_within_the_ttl(
    replicas: ReplicaSet,
) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    assert a.started_serving == len(INSTANCES)
    assert b.started_serving == 0  # a holds every lease; b has nothing to take yet

    a.signal(signal.SIGKILL)
    killed = time.monotonic()
    took, _ = await replicas.wait_owners(
        lambda o: o == dict.fromkeys(INSTANCES, "b"), TTL_SECONDS + 4 * RENEW_SECONDS + 3
    )
    served = await served_within(b, INSTANCES[0], 5)
    total = time.monotonic() - killed

    print(
        f"\nSIGKILL of the owner: leases moved after {took:.2f} s, first update served "
        f"{total:.2f} s after the kill (ttl {TTL_SECONDS} s, renew {RENEW_SECONDS} s)"
    )
    assert total < TTL_SECONDS + 3
    assert served >= 0


async def test_a_stopped_owner_is_taken_over_and_once_resumed_serves_nothing(
    replicas: ReplicaSet,
) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")

    a.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    await replicas.wait_owners(
        lambda o: o == dict.fromkeys(INSTANCES, "b"), TTL_SECONDS + 4 * RENEW_SECONDS + 3
    )
    await served_within(b, INSTANCES[0], 5)
    print(f"\nSIGSTOP of the owner: served by b {time.monotonic() - stopped:.2f} s after the stop")

    a.signal(signal.SIGCONT)
    # Resumed, a must refuse at once (its own clock says its leases lapsed), not pull the
    # instances back (it is unsettled again), and leave b's leases alone.
    for instance in INSTANCES:
        with pytest.raises(aio.AioRpcError) as refused:
            await update(a, instance)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.sleep(3 * RENEW_SECONDS)
    assert await replicas.owners() == dict.fromkeys(INSTANCES, "b")


async def test_sigterm_hands_the_leases_over_at_once(replicas: ReplicaSet) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")

    a.signal(signal.SIGTERM)
    stopping = time.monotonic()
    took, _ = await replicas.wait_owners(lambda o: o == dict.fromkeys(INSTANCES, "b"), 5)
    code = await asyncio.to_thread(a.process.process.wait, 20)

    print(f"\nSIGTERM of the owner: leases moved after {took:.2f} s")
    assert code == 0
    assert time.monotonic() - stopping < TTL_SECONDS + 1
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
