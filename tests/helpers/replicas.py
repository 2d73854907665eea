"""Gateway replicas as real ``privacy-gateway serve`` processes on one PostgreSQL database.

Each replica has its own data directory and ports (all on loopback) and the same accounts and
instances; ``ReplicaSet`` starts them, reaches them over real gRPC channels and HTTP, and reads
the lease table the way an operator would, with SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from grpc import aio

from service.auth import hash_token
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as privacy_grpc
from tests.helpers.processes import GatewayProcess, StartServe, stripped_env

TOKEN = "replicas-token"
#: The instances every replica of the tests is configured with.
INSTANCES = [f"shop-{n}" for n in range(6)]
#: Short leases, so that takeovers take seconds in the tests (the defaults are 10 s and 2 s).
TTL_SECONDS = 2.0
RENEW_SECONDS = 0.5
_REST = re.compile(r"REST listening on (http://127\.0\.0\.1:\d+)")
_REPLICA = re.compile(r"replica (\S+) at (\S+), serving (\d+) of (\d+) instance")


def replica_config(
    directory: Path,
    name: str,
    database_url: str,
    instances: Sequence[str],
    *,
    rate_limit_per_minute: int = 0,
    latency_ms: int = 0,
    simulator: str | None = None,
    grace: float = 5.0,
) -> Path:
    """``name``'s configuration: the shared database, short leases, ``instances`` of ``acme``."""
    data = directory / name
    data.mkdir(parents=True, exist_ok=True)
    lines = [
        'listen = "127.0.0.1:0"',
        'http_listen = "127.0.0.1:0"',
        f'data_dir = "{data}"',
        f'database_url = "{database_url}"',
        f'replica_id = "{name}"',
        f"lease_ttl_seconds = {TTL_SECONDS}",
        f"lease_renew_seconds = {RENEW_SECONDS}",
        f"rate_limit_per_minute = {rate_limit_per_minute}",
        "reconnect_initial_seconds = 0.2",
        "reconnect_max_seconds = 2.0",
        f"shutdown_grace_seconds = {grace}",
        'log_format = "text"',
        "",
        "[[accounts]]",
        'name = "acme"',
        f'token_sha256 = "{hash_token(TOKEN)}"',
    ]
    for instance in instances:
        lines += ["", "[[instances]]", f'name = "{instance}"', 'account = "acme"']
        if simulator is not None:
            lines.append(f'simulator = "{simulator}"')
        elif latency_ms:
            lines.append(f"latency_ms = {latency_ms}")
    path = data / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Replica:
    """One running replica: its process, its addresses, channels to it."""

    name: str
    process: GatewayProcess
    http: str
    channel: aio.Channel
    privacy: privacy_grpc.PrivacyServiceStub
    instances: instance_grpc.InstanceServiceStub
    started_serving: int

    @property
    def grpc_address(self) -> str:
        return self.process.address

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self.pid, signum)


METADATA = (("token", TOKEN),)


@dataclass
class ReplicaSet:
    """Replicas of one deployment, started by ``start``, all stopped at the end."""

    directory: Path
    database_url: str
    instances: list[str]
    start_serve: StartServe
    options: dict[str, object] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)

    async def start(self, name: str) -> Replica:
        config = replica_config(
            self.directory,
            name,
            self.database_url,
            self.instances,
            **self.options,  # type: ignore[arg-type]
        )
        process = await asyncio.to_thread(
            self.start_serve, "--config", str(config), env=stripped_env()
        )
        http = (await asyncio.to_thread(process.read_until, _REST)).group(1)
        joined = await asyncio.to_thread(process.read_until, _REPLICA)
        channel = aio.insecure_channel(process.address)
        replica = Replica(
            name,
            process,
            http,
            channel,
            privacy_grpc.PrivacyServiceStub(channel),
            instance_grpc.InstanceServiceStub(channel),
            int(joined.group(3)),
        )
        self.replicas[name] = replica
        return replica

    async def owners(self) -> dict[str, str]:
        """Instance -> replica, from the lease table (live leases only)."""
        connection = await asyncpg.connect(self.database_url)
        try:
            rows = await connection.fetch(
                "SELECT instance, owner FROM gateway_leases WHERE expires_at > now()"
            )
        finally:
            await connection.close()
        return {row["instance"]: row["owner"] for row in rows}

    async def wait_owners(
        self, check: Callable[[dict[str, str]], bool], within: float
    ) -> tuple[float, dict[str, str]]:
        """Seconds until the lease table passes ``check``, and the table then."""
        started = time.monotonic()
        while True:
            owners = await self.owners()
            if check(owners):
                return time.monotonic() - started, owners
            if time.monotonic() - started > within:
                raise AssertionError(f"lease table still {owners} after {within} s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for replica in self.replicas.values():
            with contextlib.suppress(ProcessLookupError):
                replica.signal(signal.SIGCONT)  # a stopped one must be able to exit
            await replica.channel.close()


@contextlib.asynccontextmanager
async def replica_set(
    directory: Path,
    database_url: str,
    instances: list[str],
    start_serve: StartServe,
    **options: object,
) -> AsyncIterator[ReplicaSet]:
    replicas = ReplicaSet(directory, database_url, instances, start_serve, dict(options))
    try:
        yield replicas
    finally:
        await replicas.close()


async def rpc_code(call: object) -> grpc.StatusCode:
    """The status code a call ends with (OK if it succeeds)."""
    try:
        await call  # type: ignore[misc]
    except aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK
