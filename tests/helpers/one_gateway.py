"""What ``tests/cli/test_one_gateway_per_port_and_data_dir.py`` shares with its ``first`` fixture
(``tests/cli/conftest.py``): the demo gateway's arguments, token and environment, and the
gateway that was there first."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from tests.helpers.processes import TIMEOUT, GatewayProcess, stripped_env

TOKEN = "one-gateway-token"
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
