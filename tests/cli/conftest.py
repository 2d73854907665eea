"""The cli area's fixtures: ``privacy-gateway serve`` processes, each stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import DEMO_TOKEN, StartGateway, cli_env
from tests.helpers.one_gateway import REST_LISTENING, First, env_for, serve_args
from tests.helpers.processes import GatewayProcess, started_gateways


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Starts ``privacy-gateway serve ARGS`` and returns once it printed its address.

    Unless a test gives its own, the environment is ``cli_env()``'s: no test may depend on the
    default ports being free or write its journal into the checkout.
    """
    with started_gateways(tmp_path) as start:

        def start_with_cli_env(*args: str, env: dict[str, str] | None = None) -> GatewayProcess:
            return start(*args, env=cli_env() if env is None else env)

        yield start_with_cli_env


@pytest.fixture
def demo(start_gateway: StartGateway) -> GatewayProcess:
    """The demo gateway with a known token and no stanza latency."""
    return start_gateway(
        "--listen", "127.0.0.1:0", "--demo-token", DEMO_TOKEN, "--demo-latency-ms", "0"
    )


@pytest.fixture
def first(tmp_path: Path) -> Iterator[First]:
    with started_gateways(tmp_path) as start:
        data = tmp_path / "first-data"
        gateway = start(*serve_args(), env=env_for(data))
        rest_port = int(gateway.read_until(REST_LISTENING).group(1))
        yield First(gateway, rest_port, data)
