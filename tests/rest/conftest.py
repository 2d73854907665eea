"""The rest area's fixtures: a demo gateway in a subprocess for the OpenAPI checks, the
``Unchanged`` check on the ``gateway`` fixture's ``sales`` (``rest`` itself is in
``tests/conftest.py``), and ``slow_rest`` for callers who hang up mid-update."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from tests.helpers.harness import GatewayFactory, Harness
from tests.helpers.openapi import TOKEN
from tests.helpers.rest_client import SLOW_LATENCY_MS, Rest, Unchanged, serving

ROOT = Path(__file__).resolve().parents[2]
READY = "privacy-gateway: REST listening on "


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The REST base URL of a demo gateway in a subprocess (instance ``demo``, token TOKEN)."""
    logs = tmp_path_factory.mktemp("gateway")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVACY_GATEWAY_")}
    env["PRIVACY_GATEWAY_DATA_DIR"] = str(tmp_path_factory.mktemp("gateway-data"))
    with (logs / "stdout").open("w+") as stdout, (logs / "stderr").open("w+") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli.main",
                "serve",
                "--demo-token",
                TOKEN,
                "--demo-latency-ms",
                "0",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--rate-limit-per-minute",
                "0",
            ],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            yield _wait_ready(process, logs)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen[bytes], logs: Path) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in (logs / "stdout").read_text().splitlines():
            if line.startswith(READY):
                return line.removeprefix(READY).strip()
        if process.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(
        f"the gateway did not start (exit {process.poll()}):\n"
        f"{(logs / 'stdout').read_text()}\n{(logs / 'stderr').read_text()}"
    )


@pytest.fixture(scope="module")
def schema(base_url: str) -> Any:
    loaded = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    loaded.config.update(base_url=base_url)
    return loaded


@pytest.fixture
def unchanged(gateway: Harness) -> Unchanged:
    return Unchanged(gateway.session("sales"))


@pytest.fixture
async def slow_rest(make_gateway: GatewayFactory) -> AsyncIterator[Rest]:
    """REST on a gateway whose ``sales`` takes ``SLOW_LATENCY_MS`` per stanza."""
    harness: Harness = await make_gateway(
        instances=[{"name": "sales", "account": "acme", "latency_ms": SLOW_LATENCY_MS}]
    )
    async with serving(harness) as surface:
        yield surface
