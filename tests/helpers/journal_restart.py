"""What the journal's process tests (``tests/journal/test_journal_restart.py``,
``test_start_and_stop.py``) share with their ``gateway_processes`` fixture
(``tests/journal/conftest.py``): its type, and the configuration file they serve."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from service.auth import hash_token
from tests.helpers.processes import GatewayProcess


class StartGateway(Protocol):
    def __call__(self, config: Path) -> GatewayProcess: ...


def write_config(
    tmp_path: Path,
    data_dir: Path,
    *,
    token: str,
    latency_ms: int,
    listen: str = "127.0.0.1:0",
    http_listen: str = "127.0.0.1:0",
    grace: float = 5,
) -> Path:
    """``gateway.toml``: one account holding ``token``, and its instance ``sales``."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
listen = "{listen}"
http_listen = "{http_listen}"
data_dir = "{data_dir}"
rate_limit_per_minute = 0
shutdown_grace_seconds = {grace}

[[accounts]]
name = "acme"
token_sha256 = "{hash_token(token)}"

[[instances]]
name = "sales"
account = "acme"
latency_ms = {latency_ms}
"""
    )
    return path
