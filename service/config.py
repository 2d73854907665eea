"""The gateway's configuration: a TOML file, environment and command-line overrides, defaults.

A wrong file is reported with its path, the line and the key (``gateway.toml:12:
instances[1].latency_ms: ...``), because whoever edits it needs to find the spot, not a stack
trace. Precedence is command line, then environment (``PRIVACY_GATEWAY_*``), then file, then
defaults, and ``resolve`` is the one place that applies it. Each default is stated once, here:
the ``DEFAULT_*`` constants for those that other modules name (help texts, the client's address).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from service.sessions.defaults import (
    RECONNECT_INITIAL_SECONDS,
    RECONNECT_MAX_SECONDS,
    STANZA_TIMEOUT_SECONDS,
    WHATSAPP_LOG_LEVEL,
)
from service.settings import Field as SettingField
from service.tls import PemError, Role, ServerTls, load_server_tls

#: The gRPC address: where ``serve`` listens and where the client commands call.
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
DEFAULT_RATE_LIMIT_PER_MINUTE = 100
DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0
DEFAULT_DATA_DIR = "data"
#: Calls served at once, gRPC and REST together (an open stream counts); 0 turns the cap off.
DEFAULT_MAX_CONCURRENT_CALLS = 1000
#: gRPC calls that have arrived but that the gateway has not yet picked up (a burst). grpc's own
#: limit is 1,000 to 3,000, past which it drops calls that their callers see as CANCELLED.
DEFAULT_MAX_PENDING_CALLS = 20_000
#: The largest gRPC request message (grpc's own default, stated): a larger one is refused.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Keepalive enforcement (grpc's own defaults, stated): a client may ping no more often than
#: this without a call in flight; pings with no call open are refused unless permitted; and a
#: client that breaks the rule this many times is disconnected (GOAWAY ENHANCE_YOUR_CALM).
DEFAULT_KEEPALIVE_MIN_PING_INTERVAL_SECONDS = 300.0
DEFAULT_KEEPALIVE_PERMIT_WITHOUT_CALLS = False
DEFAULT_KEEPALIVE_MAX_PING_STRIKES = 2
#: ``auto``: JSON lines unless the log stream (stderr) is a terminal.
DEFAULT_LOG_FORMAT: Final = "auto"
#: Replicas (``database_url``): a lease lasts this long unless renewed, and is renewed this
#: often; a dead replica's instances move within about the TTL plus one renewal.
DEFAULT_LEASE_TTL_SECONDS = 10.0
DEFAULT_LEASE_RENEW_SECONDS = 2.0
ENV_PREFIX = "PRIVACY_GATEWAY_"

#: The schemes whatsmeow dials through (client.go:317-340: http, https, socks5; anything else is
#: "unsupported proxy scheme", found only after neonize has opened the store).
ProxyUrl = Annotated[str, StringConstraints(pattern=r"^(http|https|socks5)://[^\s/]+(/.*)?$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
FilePath = Annotated[str, StringConstraints(min_length=1)]
HostPort = Annotated[str, StringConstraints(pattern=r"^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}$")]


class _Strict(BaseModel):
    # hide_input_in_errors: a ValidationError's text quotes no value (a store's password), even
    # where it is chained below a ConfigError.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)


class AccountConfig(_Strict):
    name: Name
    #: SHA-256 (hex) of the account token: it may act on every instance of the account.
    token_sha256: Sha256Hex


class SimulatedSettings(_Strict):
    """Initial settings of a simulated account, in the REST contract's spelling."""

    last_seen: str | None = None
    status: str | None = None
    profile: str | None = None
    online: str | None = None
    read_receipts: str | None = None
    call_add: str | None = None
    group_add: str | None = None

    @field_validator("*")
    @classmethod
    def _value_known(cls, value: str | None, info: ValidationInfo) -> str | None:
        spec = SettingField(info.field_name).spec
        if value is not None and value not in spec.values:
            raise ValueError(f"{value!r} is not one of {', '.join(spec.values)}")
        return value


class InstanceConfig(_Strict):
    name: Name
    account: Name
    #: SHA-256 (hex) of an instance token, which may act on this instance only.
    token_sha256: Sha256Hex | None = None
    #: ``whatsapp`` for a linked WhatsApp account, ``simulated`` for a stand-in (demos, tests).
    session: Literal["simulated", "whatsapp"] = "simulated"
    #: WhatsApp only: route the connection through this proxy (http://, https:// or socks5://).
    proxy: ProxyUrl | None = None
    #: WhatsApp only: the session store, a SQLite file path or a postgres:// URL
    #: (default: ``<data_dir>/<name>.db``).
    store: Annotated[str, StringConstraints(min_length=1)] | None = None
    #: Simulated only: round trip of each stanza.
    latency_ms: Annotated[int, Field(ge=0, le=60_000)] = 0
    #: Simulated only: initial settings (unset fields take WhatsApp's defaults).
    settings: SimulatedSettings = SimulatedSettings()
    #: Simulated only: the simulated WhatsApp (``python -m service.sessions.simulator``) that
    #: holds this account, so that replicas share it; unset: the account lives in this process.
    #: ``settings`` are then the account's initial ones if the simulator does not know it yet,
    #: and the round trip is the simulator's (``--latency-ms``), not ``latency_ms``.
    simulator: HostPort | None = None

    @field_validator("store")
    @classmethod
    def _store_kind_known(cls, value: str | None) -> str | None:
        # The message never quotes the value: a connection string carries its password.
        if value is not None:
            problem = store_problem(value)
            if problem is not None:
                raise ValueError(
                    f"must be a SQLite file path or a postgres:// URL ({problem} is not accepted)"
                )
        return value

    @model_validator(mode="after")
    def _keys_fit_the_kind(self) -> InstanceConfig:
        only = {
            "simulated": ("proxy", "store"),
            "whatsapp": ("latency_ms", "settings", "simulator"),
        }
        for key in only[self.session]:
            if key in self.model_fields_set:
                raise ValueError(f"{key} does not apply to a {self.session} session")
        if self.simulator is not None and "latency_ms" in self.model_fields_set:
            raise ValueError(
                "latency_ms does not apply with simulator: the simulator's own --latency-ms "
                "sets the round trip"
            )
        return self


class GatewayConfig(_Strict):
    listen: HostPort = DEFAULT_LISTEN
    #: The REST surface; an empty string turns it off.
    http_listen: HostPort | Literal[""] = DEFAULT_HTTP_LISTEN
    #: Calls a minute per token; 0 turns the limit off.
    rate_limit_per_minute: Annotated[int, Field(ge=0)] = DEFAULT_RATE_LIMIT_PER_MINUTE
    #: Calls served at once, both edges together; one more is refused with TOO_MANY_CALLS
    #: (RESOURCE_EXHAUSTED + RetryInfo; REST 429 + Retry-After). 0 turns the cap off.
    max_concurrent_calls: Annotated[int, Field(ge=0)] = DEFAULT_MAX_CONCURRENT_CALLS
    #: gRPC calls waiting for the gateway to pick them up; keep it above the largest burst.
    max_pending_calls: Annotated[int, Field(ge=1)] = DEFAULT_MAX_PENDING_CALLS
    #: The largest gRPC request message, in bytes.
    max_message_bytes: Annotated[int, Field(ge=1024, le=2**31 - 1)] = DEFAULT_MAX_MESSAGE_BYTES
    #: gRPC keepalive enforcement: see the README.
    keepalive_min_ping_interval_seconds: Annotated[float, Field(gt=0)] = (
        DEFAULT_KEEPALIVE_MIN_PING_INTERVAL_SECONDS
    )
    keepalive_permit_without_calls: bool = DEFAULT_KEEPALIVE_PERMIT_WITHOUT_CALLS
    #: 0: a client that pings too often is never disconnected for it.
    keepalive_max_ping_strikes: Annotated[int, Field(ge=0)] = DEFAULT_KEEPALIVE_MAX_PING_STRIKES
    #: How long in-flight calls may run on after SIGTERM or SIGINT.
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = DEFAULT_SHUTDOWN_GRACE_SECONDS
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``json`` (one object per line), ``text``, or ``auto``: JSON unless stderr is a terminal.
    log_format: Literal["auto", "json", "text"] = DEFAULT_LOG_FORMAT
    #: Where ``/metrics`` (Prometheus, no token) is served on a port of its own; empty: on the
    #: REST port (``http_listen``), and nowhere when REST is off.
    metrics_listen: HostPort | Literal[""] = ""
    #: Where WhatsApp session stores (SQLite) are kept by default.
    data_dir: Annotated[str, StringConstraints(min_length=1)] = DEFAULT_DATA_DIR
    #: Threads for blocking WhatsApp calls: each stanza holds one for its round trip, so this is
    #: how many stanzas (across all instances) can be in flight at once. They are started only
    #: as calls need them, and an update has one stanza in flight per instance, so a gateway
    #: with N WhatsApp instances uses about N at its busiest.
    stanza_threads: Annotated[int, Field(ge=1, le=4096)] = 1024
    #: Backoff between connection attempts: first delay, doubling up to the maximum.
    reconnect_initial_seconds: Annotated[float, Field(gt=0)] = RECONNECT_INITIAL_SECONDS
    reconnect_max_seconds: Annotated[float, Field(gt=0)] = RECONNECT_MAX_SECONDS
    #: How long finished updates stay in the operation journal (and request_ids stay valid).
    journal_retention_days: Annotated[float, Field(gt=0)] = 30.0
    #: Flush every journal commit to the disk (survives power loss; costs a flush per commit).
    #: Without it a commit survives the gateway being killed, not the machine losing power.
    #: With ``database_url``: PostgreSQL's ``synchronous_commit`` on (off without it).
    journal_fsync: bool = False
    #: neonize's (whatsmeow's) own log level; "debug" hands every node it sends or receives to a
    #: Python callback, which costs time on every stanza.
    whatsapp_log_level: Literal["debug", "info", "warn", "error"] = WHATSAPP_LOG_LEVEL
    #: How long the gateway waits for WhatsApp's answer to one stanza before it reports that
    #: field as unconfirmed.
    stanza_timeout_seconds: Annotated[float, Field(gt=0)] = STANZA_TIMEOUT_SECONDS
    #: TLS on both servers: the certificate (PEM; a chain, the server's first) and its private
    #: key (PEM, unencrypted), both or neither. Relative paths are from the working directory.
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    #: Mutual TLS: callers must present a certificate signed by this CA (PEM; needs the two above).
    tls_client_ca_file: FilePath | None = None
    #: A ``postgres://`` URL: replicas of this gateway share that database (the operation
    #: journal, instance leases, the rate limit, WhatsApp session stores). Unset: one process,
    #: everything under ``data_dir``.
    database_url: Annotated[str, StringConstraints(pattern=r"^postgres(ql)?://")] | None = None
    #: This replica's name among the others (``database_url`` only); unset: the host name and a
    #: random suffix, new at each start.
    replica_id: Name | None = None
    #: Where the other replicas reach this one's gRPC and REST ports (``host:port``); unset: the
    #: listen address, with the host name for a wildcard host and the bound port for port 0.
    advertise_address: HostPort | None = None
    advertise_http_address: HostPort | None = None
    lease_ttl_seconds: Annotated[float, Field(gt=0)] = DEFAULT_LEASE_TTL_SECONDS
    lease_renew_seconds: Annotated[float, Field(gt=0)] = DEFAULT_LEASE_RENEW_SECONDS
    accounts: list[AccountConfig] = []
    instances: list[InstanceConfig] = []

    @model_validator(mode="after")
    def _lease_timing(self) -> GatewayConfig:
        if self.lease_renew_seconds * 3 > self.lease_ttl_seconds:
            raise _ReferenceError(
                ("lease_renew_seconds",),
                f"must be at most a third of lease_ttl_seconds ({self.lease_ttl_seconds:g}), "
                "so that two renewals can fail before a lease could expire",
            )
        return self

    @model_validator(mode="after")
    def _tls_files(self) -> GatewayConfig:
        cert, key, ca = self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file
        if (cert is None) != (key is None):
            given, missing = (_TLS_KEYS["cert"], _TLS_KEYS["key"])
            if cert is None:
                given, missing = missing, given
            raise _ReferenceError(
                (given,), f"needs {missing} too (TLS takes a certificate and its private key)"
            )
        if ca is not None and cert is None:
            raise _ReferenceError(
                (_TLS_KEYS["ca"],),
                "needs tls_cert_file and tls_key_file (mutual TLS is TLS that checks callers)",
            )
        if cert is not None and key is not None:
            try:
                load_server_tls(cert, key, ca)
            except PemError as exc:
                raise _ReferenceError((_TLS_KEYS[exc.role],), str(exc)) from None
        return self

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        accounts = [a.name for a in self.accounts]
        _unique("accounts", accounts)
        _unique("instances", [i.name for i in self.instances])
        for index, instance in enumerate(self.instances):
            if instance.account not in accounts:
                known = ", ".join(accounts) or "none"
                raise _ReferenceError(
                    ("instances", index, "account"),
                    f"unknown account {instance.account!r} (configured: {known})",
                )
        _one_instance_per_store(self.instances, Path(self.data_dir))
        if self.reconnect_initial_seconds > self.reconnect_max_seconds:
            raise _ReferenceError(
                ("reconnect_initial_seconds",),
                f"must not exceed reconnect_max_seconds ({self.reconnect_max_seconds:g})",
            )
        return self


class ConfigError(Exception):
    """A configuration that cannot be used; the message says where and why."""


_TLS_KEYS: dict[Role, str] = {
    "cert": "tls_cert_file",
    "key": "tls_key_file",
    "ca": "tls_client_ca_file",
}


def server_tls(config: GatewayConfig) -> ServerTls | None:
    """The servers' TLS as ``config`` names it, read from the files now; None: plaintext.

    The configuration checked the files when it was made; a file that changed since is a
    ``ConfigError`` naming its key, as it would have been then.
    """
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    try:
        return load_server_tls(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
    except PemError as exc:
        raise ConfigError(f"{_TLS_KEYS[exc.role]}: {exc}") from None


class _ReferenceError(ValueError):
    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_KEY_VALUE = re.compile(r"^\s*[A-Za-z_]+\s*=")
POSTGRES_SCHEMES = ("postgres", "postgresql")


def store_problem(store: str) -> str | None:
    """What kind of unaccepted store ``store`` is (in words that quote none of it), or None.

    neonize opens a ``postgres://`` URL as PostgreSQL and anything else as a SQLite file name:
    a libpq ``key=value`` string or a ``mysql://`` URL would become a file of that name, with
    the password in the file name.
    """
    scheme = _SCHEME.match(store)
    if scheme is not None:
        name = scheme.group(1).lower()
        return None if name in POSTGRES_SCHEMES else f"a {name}:// URL"
    if _KEY_VALUE.match(store) or ("=" in store and re.search(r"\s", store)):
        return "a key=value connection string"
    return None


def _one_instance_per_store(instances: Sequence[InstanceConfig], data_dir: Path) -> None:
    """Refuses two WhatsApp instances on one SQLite store, and one on the journal's file.

    neonize loads a SQLite store's first device: two sessions on it would be two connections of
    the same device, which WhatsApp answers by dropping one, then the other, over and over.
    Paths are compared resolved (``data/a.db`` is ``./data/a.db``). A PostgreSQL database may be
    shared: each instance's device is recorded by its JID when it pairs and named on every
    connect (``service.sessions.whatsapp.devices``).
    """
    journal = (data_dir / "journal.db").resolve()
    seen: dict[str, int] = {}
    for index, instance in enumerate(instances):
        if instance.session != "whatsapp":
            continue
        store = _resolved_store(instance, data_dir)
        if _is_url(store):
            # One PostgreSQL database holds many devices: each instance's is named by its JID.
            continue
        if store == str(journal):
            raise _ReferenceError(
                ("instances", index, "store"),
                f"{journal} is the operation journal; give instance {instance.name!r} "
                "another session store",
            )
        if store in seen:
            first = seen[store]
            # Point at the store that was written down: a default is not the mistake.
            blamed = index if instance.store is not None else first
            where = store
            raise _ReferenceError(
                ("instances", blamed, "store"),
                f"instances {instances[first].name!r} and {instance.name!r} share one session "
                f"store ({where}); give each WhatsApp instance its own store",
            )
        seen[store] = index


def _resolved_store(instance: InstanceConfig, data_dir: Path) -> str:
    if instance.store is None:
        return str((data_dir / f"{instance.name}.db").resolve())
    if _is_url(instance.store):
        return instance.store
    return str(Path(instance.store).resolve())


def _is_url(store: str) -> bool:
    return _SCHEME.match(store) is not None


def _unique(section: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise _ReferenceError((section, index, "name"), f"duplicate name {name!r}")
        seen.add(name)


def resolve(
    command_line: Mapping[str, Any],
    env: Mapping[str, str],
    file: Path | Mapping[str, Any],
) -> GatewayConfig:
    """The configuration to run: command line, then environment, then file, then defaults.

    Each key takes the first value given. ``command_line`` maps keys to the options' values
    (None: the option was not given); ``env`` is the process's environment
    (``PRIVACY_GATEWAY_*``); ``file`` is the configuration file's path or, when there is none,
    what stands in for its contents (the embedded demo's). The file and the environment are
    checked first, so that an error in either names its line or its variable, then the command
    line's values, so that an error in one names its option.
    """
    base = load(file, env) if isinstance(file, Path) else from_mapping(file, env)
    return with_overrides(base, {k: v for k, v in command_line.items() if v is not None})


def load(path: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Reads ``path`` and applies environment overrides."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return _validate(raw, env, path, text)


def from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> GatewayConfig:
    """A configuration from already-parsed data (the embedded demo, tests)."""
    return _validate(dict(raw), env, None, "")


def _validate(
    raw: dict[str, Any], env: Mapping[str, str] | None, path: Path | None, text: str
) -> GatewayConfig:
    overrides = _env_overrides(os.environ if env is None else env)
    where = str(path) if path else "configuration"
    try:
        return GatewayConfig.model_validate({**raw, **{k: v for k, (_, v) in overrides.items()}})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc: tuple[str | int, ...] = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _ReferenceError):
            loc, message = cause.loc, str(cause)
        if loc and loc[0] in overrides:
            raise ConfigError(f"{overrides[str(loc[0])][0]}: {message}") from exc
        line = _lines_of_keys(text).get(_nearest_known(text, loc))
        prefix = f"{where}:{line}" if line else where
        raise ConfigError(f"{prefix}: {_dotted(loc)}: {message}") from exc


_ENV_KEYS = {
    "LISTEN": "listen",
    "HTTP_LISTEN": "http_listen",
    "RATE_LIMIT_PER_MINUTE": "rate_limit_per_minute",
    "LOG_LEVEL": "log_level",
    "LOG_FORMAT": "log_format",
    "METRICS_LISTEN": "metrics_listen",
    "SHUTDOWN_GRACE_SECONDS": "shutdown_grace_seconds",
    "DATA_DIR": "data_dir",
    "STANZA_THREADS": "stanza_threads",
    "TLS_CERT_FILE": "tls_cert_file",
    "TLS_KEY_FILE": "tls_key_file",
    "TLS_CLIENT_CA_FILE": "tls_client_ca_file",
    "MAX_CONCURRENT_CALLS": "max_concurrent_calls",
    "MAX_PENDING_CALLS": "max_pending_calls",
    "MAX_MESSAGE_BYTES": "max_message_bytes",
    # A replica's own: the database (its password stays out of files), its name, its address.
    "DATABASE_URL": "database_url",
    "REPLICA_ID": "replica_id",
    "ADVERTISE_ADDRESS": "advertise_address",
    "ADVERTISE_HTTP_ADDRESS": "advertise_http_address",
}
_INT_KEYS = (
    "rate_limit_per_minute",
    "stanza_threads",
    "max_concurrent_calls",
    "max_pending_calls",
    "max_message_bytes",
)


def _env_overrides(env: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """Config key -> (environment variable, value) for each variable that is set."""
    overrides: dict[str, tuple[str, Any]] = {}
    for suffix, key in _ENV_KEYS.items():
        value: Any = env.get(ENV_PREFIX + suffix)
        if value is None:
            continue
        if key in _INT_KEYS:
            value = _env_number(suffix, value, int)
        elif key == "shutdown_grace_seconds":
            value = _env_number(suffix, value, float)
        overrides[key] = (ENV_PREFIX + suffix, value)
    return overrides


def _env_number(suffix: str, value: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{suffix}: {value!r} is not a number") from None


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_HEADER = re.compile(r"^\s*(\[\[|\[)\s*([\w.\-\s\"']+?)\s*(\]\]|\])\s*(#.*)?$")
_KEY = re.compile(r"^\s*([\w\-]+)\s*=")


def _lines_of_keys(text: str) -> dict[tuple[str | int, ...], int]:
    """Where each table and key of a TOML text is, by its path (``("instances", 1, "name")``).

    Good enough for the files this gateway reads: tables, arrays of tables and their sub-tables,
    and plain keys. tomllib reports no positions of its own, and an error without a line sends
    whoever edits the file hunting.
    """
    lines: dict[tuple[str | int, ...], int] = {}
    counts: dict[str, int] = {}
    table: tuple[str | int, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            parts = [p.strip().strip("\"'") for p in header.group(2).split(".")]
            if header.group(1) == "[[":
                name = ".".join(parts)
                counts[name] = counts.get(name, 0) + 1
                table = (*parts, counts[name] - 1)
            elif parts[0] in counts and len(parts) > 1:
                table = (parts[0], counts[parts[0]] - 1, *parts[1:])
            else:
                table = tuple(parts)
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault((*table, key.group(1)), number)
    return lines


def _nearest_known(text: str, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """``loc`` itself when the text has it, else its longest prefix that it has (a table)."""
    known = _lines_of_keys(text)
    for end in range(len(loc), 0, -1):
        if loc[:end] in known:
            return loc[:end]
    return loc


def with_overrides(config: GatewayConfig, overrides: Mapping[str, Any]) -> GatewayConfig:
    """``config`` with command-line values in place (``--listen`` and kin)."""
    if not overrides:
        return config
    try:
        return GatewayConfig.model_validate({**config.model_dump(exclude_unset=True), **overrides})
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "option"
        raise ConfigError(f"{option}: {error['msg']}") from exc
