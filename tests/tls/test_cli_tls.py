"""``privacy-gateway serve`` with TLS, and the client commands' ``--ca-file``, ``--cert-file`` and
``--key-file`` (or ``PRIVACY_GATEWAY_CA_FILE``, ``_CERT_FILE``, ``_KEY_FILE``), as real
processes.

Every ``serve`` process is stopped by the ``start_serve`` fixture's teardown, and every command
is killed by ``subprocess.run``'s timeout if it outlives it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers.certificates import Pki
from tests.helpers.processes import CLI, TIMEOUT, GatewayProcess, StartServe
from tests.helpers.tls_gateway import CLI_TOKEN, write_config

HTTPS_LISTENING = r"^privacy-gateway: REST listening on https://127\.0\.0\.1:(\d+)"


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )


def get_demo(
    gateway: GatewayProcess, env: dict[str, str], *tls: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(env, "get", "demo", "--address", gateway.address, "--token", CLI_TOKEN, *tls)


def settings_table(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.split(r"\s+", lines[0]) == ["section", "field", "value"]
    return lines[1:]


def test_serve_with_tls_says_so_and_get_works_with_the_ca_file(
    tmp_path: Path, pki: Pki, cli_env: dict[str, str], start_serve: StartServe
) -> None:
    gateway = start_serve("--config", str(write_config(tmp_path, pki, mutual=False)), env=cli_env)
    gateway.read_until(HTTPS_LISTENING)

    assert gateway.stdout[0].endswith(f"gRPC listening on {gateway.address} (TLS)")
    assert gateway.stdout[-1].endswith(" (TLS)")
    result = get_demo(gateway, cli_env, "--ca-file", str(pki.server_ca.cert_file))
    assert len(settings_table(result)) == 7
    assert result.stderr == ""


def test_without_the_ca_file_the_call_fails_saying_what_to_give(
    tmp_path: Path, pki: Pki, cli_env: dict[str, str], start_serve: StartServe
) -> None:
    gateway = start_serve("--config", str(write_config(tmp_path, pki, mutual=False)), env=cli_env)

    result = get_demo(gateway, cli_env)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: UNAVAILABLE: ")
    assert result.stderr.splitlines()[-1] == (
        f"privacy-gateway: cannot reach {gateway.address}; if it runs and serves TLS, give "
        "--ca-file (for mutual TLS, --cert-file too)"
    )


def test_trusting_another_ca_fails_the_handshake(
    tmp_path: Path, pki: Pki, cli_env: dict[str, str], start_serve: StartServe
) -> None:
    gateway = start_serve("--config", str(write_config(tmp_path, pki, mutual=False)), env=cli_env)

    result = get_demo(gateway, cli_env, "--ca-file", str(pki.other_ca.cert_file))

    assert result.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"privacy-gateway: cannot reach {gateway.address}; if it runs, the TLS handshake "
        "failed: check --ca-file, --cert-file, --key-file"
    )


def test_health_and_the_environment_over_tls(
    tmp_path: Path, pki: Pki, cli_env: dict[str, str], start_serve: StartServe
) -> None:
    gateway = start_serve("--config", str(write_config(tmp_path, pki, mutual=False)), env=cli_env)
    env = {
        **cli_env,
        "PRIVACY_GATEWAY_ADDRESS": gateway.address,
        "PRIVACY_GATEWAY_TOKEN": CLI_TOKEN,
        "PRIVACY_GATEWAY_CA_FILE": str(pki.server_ca.cert_file),
    }

    health = run_cli(env, "health")
    instances = run_cli(env, "instances")

    assert (health.returncode, health.stdout) == (0, "SERVING\n"), health.stderr
    assert instances.returncode == 0, instances.stderr
    assert instances.stdout.splitlines()[1].startswith("demo ")


def test_mutual_tls_needs_the_client_certificate(
    tmp_path: Path, pki: Pki, cli_env: dict[str, str], start_serve: StartServe
) -> None:
    gateway = start_serve("--config", str(write_config(tmp_path, pki, mutual=True)), env=cli_env)
    gateway.read_until(HTTPS_LISTENING)
    assert gateway.stdout[0].endswith(f"gRPC listening on {gateway.address} (mutual TLS)")
    assert gateway.stdout[-1].endswith(" (mutual TLS)")
    ca = ("--ca-file", str(pki.server_ca.cert_file))
    client = ("--cert-file", str(pki.client.cert_file), "--key-file", str(pki.client.key_file))
    rogue = ("--cert-file", str(pki.rogue.cert_file), "--key-file", str(pki.rogue.key_file))

    served = get_demo(gateway, cli_env, *ca, *client)
    without = get_demo(gateway, cli_env, *ca)
    refused = get_demo(gateway, cli_env, *ca, *rogue)
    health = run_cli(cli_env, "health", "--address", gateway.address, *ca, *client)

    assert len(settings_table(served)) == 7
    for result in (without, refused):
        assert result.returncode == 1
        assert result.stdout == ""
        assert "error: UNAVAILABLE: " in result.stderr
        assert "the TLS handshake failed" in result.stderr
    assert (health.returncode, health.stdout) == (0, "SERVING\n"), health.stderr


def test_client_certificate_and_key_go_together(pki: Pki, cli_env: dict[str, str]) -> None:
    # No gateway runs: the usage error comes before any call.
    cert_only = run_cli(
        cli_env, "get", "demo", "--token", "t", "--cert-file", str(pki.client.cert_file)
    )
    key_only = run_cli(cli_env, "health", "--key-file", str(pki.client.key_file))

    for result in (cert_only, key_only):
        assert result.returncode == 2
        assert result.stderr == (
            "privacy-gateway: --cert-file and --key-file go together "
            "(a certificate and its private key)\n"
        )


def test_a_wrong_tls_file_is_a_one_line_usage_error(
    tmp_path: Path, pki: Pki, cli_env: dict[str, str]
) -> None:
    missing = tmp_path / "nowhere.pem"
    wrong_key = ("--cert-file", str(pki.client.cert_file), "--key-file", str(pki.rogue.key_file))

    no_ca = run_cli(cli_env, "health", "--ca-file", str(missing))
    key_as_ca = run_cli(cli_env, "health", "--ca-file", str(pki.client.key_file))
    mismatch = run_cli(cli_env, "health", *wrong_key)

    assert (no_ca.returncode, no_ca.stderr) == (
        2,
        f"privacy-gateway: --ca-file: cannot read {missing}: No such file or directory\n",
    )
    assert (key_as_ca.returncode, key_as_ca.stderr) == (
        2,
        f"privacy-gateway: --ca-file: {pki.client.key_file} holds no readable PEM certificate\n",
    )
    assert (mismatch.returncode, mismatch.stderr) == (
        2,
        f"privacy-gateway: --key-file: {pki.rogue.key_file} is not the private key of the "
        f"certificate in {pki.client.cert_file}\n",
    )
