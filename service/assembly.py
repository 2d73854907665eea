"""Builds a gateway from its configuration: tokens, instances and their sessions, the journal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from service.auth import Principal, Scope, TokenRegistry
from service.config import GatewayConfig, InstanceConfig
from service.gateway import Gateway
from service.instances import Instance, InstanceDirectory
from service.journal.sqlite import sqlite_journal
from service.limits import CallLimiter, TransportLimits
from service.observability import Metrics
from service.operations import Operations
from service.ratelimit import RateLimiter
from service.sessions.base import Session
from service.sessions.simulated import DEFAULT_SETTINGS, SimulatedSession
from service.sessions.whatsapp.threads import BlockingCalls
from service.settings import Field, Settings

if TYPE_CHECKING:
    from service.cluster.ownership import Ownership
    from service.journal.protocol import JournalStore
    from service.sessions.whatsapp.devices import DeviceBook
    from service.sessions.whatsapp.ffi import WhatsAppFFI
    from service.sessions.whatsapp.guard import GuardedFFI


def build_gateway(
    config: GatewayConfig, ffi: WhatsAppFFI | None = None, *, ownership: Ownership | None = None
) -> Gateway:
    """The gateway ``config`` describes; ``ffi`` replaces neonize's Go library (tests).

    With ``database_url`` the journal is PostgreSQL's, its writes fenced by ``ownership`` (the
    leases), which is then required; without, SQLite's in ``data_dir``.
    """
    principals = [Principal(Scope.ACCOUNT, a.name, a.name, a.token_sha256) for a in config.accounts]
    principals += [
        Principal(Scope.INSTANCE, i.name, i.account, i.token_sha256)
        for i in config.instances
        if i.token_sha256 is not None
    ]
    blocking = None
    if any(i.session == "whatsapp" for i in config.instances):
        blocking = BlockingCalls(config.stanza_threads)
    sessions = WhatsAppSessions(config, blocking, ffi)
    instances = InstanceDirectory(
        Instance(i.name, i.account, sessions.build(i)) for i in config.instances
    )
    limiter = RateLimiter(config.rate_limit_per_minute)
    retention = config.journal_retention_days * 86400
    metrics = Metrics(instances)
    operations = Operations(_journal(config, ownership, metrics), retention, metrics=metrics)
    return Gateway(
        instances,
        TokenRegistry(principals),
        limiter,
        operations,
        blocking,
        calls=CallLimiter(config.max_concurrent_calls),
        limits=TransportLimits.of(config),
        metrics=metrics,
    )


class WhatsAppSessions:
    """Makes each instance's session; loads neonize only when a WhatsApp instance needs it."""

    def __init__(
        self,
        config: GatewayConfig,
        blocking: BlockingCalls | None,
        ffi: WhatsAppFFI | None,
    ) -> None:
        self._config = config
        self._blocking = blocking
        self._ffi = ffi
        self._devices: DeviceBook | None = None
        self._guarded: GuardedFFI | None = None

    def build(self, instance: InstanceConfig) -> Session:
        if instance.session == "simulated":
            return _simulated(instance)
        from service.sessions.whatsapp.devices import DeviceBook  # noqa: PLC0415
        from service.sessions.whatsapp.ffi import NeonizeFFI  # noqa: PLC0415 - loads the Go library
        from service.sessions.whatsapp.guard import GuardedFFI  # noqa: PLC0415
        from service.sessions.whatsapp.probe import probe_path  # noqa: PLC0415
        from service.sessions.whatsapp.session import (  # noqa: PLC0415
            Backoff,
            WhatsAppOptions,
            WhatsAppSession,
        )

        assert self._blocking is not None
        # The real library's dials are tried first by the gateway itself (``probe``); a stand-in
        # plays WhatsApp's side of the dial on its own.
        probe = probe_path if self._ffi is None else None
        if self._ffi is None:
            self._ffi = NeonizeFFI()
        if self._guarded is None:
            self._guarded = GuardedFFI(self._ffi)
        data_dir = Path(self._config.data_dir)
        if self._devices is None:
            self._devices = DeviceBook(data_dir / "devices.json")
        store = instance.store
        if store is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            store = str(data_dir / f"{instance.name}.db")
        options = WhatsAppOptions(
            backoff=Backoff(
                self._config.reconnect_initial_seconds, self._config.reconnect_max_seconds
            ),
            stanza_timeout=self._config.stanza_timeout_seconds,
            log_level=self._config.whatsapp_log_level,
        )
        return WhatsAppSession(
            instance.name,
            self._guarded,
            store=store,
            proxy=instance.proxy,
            blocking=self._blocking,
            devices=self._devices,
            probe=probe,
            options=options,
        )


def _journal(
    config: GatewayConfig, ownership: Ownership | None, metrics: Metrics
) -> Callable[[], Awaitable[JournalStore]]:
    """The opener of the journal ``config`` names (imports asyncpg only for PostgreSQL)."""
    if config.database_url is None:
        timers = (metrics.commit_on_loop, metrics.commit_on_writer)
        path = Path(config.data_dir) / "journal.db"
        return sqlite_journal(path, fsync=config.journal_fsync, commit_timers=timers)
    if ownership is None:
        raise ValueError("database_url needs the leases' ownership to fence the journal")
    from service.journal.postgres import postgres_journal  # noqa: PLC0415 - loads asyncpg

    return postgres_journal(config.database_url, ownership)


def _simulated(config: InstanceConfig) -> SimulatedSession:
    initial = dict(DEFAULT_SETTINGS)
    for field in Field:
        value = getattr(config.settings, field.value)
        if value is not None:
            initial[field] = value
    return SimulatedSession(Settings(initial), latency=config.latency_ms / 1000)
