"""Builds a gateway from its configuration: tokens, instances and their sessions, the journal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from service.auth import Principal, Scope, TokenRegistry
from service.cluster.replica import Cluster
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
from service.sessions.simulator.session import SimulatorSession
from service.sessions.whatsapp.threads import BlockingCalls
from service.settings import Field, Settings

if TYPE_CHECKING:
    import asyncpg

    from service.cluster.ownership import Ownership
    from service.journal.protocol import JournalStore
    from service.sessions.whatsapp.devices import Devices
    from service.sessions.whatsapp.ffi import WhatsAppFFI
    from service.sessions.whatsapp.guard import GuardedFFI
    from service.sessions.whatsapp.postgres import WhatsmeowDatabase


def build_gateway(
    config: GatewayConfig, ffi: WhatsAppFFI | None = None, *, ownership: Ownership | None = None
) -> Gateway:
    """The gateway ``config`` describes; ``ffi`` replaces neonize's Go library (tests).

    With ``database_url`` the gateway is a replica: its journal is PostgreSQL's, its writes
    fenced by its leases (``ownership`` replaces them with leases held elsewhere: the journal's
    tests move them by hand); without, one process with SQLite's journal in ``data_dir``.
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
    cluster = Cluster(config, ownership) if config.database_url is not None else None
    if cluster is not None:
        # One name for this replica everywhere (a random one is drawn when none is configured).
        config = config.model_copy(update={"replica_id": cluster.replica_id})
    sessions = WhatsAppSessions(config, blocking, ffi)
    instances = InstanceDirectory(
        Instance(i.name, i.account, sessions.build(i, serving), serving=serving)
        for i in config.instances
        for serving in (_serving(cluster, i.name),)
    )
    limiter = RateLimiter(config.rate_limit_per_minute)
    retention = config.journal_retention_days * 86400
    metrics = Metrics(instances)
    operations = Operations(_journal(config, cluster, metrics), retention, metrics=metrics)
    return Gateway(
        instances,
        TokenRegistry(principals),
        limiter,
        operations,
        blocking,
        calls=CallLimiter(config.max_concurrent_calls),
        limits=TransportLimits.of(config),
        metrics=metrics,
        ownership=cluster,
        cluster=cluster,
    )


def _serving(cluster: Cluster | None, name: str) -> Callable[[], bool]:
    """Always, for one process; for a replica, while it holds the instance's lease."""
    if cluster is None:
        return lambda: True
    return lambda: cluster.holds(name)


class WhatsAppSessions:
    """Makes each instance's session; loads neonize only when a WhatsApp instance needs it.

    With ``database_url`` an instance without a ``store`` keeps its whatsmeow session in that
    database (one device per instance, loaded by its JID) and the device book is a table there,
    so whichever replica holds the instance can dial it. ``pool`` is the gateway's pool on
    ``database_url``, if it opened one; without it the WhatsApp sessions open a small pool of
    their own on first use (and close it with the last session).
    """

    def __init__(
        self,
        config: GatewayConfig,
        blocking: BlockingCalls | None,
        ffi: WhatsAppFFI | None,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self._config = config
        self._blocking = blocking
        self._ffi = ffi
        self._pool = pool
        self._devices: Devices | None = None
        self._guarded: GuardedFFI | None = None
        #: One per PostgreSQL database a store names (the shared one under its own key "").
        self._databases: dict[str, WhatsmeowDatabase] = {}

    def _database(self, url: str, *, shared: bool) -> WhatsmeowDatabase:
        from service.sessions.whatsapp.postgres import WhatsmeowDatabase  # noqa: PLC0415

        key = "" if shared else url
        if key not in self._databases:
            assert self._guarded is not None
            pool = self._pool if shared else None
            self._databases[key] = WhatsmeowDatabase(url, self._guarded, derived=shared, pool=pool)
        return self._databases[key]

    def build(self, instance: InstanceConfig, serving: Callable[[], bool]) -> Session:
        """``instance``'s session; ``serving`` says whether this process may dial it now."""
        if instance.session == "simulated":
            return _simulated(instance, self._config, serving)
        from service.sessions.whatsapp.devices import (  # noqa: PLC0415
            DeviceBook,
            SharedDeviceBook,
            is_postgres,
        )
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
        shared_url = self._config.database_url
        if self._devices is None:
            if shared_url is not None:
                self._devices = SharedDeviceBook(self._database(shared_url, shared=True).pool)
            else:
                self._devices = DeviceBook(data_dir / "devices.json")
        store = instance.store
        database = None
        if store is None and shared_url is not None:
            database = self._database(shared_url, shared=True)
            store = shared_url  # each dial gets its own DSN from ``database``
        elif store is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            store = str(data_dir / f"{instance.name}.db")
        elif is_postgres(store):
            database = self._database(store, shared=store == shared_url)
        options = WhatsAppOptions(
            backoff=Backoff(
                self._config.reconnect_initial_seconds, self._config.reconnect_max_seconds
            ),
            stanza_timeout=self._config.stanza_timeout_seconds,
            log_level=self._config.whatsapp_log_level,
            replaced_redial=(self._config.lease_ttl_seconds if self._config.database_url else None),
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
            database=database,
            may_dial=serving,
        )


def _journal(
    config: GatewayConfig, cluster: Cluster | None, metrics: Metrics
) -> Callable[[], Awaitable[JournalStore]]:
    """The opener of the journal ``config`` names: SQLite's in ``data_dir``, or, for a replica,
    PostgreSQL's on the cluster's pool, its writes fenced by the cluster's leases."""
    if cluster is None:
        timers = (metrics.commit_on_loop, metrics.commit_on_writer)
        path = Path(config.data_dir) / "journal.db"
        return sqlite_journal(path, fsync=config.journal_fsync, commit_timers=timers)
    from service.journal.postgres import postgres_journal  # noqa: PLC0415 - loads asyncpg

    assert config.database_url is not None
    return postgres_journal(config.database_url, cluster, pool=cluster.open)


def _simulated(
    config: InstanceConfig, gateway: GatewayConfig, serving: Callable[[], bool]
) -> Session:
    initial = dict(DEFAULT_SETTINGS)
    for field in Field:
        value = getattr(config.settings, field.value)
        if value is not None:
            initial[field] = value
    if config.simulator is not None:
        # The account lives in the simulator the replicas share; ``initial`` only seeds it.
        return SimulatorSession(
            config.name,
            config.simulator,
            client=gateway.replica_id or "gateway",
            initial=initial,
            may_connect=serving,
            reconnect_initial=gateway.reconnect_initial_seconds,
            reconnect_max=gateway.reconnect_max_seconds,
            stanza_timeout=gateway.stanza_timeout_seconds,
        )
    return SimulatedSession(Settings(initial), latency=config.latency_ms / 1000)
