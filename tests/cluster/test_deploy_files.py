"""deploy/: the compose file's replicas are configured with keys the gateway knows, and the
configuration they share is one the gateway accepts (once its token hash is filled in)."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.auth import hash_token
from service.config import ENV_PREFIX, resolve

DEPLOY = Path(__file__).parents[2] / "deploy"


def test_the_shared_configuration_is_accepted_once_its_token_hash_is_filled_in(
    tmp_path: Path,
) -> None:
    text = (DEPLOY / "gateway.toml").read_text()
    config = tmp_path / "gateway.toml"
    config.write_text(text.replace("REPLACE-WITH-64-HEX-CHARS", hash_token("t")))
    env = {
        "PRIVACY_GATEWAY_DATABASE_URL": "postgres://gateway:pw@postgres:5432/gateway",
        "PRIVACY_GATEWAY_REPLICA_ID": "gw-1",
        "PRIVACY_GATEWAY_ADVERTISE_ADDRESS": "gw-1:50051",
        "PRIVACY_GATEWAY_ADVERTISE_HTTP_ADDRESS": "gw-1:8080",
    }

    resolved = resolve({}, env, config)

    assert resolved.database_url == env["PRIVACY_GATEWAY_DATABASE_URL"]
    assert resolved.replica_id == "gw-1"
    assert resolved.advertise_address == "gw-1:50051"
    assert [i.simulator for i in resolved.instances] == ["simulator:7000"] * 3


def test_each_replica_in_the_compose_file_has_its_own_name_and_addresses() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    replicas = {n: s for n, s in compose["services"].items() if n.startswith("gw-")}

    assert len(replicas) == 3
    for name, service in replicas.items():
        env = service["environment"]
        assert all(key.startswith(ENV_PREFIX) for key in env)
        assert env["PRIVACY_GATEWAY_REPLICA_ID"] == name
        assert env["PRIVACY_GATEWAY_ADVERTISE_ADDRESS"] == f"{name}:50051"
        assert env["PRIVACY_GATEWAY_ADVERTISE_HTTP_ADDRESS"] == f"{name}:8080"
    upstreams = (DEPLOY / "nginx.conf").read_text()
    for name in replicas:
        assert f"server {name}:50051;" in upstreams
        assert f"server {name}:8080;" in upstreams
