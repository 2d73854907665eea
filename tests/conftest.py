"""Shared fixtures: a real gateway on a loopback port, reached through real channels.

``gateway`` starts the gRPC server with three instances on simulated sessions:
- ``sales`` and ``support`` of account ``acme`` (``sales`` also has an instance token),
- ``other`` of account ``globex``,
and yields a ``Harness`` (``tests/helpers/harness.py``) with stubs, tokens and the simulated
sessions, so a test can act as a caller and then check what "WhatsApp" holds and how many stanzas
were sent. ``rest`` serves the REST surface on that same gateway (see
``tests/helpers/rest_client.py``).

Fixtures only live in the ``conftest.py`` files (this one for every area, each area package's
own for that area); the code they share with the tests is in ``tests/helpers``.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from grpc import aio

from service.assembly import build_gateway
from service.config import from_mapping
from service.grpc.server import start_server
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from tests.helpers.harness import GatewayFactory, Harness, gateway_config
from tests.helpers.postgres import PostgresServer, running_server
from tests.helpers.rest_client import Rest, serving


def _popen_waited(command: str, mode: str = "r", buffering: int = -1) -> io.StringIO:
    """``os.popen`` for reading, with the process waited for and its pipe closed."""
    done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    return io.StringIO(done.stdout)


def _import_neonize_quietly() -> None:
    """Imports neonize once, before any test module does.

    Importing anything of neonize (its protobuf modules included) runs its package __init__,
    which loads the Go library and, to name it, reads ``os.popen("uname -a")`` without closing
    it (neonize/utils/platform.py). The leaked pipe is reported as a ResourceWarning whenever it
    is collected, and with warnings as errors that fails whichever test runs then.
    """
    with mock.patch("os.popen", _popen_waited):
        import neonize  # noqa: F401


_import_neonize_quietly()


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Starts gateways with a given configuration; stops them all at the end of the test.

    Each keeps its data (the operation journal) in a directory of its own under ``tmp_path``.
    """
    started: list[Harness] = []

    async def make(**overrides: Any) -> Harness:
        overrides.setdefault("data_dir", str(tmp_path / f"gateway-{len(started)}"))
        gateway = build_gateway(from_mapping(gateway_config(**overrides), env={}))
        await gateway.start()
        server = await start_server(gateway, "127.0.0.1:0")
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        harness = Harness(gateway, server, channel, pb_grpc.PrivacyServiceStub(channel))
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.channel.close()
        await harness.server.stop(None)
        await harness.gateway.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Harness:
    harness: Harness = await make_gateway()
    return harness


@pytest.fixture
async def rest(gateway: Harness) -> AsyncIterator[Rest]:
    async with serving(gateway) as surface:
        yield surface


@pytest.fixture
async def start_whatsapp(tmp_path: Path) -> AsyncIterator[Any]:
    """Starts gateways with WhatsApp instances on the stand-in (``tests.helpers.whatsapp_harness``,
    imported here: the stand-in imports neonize, which the guard above must import first)."""
    from tests.helpers.whatsapp_harness import whatsapp_gateways

    async with whatsapp_gateways(tmp_path) as start:
        yield start


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server on loopback for the whole run (``tests/helpers/postgres.py``),
    started on first use and stopped at the end (in a directory of its own: ``running_server``
    says why not under pytest's)."""
    with running_server("gateway-postgres-session-") as server:
        yield server


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database of that server, for one test: its ``database_url``."""
    return postgres_server.new_database()
