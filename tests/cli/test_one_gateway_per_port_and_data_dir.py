"""One gateway per port and per data_dir: a second one refuses to start, the first goes on.

A second gateway used to start beside the first: grpc binds with ``SO_REUSEPORT`` unless told
otherwise, so the kernel split new gRPC connections between the two, and a shared data_dir meant
a shared journal and shared WhatsApp session stores (one linked device, two connections). Now
the second exits 2 within seconds with one line on stderr that names the conflict and what to
change, and the first still answers.

The gateways are real ``privacy-gateway serve`` processes (tests/helpers/processes.py), on
127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service import data_dir
from service.grpc.server import bind_server
from service.http.app import HttpServer
from service.listen import ListenError
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from tests.helpers.harness import Harness
from tests.helpers.processes import CLI, TIMEOUT, GatewayProcess, started_gateways, stripped_env

TOKEN = "one-gateway-token"
#: How soon the second gateway must have given up: it fails before it serves anything.
FAILS_WITHIN = 10.0
REST_LISTENING = r"^privacy-gateway: REST listening on http://127\.0\.0\.1:(\d+)$"


def serve_args(listen: str = "127.0.0.1:0", http_listen: str = "127.0.0.1:0") -> list[str]:
    """The demo gateway on these addresses (free ports unless given), with a known token."""
    return [
        "--listen", listen,
        "--http-listen", http_listen,
        "--demo-token", TOKEN,
        "--demo-latency-ms", "0",
    ]  # fmt: skip


def env_for(data: Path) -> dict[str, str]:
    env = stripped_env()
    env["PRIVACY_GATEWAY_DATA_DIR"] = str(data)
    return env


@dataclass
class First:
    """The gateway that was there first, and the REST port and data_dir it holds."""

    gateway: GatewayProcess
    rest_port: int
    data: Path

    def assert_still_serves(self) -> None:
        """Health says SERVING, REST answers, and a call reaches the demo instance."""
        with grpc.insecure_channel(self.gateway.address) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)  # its stubs leave the methods out
            response = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            pb_grpc.PrivacyServiceStub(channel).GetPrivacySettings(
                pb.GetPrivacySettingsRequest(instance="demo"),
                metadata=(("token", TOKEN),),
                timeout=TIMEOUT,
            )
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"http://127.0.0.1:{self.rest_port}/healthz"
        with no_proxy.open(url, timeout=TIMEOUT) as reply:
            assert reply.status == 200
        assert self.gateway.process.poll() is None, "the first gateway still runs"


@pytest.fixture
def first(tmp_path: Path) -> Iterator[First]:
    with started_gateways(tmp_path) as start:
        data = tmp_path / "first-data"
        gateway = start(*serve_args(), env=env_for(data))
        rest_port = int(gateway.read_until(REST_LISTENING).group(1))
        yield First(gateway, rest_port, data)


def second_gateway(args: list[str], data: Path) -> subprocess.CompletedProcess[str]:
    """Runs the second ``serve`` to its end, which must come within ``FAILS_WITHIN``."""
    began = time.monotonic()
    result = subprocess.run(
        [*CLI, "serve", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env_for(data),
        check=False,
    )
    assert time.monotonic() - began < FAILS_WITHIN, result.stderr
    return result


def assert_refused(result: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 2, nothing on stdout (it never said it listens), and exactly ``line`` on stderr."""
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"{line}\n")


# -- the second gateway, as a process ------------------------------------------------------------


def test_a_second_gateway_on_the_same_grpc_port_exits_2_naming_the_port(
    first: First, tmp_path: Path
) -> None:
    address = first.gateway.address

    result = second_gateway(serve_args(listen=address), tmp_path / "second-data")

    assert_refused(
        result,
        f"privacy-gateway: gRPC port {address} is already in use (another gateway?); "
        "choose another --listen",
    )
    first.assert_still_serves()


def test_a_second_gateway_on_the_same_rest_port_exits_2_naming_the_port(
    first: First, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{first.rest_port}"

    result = second_gateway(serve_args(http_listen=address), tmp_path / "second-data")

    assert_refused(
        result,
        f"privacy-gateway: REST port {address} is already in use (another gateway?); "
        "choose another --http-listen",
    )
    first.assert_still_serves()


def test_a_second_gateway_on_the_same_data_dir_exits_2_naming_it_and_the_holder(
    first: First,
) -> None:
    result = second_gateway(serve_args(), first.data)

    pid = first.gateway.process.pid
    assert_refused(
        result,
        f"privacy-gateway: data_dir {first.data.resolve()} is in use by another gateway "
        f"(pid {pid}); give each gateway its own data_dir",
    )
    assert (first.data / data_dir.LOCK_FILE).read_text() == f"{pid}\n"
    first.assert_still_serves()


def test_the_data_dir_is_free_again_once_its_gateway_has_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with started_gateways(tmp_path) as start:
        start(*serve_args(), env=env_for(data)).close()
        again = start(*serve_args(), env=env_for(data))

        assert (data / data_dir.LOCK_FILE).read_text() == f"{again.process.pid}\n"


# -- the same, in one process -------------------------------------------------------------------


def test_the_data_dir_lock_refuses_a_second_holder_until_the_first_lets_go(
    tmp_path: Path,
) -> None:
    data = tmp_path / "not-yet-there"

    with data_dir.locked(data) as lock_file:
        assert lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(data_dir.DataDirInUse) as info, data_dir.locked(data):
            pass
        assert f"(pid {os.getpid()})" in str(info.value)

    with data_dir.locked(data):
        pass


def test_a_data_dir_that_cannot_be_made_is_a_data_dir_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()
    under_a_file = tmp_path / "a-file" / "data"

    with pytest.raises(data_dir.DataDirError) as info, data_dir.locked(under_a_file):
        pass

    assert str(info.value) == (
        f"data_dir {under_a_file.resolve()} cannot be used: Not a directory; check data_dir"
    )


async def test_a_busy_grpc_port_is_a_listen_error_and_grpc_writes_nothing_itself(
    gateway: Harness, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ListenError) as info:
        bind_server(gateway.gateway, gateway.address)

    assert str(info.value).startswith(f"gRPC port {gateway.address} is already in use")
    assert capfd.readouterr().err == "", "grpc's own bind failure report is held back"


async def test_a_busy_rest_port_is_a_listen_error(gateway: Harness) -> None:
    held = HttpServer(gateway.gateway)
    await held.start("127.0.0.1:0")
    try:
        with pytest.raises(ListenError) as info:
            await HttpServer(gateway.gateway).start(f"127.0.0.1:{held.port}")
    finally:
        await held.stop()

    assert str(info.value).startswith(f"REST port 127.0.0.1:{held.port} is already in use")
