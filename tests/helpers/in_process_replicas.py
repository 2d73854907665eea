"""Two gateways in one process, acting as replicas: the same configuration, and each told who
owns which instance by a fixed table (``TableOwnership``) the test controls.

The table stands in for the leases (``service.cluster.leases``, written elsewhere): ownership is
the gateway's own seam, not an outside system, so routing by a table is an honest ``Ownership``
and everything on either side of the seam (admission, both edges, the forwarders, the servers,
the channels and HTTP connections on loopback) is the real code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from service import errors
from service.assembly import build_gateway
from service.cluster.ownership import Peer
from service.config import from_mapping
from service.gateway import Gateway
from service.grpc.server import RunningServer, start_server
from service.http.server import HttpServer
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from tests.helpers.harness import Harness, gateway_config

#: Who owns what unless a test says otherwise: ``a`` serves acme's instances, ``b`` globex's.
OWNERS = {"sales": "a", "support": "a", "other": "b"}


@dataclass
class TableOwnership:
    """Routes by ``owners`` (instance -> replica id; an instance missing from it is unowned)."""

    me: str
    owners: dict[str, str]
    peers: dict[str, Peer] = field(default_factory=dict)

    @property
    def replica_id(self) -> str:
        return self.me

    def route(self, instance: str) -> Peer | None:
        owner = self.owners.get(instance)
        if owner is None:
            raise errors.INSTANCE_UNOWNED.error(instance=instance, retry_after=1.0)
        return None if owner == self.me else self.peers[owner]

    async def lookup(self, instance: str) -> Peer | None:
        return self.route(instance)  # the table is always current

    def token(self, instance: str) -> int | None:
        return 1 if self.holds(instance) else None

    def holds(self, instance: str) -> bool:
        return self.owners.get(instance) == self.me


@dataclass
class Replica:
    """One replica: its gateway, its servers, and stubs to call it directly."""

    replica_id: str
    harness: Harness
    http: HttpServer
    ownership: TableOwnership
    instances: instance_grpc.InstanceServiceStub
    stopped: bool = False

    @property
    def gateway(self) -> Gateway:
        return self.harness.gateway

    @property
    def server(self) -> RunningServer:
        return self.harness.server

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    def calls(self, method: str, code: str = "OK") -> float:
        """How many ``method`` calls this replica served (``calls_total``) ending ``code``."""
        value = self.gateway.metrics.registry.get_sample_value(
            "privacy_gateway_calls_total", {"method": method, "code": code}
        )
        return value or 0.0

    def all_calls(self) -> float:
        """Every call this replica recorded, whatever its method and status."""
        total = 0.0
        for metric in self.gateway.metrics.registry.collect():
            if metric.name == "privacy_gateway_calls":
                total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return total

    async def counted(self, calls: float) -> float:
        """Waits until this replica has counted ``calls`` calls (2 s at most): a call is counted
        once its handler has finished, a moment after its caller heard. The count then."""
        for _ in range(200):
            if self.all_calls() >= calls:
                break
            await asyncio.sleep(0.01)
        return self.all_calls()

    async def stop(self) -> None:
        """Stops serving at once, as a dying replica would: calls in flight are cut, its REST
        connections reset (aiohttp's own shutdown would let a running handler finish)."""
        if not self.stopped:
            self.stopped = True
            await self.server.stop(None)
            server = self.http._runner.server
            for connection in server.connections if server is not None else ():
                if connection.transport is not None:
                    connection.transport.abort()
            await self.http.stop()


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, owners: dict[str, str] | None = None, **overrides: Any
) -> AsyncIterator[dict[str, Replica]]:
    """Replicas ``a`` and ``b`` on loopback (gRPC and REST each), routing by ``owners``."""
    table = dict(OWNERS if owners is None else owners)
    started: dict[str, Replica] = {}
    try:
        for replica_id in ("a", "b"):
            config = gateway_config(**{"data_dir": str(tmp_path / replica_id), **overrides})
            gateway = build_gateway(from_mapping(config, env={}))
            ownership = TableOwnership(replica_id, table)
            gateway.ownership = ownership
            await gateway.start()
            server = await start_server(gateway, "127.0.0.1:0")
            http = HttpServer(gateway, shutdown_timeout=0.0)
            await http.start("127.0.0.1:0")
            channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
            harness = Harness(gateway, server, channel, pb_grpc.PrivacyServiceStub(channel))
            stub = instance_grpc.InstanceServiceStub(channel)
            started[replica_id] = Replica(replica_id, harness, http, ownership, stub)
        peers = {
            r.replica_id: Peer(r.replica_id, r.harness.address, f"127.0.0.1:{r.http.port}")
            for r in started.values()
        }
        for replica in started.values():
            replica.ownership.peers = peers
        yield started
    finally:
        for replica in started.values():
            await replica.harness.channel.close()
            await replica.stop()
            await replica.gateway.close()


async def ndjson(client: aiohttp.ClientSession, url: str, body: bytes, token: str) -> list[bytes]:
    """The lines of an NDJSON update stream, each as its raw bytes, and its status first."""
    headers = {"token": token, "Content-Type": "application/json", "Accept": "application/x-ndjson"}
    async with client.post(url, data=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "application/x-ndjson"
        return [line async for line in response.content]


def timeless(message: pb.StreamUpdatePrivacySettingsResponse) -> bytes:
    """``message`` with what differs between two runs of one update cleared (the operation's
    id, each stanza's round trip), serialized for comparison."""
    copy = pb.StreamUpdatePrivacySettingsResponse()
    copy.CopyFrom(message)
    if copy.HasField("plan"):
        copy.plan.ClearField("operation_id")
    if copy.HasField("field"):
        copy.field.ClearField("elapsed")
    return copy.SerializeToString(deterministic=True)


def timeless_line(line: bytes) -> dict[str, Any]:
    """An NDJSON line with the same cleared (``operationId``, ``elapsedMs``)."""
    payload: dict[str, Any] = json.loads(line)
    payload.pop("operationId", None)
    payload.pop("elapsedMs", None)
    for item in payload.get("fields", ()):
        item.pop("elapsedMs", None)
    return payload


def timeless_status(status: status_pb2.Status) -> bytes:
    """A failed update's rich status with the same cleared, in its ErrorInfo and its response."""
    copy = status_pb2.Status()
    copy.CopyFrom(status)
    for packed in copy.details:
        info = error_details_pb2.ErrorInfo()
        response = pb.UpdatePrivacySettingsResponse()
        if packed.Unpack(info):
            info.metadata.pop("operation_id", None)
            packed.Pack(info)
        elif packed.Unpack(response):
            response.ClearField("operation_id")
            for update in response.fields:
                update.ClearField("elapsed")
            packed.Pack(response)
    return copy.SerializeToString(deterministic=True)
