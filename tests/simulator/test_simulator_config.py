"""The ``simulator`` key of an instance: a simulated session only, its round trip the
simulator's own, and the instance built on a ``SimulatorSession`` labelled by the replica."""

from __future__ import annotations

from typing import Any

import pytest

from service.assembly import build_gateway
from service.config import ConfigError, from_mapping
from service.sessions.simulated import SimulatedSession
from service.sessions.simulator.session import SimulatorSession
from tests.helpers.harness import gateway_config


def config_with(instance: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return gateway_config(instances=[{"name": "sales", "account": "acme", **instance}], **overrides)


def test_a_whatsapp_instance_has_no_simulator() -> None:
    raw = config_with({"session": "whatsapp", "simulator": "127.0.0.1:7000"})
    with pytest.raises(
        ConfigError, match=r"instances\[0\]: simulator does not apply to a whatsapp"
    ):
        from_mapping(raw, env={})


def test_latency_ms_is_refused_beside_a_simulator() -> None:
    raw = config_with({"simulator": "127.0.0.1:7000", "latency_ms": 10})
    with pytest.raises(ConfigError, match="latency_ms does not apply with simulator"):
        from_mapping(raw, env={})


def test_a_simulator_address_must_be_host_and_port() -> None:
    with pytest.raises(ConfigError, match=r"instances\[0\]\.simulator"):
        from_mapping(config_with({"simulator": "localhost"}), env={})


@pytest.mark.parametrize(("replica", "label"), [("r7", "r7"), (None, "gateway")])
def test_the_instance_is_a_simulator_session_labelled_by_the_replica(
    tmp_path: Any, replica: str | None, label: str
) -> None:
    overrides: dict[str, Any] = {"data_dir": str(tmp_path)}
    if replica is not None:
        overrides["replica_id"] = replica
    raw = config_with(
        {"simulator": "127.0.0.1:7000", "settings": {"last_seen": "none"}}, **overrides
    )
    raw["instances"].append({"name": "support", "account": "acme"})
    gateway = build_gateway(from_mapping(raw, env={}))
    sales, support = (gateway.instances.get(n) for n in ("sales", "support"))
    assert sales is not None
    assert support is not None
    assert isinstance(sales.session, SimulatorSession)
    assert sales.session.address == "127.0.0.1:7000"
    assert sales.session.client == label
    assert isinstance(support.session, SimulatedSession)
