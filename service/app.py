"""Builds a running gateway's parts from its configuration, and the embedded demo."""

from __future__ import annotations

from dataclasses import dataclass

from service.auth import Principal, Scope, TokenRegistry, hash_token, new_token
from service.config import GatewayConfig, InstanceConfig, from_mapping
from service.grpc.server import Gateway
from service.instances import Instance, InstanceDirectory
from service.ratelimit import RateLimiter
from service.sessions.simulated import DEFAULT_SETTINGS, SimulatedSession
from service.settings import Field, Settings

DEMO_INSTANCE = "demo"
DEMO_LATENCY_MS = 400


def build_gateway(config: GatewayConfig) -> Gateway:
    principals = [Principal(Scope.ACCOUNT, a.name, a.name, a.token_sha256) for a in config.accounts]
    principals += [
        Principal(Scope.INSTANCE, i.name, i.account, i.token_sha256)
        for i in config.instances
        if i.token_sha256 is not None
    ]
    instances = InstanceDirectory(
        Instance(i.name, i.account, _session(i), kind=i.session) for i in config.instances
    )
    return Gateway(instances, TokenRegistry(principals), RateLimiter(config.rate_limit_per_minute))


def _session(config: InstanceConfig) -> SimulatedSession:
    initial = dict(DEFAULT_SETTINGS)
    for field in Field:
        value = getattr(config.settings, field.value)
        if value is not None:
            initial[field] = value
    return SimulatedSession(Settings(initial), latency=config.latency_ms / 1000)


@dataclass(frozen=True)
class Demo:
    config: GatewayConfig
    token: str


def demo(token: str | None = None, latency_ms: int = DEMO_LATENCY_MS) -> Demo:
    """One account and one instance, ``demo``, on a simulated session with a visible latency."""
    token = token or new_token()
    config = from_mapping(
        {
            "accounts": [{"name": DEMO_INSTANCE, "token_sha256": hash_token(token)}],
            "instances": [
                {"name": DEMO_INSTANCE, "account": DEMO_INSTANCE, "latency_ms": latency_ms}
            ],
        }
    )
    return Demo(config, token)
