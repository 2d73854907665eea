"""What ``tests/cli/test_cli.py`` shares with its fixtures (``tests/cli/conftest.py``): the demo's
token, the environment every command runs in, and what ``start_gateway`` returns."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from tests.helpers.processes import GatewayProcess, stripped_env

DEMO_TOKEN = "demo-test-token"


def cli_env(**variables: str) -> dict[str, str]:
    """The test's environment without any ``PRIVACY_GATEWAY_*``, plus ``variables``.

    The REST surface listens on a free port, so that no test depends on 8080 being free, and the
    gateway keeps its data (the journal) in a fresh directory, not in the checkout.
    """
    env = stripped_env()
    env["PRIVACY_GATEWAY_HTTP_LISTEN"] = "127.0.0.1:0"
    env["PRIVACY_GATEWAY_DATA_DIR"] = tempfile.mkdtemp(prefix="privacy-gateway-test-")
    env.update(variables)
    return env


StartGateway = Callable[..., GatewayProcess]
