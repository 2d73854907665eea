"""The load generator: a process of its own that drives a server over loopback.

``python -m benchmarks.client '<json spec>'`` prints one JSON line. The spec's ``mode``:

- ``capture``: one ``StreamUpdatePrivacySettings`` changing all seven fields of ``instance`` and
  one ``GetPrivacySettings``; reports the serialized messages (base64), so the bare server can
  answer with messages of the same count and sizes.
- ``stream`` / ``get``: ``concurrency`` callers, each in a closed loop (next call when the last
  ended) for ``warmup`` then ``duration`` seconds; caller ``i`` uses ``instances[i]`` and its
  updates alternate between two complete settings, so every update changes all seven fields.
  Reports calls per second and the latency of each call (from the call to its last message).
- ``burst``: waits until every one of ``instances`` is connected, reads each once (filling the
  session's settings cache), then ``rounds`` times updates all of them at once with all seven
  fields changing; reports each round's wall time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from grpc import aio

from benchmarks.common import ALTERNATING, cpu_seconds, percentile
from service.grpc.convert import settings_from_proto, settings_to_proto
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.settings import Settings

Metadata = tuple[tuple[str, str], ...]
#: A stream that changes all seven fields: the plan, STARTED and APPLIED per field, the snapshot.
STREAM_MESSAGES = 1 + 2 * 7 + 1


def _settings(index: int) -> Any:
    return settings_to_proto(Settings(ALTERNATING[index % 2]))


async def capture(
    stub: pb_grpc.PrivacyServiceAsyncStub, md: Metadata, instance: str
) -> dict[str, Any]:
    """The messages a seven-field update and a read produce, serialized."""
    request = pb.StreamUpdatePrivacySettingsRequest(instance=instance, settings=_settings(0))
    stream = [
        m.SerializeToString() async for m in stub.StreamUpdatePrivacySettings(request, metadata=md)
    ]
    if len(stream) != STREAM_MESSAGES:
        raise RuntimeError(f"expected {STREAM_MESSAGES} stream messages, got {len(stream)}")
    got = await stub.GetPrivacySettings(
        pb.GetPrivacySettingsRequest(instance=instance), metadata=md
    )
    return {
        "stream": [base64.b64encode(m).decode() for m in stream],
        "get": base64.b64encode(got.SerializeToString()).decode(),
        "stream_bytes": sum(len(m) for m in stream),
        "stream_sizes": [len(m) for m in stream],
        "get_bytes": got.ByteSize(),
    }


class Meter:
    """CPU time of the server (``server_pid``, on this machine) and of this client, over the
    measured part only; ``announce`` prints ``measuring`` on stderr when it starts (a profiler
    waits for it)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._pid: int | None = spec.get("server_pid")
        self._announce = bool(spec.get("announce"))
        self._server = 0.0
        self._client = 0.0

    def start(self) -> None:
        self._server = cpu_seconds(self._pid) if self._pid else 0.0
        self._client = time.process_time()
        if self._announce:
            print("measuring", file=sys.stderr, flush=True)

    def per_call(self, calls: int) -> dict[str, float]:
        """CPU milliseconds per call since ``start``, of the server and of this client."""
        report = {"client_cpu_ms_per_call": (time.process_time() - self._client) * 1000 / calls}
        if self._pid:
            server = cpu_seconds(self._pid) - self._server
            report["server_cpu_ms_per_call"] = server * 1000 / calls
        return report


async def closed_loop(
    call: Callable[[int, int], Awaitable[None]], spec: Mapping[str, Any]
) -> dict[str, Any]:
    """``concurrency`` callers calling ``call(caller, n)`` back to back; measured after warmup."""
    concurrency: int = spec["concurrency"]
    meter = Meter(spec)
    measure_from = time.perf_counter() + spec["warmup"]
    stop_at = measure_from + spec["duration"]
    latencies: list[float] = []
    last_end = measure_from

    async def caller(index: int) -> None:
        nonlocal last_end
        n = 0
        while (started := time.perf_counter()) < stop_at:
            await call(index, n)
            ended = time.perf_counter()
            n += 1
            if started >= measure_from:
                latencies.append(ended - started)
                last_end = max(last_end, ended)

    async def start_meter() -> None:
        await asyncio.sleep(measure_from - time.perf_counter())
        meter.start()

    await asyncio.gather(start_meter(), *(caller(i) for i in range(concurrency)))
    elapsed = last_end - measure_from
    return {
        "calls": len(latencies),
        "elapsed": elapsed,
        "rate": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        **meter.per_call(max(len(latencies), 1)),
    }


async def drive_stream(
    stub: pb_grpc.PrivacyServiceAsyncStub, md: Metadata, spec: Mapping[str, Any]
) -> dict[str, Any]:
    instances: list[str] = spec["instances"]
    requests = [
        [
            pb.StreamUpdatePrivacySettingsRequest(instance=name, settings=_settings(k))
            for k in range(2)
        ]
        for name in instances
    ]

    # Start each caller from the settings its instance does not hold (a previous run may have
    # left either), so that every update changes all seven fields.
    offsets = [await _first_change(stub, md, name) for name in instances]

    async def call(index: int, n: int) -> None:
        count = 0
        request = requests[index][(n + offsets[index]) % 2]
        async for message in stub.StreamUpdatePrivacySettings(request, metadata=md):
            if count == 0 and message.plan.stanzas != 7:
                raise RuntimeError(f"plan of {instances[index]}: {message.plan.stanzas} stanzas")
            count += 1
        if count != STREAM_MESSAGES:
            raise RuntimeError(f"{instances[index]}: {count} messages, not {STREAM_MESSAGES}")

    return await closed_loop(call, spec)


async def _first_change(stub: pb_grpc.PrivacyServiceAsyncStub, md: Metadata, instance: str) -> int:
    """Which of ``ALTERNATING`` to send first: the one ``instance`` does not hold now."""
    response = await stub.GetPrivacySettings(
        pb.GetPrivacySettingsRequest(instance=instance), metadata=md
    )
    return 1 if settings_from_proto(response.settings) == Settings(ALTERNATING[0]) else 0


async def drive_get(
    stub: pb_grpc.PrivacyServiceAsyncStub, md: Metadata, spec: Mapping[str, Any]
) -> dict[str, Any]:
    requests = [pb.GetPrivacySettingsRequest(instance=name) for name in spec["instances"]]

    async def call(index: int, n: int) -> None:
        await stub.GetPrivacySettings(requests[index], metadata=md)

    return await closed_loop(call, spec)


async def burst(channel: aio.Channel, md: Metadata, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every instance updated at once, ``rounds`` times; each round's wall time."""
    names: list[str] = spec["instances"]
    stub = pb_grpc.PrivacyServiceStub(channel)
    await _wait_connected(instance_grpc.InstanceServiceStub(channel), md, names, spec["timeout"])
    await asyncio.gather(
        *(
            stub.GetPrivacySettings(pb.GetPrivacySettingsRequest(instance=n), metadata=md)
            for n in names
        )
    )
    walls: list[float] = []
    latencies: list[float] = []

    async def update(name: str, settings: Any) -> None:
        started = time.perf_counter()
        request = pb.UpdatePrivacySettingsRequest(instance=name, settings=settings)
        response = await stub.UpdatePrivacySettings(request, metadata=md)
        latencies.append(time.perf_counter() - started)
        states = [f.state for f in response.fields]
        if states != [pb.FIELD_STATE_APPLIED] * 7:
            raise RuntimeError(f"{name}: {states}")

    meter = Meter(spec)
    meter.start()
    for round_ in range(spec["rounds"]):
        settings = _settings(round_)
        started = time.perf_counter()
        await asyncio.gather(*(update(name, settings) for name in names))
        walls.append(time.perf_counter() - started)
    return {
        "instances": len(names),
        "walls": walls,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        **meter.per_call(len(names) * spec["rounds"]),
    }


async def _wait_connected(
    stub: instance_grpc.InstanceServiceAsyncStub, md: Metadata, names: list[str], wait: float
) -> None:
    wanted = set(names)
    deadline = time.monotonic() + wait
    while True:
        response = await stub.ListInstances(instance_pb.ListInstancesRequest(), metadata=md)
        connected = {
            i.name for i in response.instances if i.state == instance_pb.INSTANCE_STATE_CONNECTED
        }
        if wanted <= connected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(wanted & connected)} of {len(wanted)} instances connected")
        await asyncio.sleep(0.05)


async def run(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Carries out ``spec`` against the server at ``spec["address"]``."""
    md: Metadata = (("token", spec["token"]),)
    async with aio.insecure_channel(spec["address"]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.PrivacyServiceStub(channel)
        mode = spec["mode"]
        if mode == "capture":
            return await capture(stub, md, spec["instance"])
        if mode == "stream":
            return await drive_stream(stub, md, spec)
        if mode == "get":
            return await drive_get(stub, md, spec)
        if mode == "burst":
            return await burst(channel, md, spec)
        raise ValueError(f"unknown mode {mode!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    report = asyncio.run(run(json.loads(args[0])))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
