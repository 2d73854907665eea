"""whatsmeow's session store in PostgreSQL: the DSN neonize gets, the first schema upgrade taken
in turns, the device check before a dial, and the connections a finished call left behind.

Sources (krypton-byte/neonize goneonize/main.go at fcd96cb; tulir/whatsmeow at e277b766, which
neonize's go.mod pins; go.mau.fi/util dbutil at f9ffa7e; lib/pq v1.12.3, the version the wheel's
Go library embeds):

- neonize opens every store string starting with ``postgres`` with lib/pq (``getDB``,
  main.go:58-64), *once per call*: ``Neonize`` (main.go:623) and ``GetAllDevices``
  (main.go:2377-2379) each make a new ``sqlstore.Container`` over a new ``sql.DB`` and never close
  it. database/sql keeps up to two idle connections per ``sql.DB`` for good, so every call leaves
  its connections open in the server: ``release`` ends those of a call that has returned, found
  by the unique ``application_name`` its DSN carries (lib/pq connector.go:297).
- lib/pq's sslmode defaults to ``require`` (connector.go:304-309) and fails with "pq: SSL is not
  enabled on the server" (conn.go:36, 1203-1204) against a server without SSL; ``prefer`` tries
  SSL and falls back to a plain connection (conn.go:279-283), as libpq and asyncpg (the
  gateway's own pool) do by default. So a DSN derived from ``database_url`` gets ``prefer`` unless
  the operator named a mode (``require``, ``verify-full``: kept as given). lib/pq v1.10.9 knew no
  ``prefer`` (ssl.go there); v1.12.3 does (connector.go:49-72).
- ``connect_timeout`` (connector.go:367, conn.go:435-450): without it a silent server holds the
  dial for the kernel's TCP timeout, inside a ``Neonize`` call that cannot be stopped.
- ``sqlstore.New`` runs whatsmeow's upgrade (container.go:46-58) on every open: dbutil reads
  ``whatsmeow_version``, creating it first with a bare ``CREATE TABLE`` if missing
  (dbutil/upgrades.go:53-72), then runs the missing upgrades (upgrades.go:204-262; v0 is the
  whole schema in one transaction, upgrades/00-latest-schema.sql). Nothing locks: replicas
  opening a fresh database together collide on a duplicate key (23505) or an existing relation.
  ``WhatsmeowDatabase.ready`` runs the upgrade once per process, through ``GetAllDevices`` (an
  open without a client, main.go:2376-2402), while holding a PostgreSQL advisory lock: the first
  replica upgrades, the others find the schema current and change nothing.
- ``GetDevice`` answers nil, no error, for a JID it does not hold (container.go:182-187), and
  neonize hands that nil to ``whatsmeow.NewClient`` (main.go:642-653), which aborts the process;
  with no JID, ``GetFirstDevice`` (container.go:165-175) would load whichever device comes first,
  another instance's on a shared store. So a session checks ``whatsmeow_device`` (keyed by jid)
  for its own device before every dial (``has_device``).

Neither a URL nor a DSN is ever logged or put in an error: both may carry the password.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from neonize.proto import Neonize_pb2 as npb

from service.sessions.whatsapp.ffi import WhatsAppFFI

log = logging.getLogger(__name__)

#: lib/pq's ``connect_timeout`` (seconds) in a DSN that names none.
CONNECT_TIMEOUT_SECONDS = 5
#: The sslmode a DSN derived from ``database_url`` gets when the operator named none (see above).
DEFAULT_SSLMODE = "prefer"
#: The advisory lock key under which replicas run whatsmeow's upgrade ("wame").
UPGRADE_LOCK = 0x77616D65
#: How long a replica waits for another's upgrade before it gives up for this attempt.
UPGRADE_WAIT_SECONDS = 120.0
#: What every neonize connection's ``application_name`` starts with (63 bytes at most in all).
APPLICATION_PREFIX = "pgw-wa-"


def neonize_dsn(url: str, *, derived: bool, application_name: str | None = None) -> str:
    """The store string neonize gets for the PostgreSQL database at ``url``.

    ``derived``: ``url`` is the gateway's ``database_url`` rather than an instance's own
    ``store``; only then is an sslmode chosen when none is named (an operator's own store URL
    keeps lib/pq's ``require``, as before). ``connect_timeout`` is added when missing, and
    ``application_name`` (replacing any) names the call's connections for ``release``.
    """
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    keys = {k for k, _ in query}
    if derived and "sslmode" not in keys:
        query.append(("sslmode", DEFAULT_SSLMODE))
    if "connect_timeout" not in keys:
        query.append(("connect_timeout", str(CONNECT_TIMEOUT_SECONDS)))
    if application_name is not None:
        query = [(k, v) for k, v in query if k != "application_name"]
        query.append(("application_name", application_name))
    return urlunsplit(parts._replace(query=urlencode(query)))


def asyncpg_url(url: str) -> str:
    """``url`` for asyncpg: without ``connect_timeout``, which only lib/pq reads (asyncpg would
    send it to the server as a setting, which refuses it; its own timeout is passed instead)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    kept = [(k, v) for k, v in query if k != "connect_timeout"]
    return url if kept == query else urlunsplit(parts._replace(query=urlencode(kept)))


def store_jid(jid: npb.JID) -> str:
    """The JID as whatsmeow keys ``whatsmeow_device`` by it: ``types.JID.String()``
    (types/jid.go:216-228, stored through ``Value``, 279-284), after neonize's
    ``DecodeJidProto``."""
    if not jid.Server:
        return ""
    if jid.RawAgent > 0:
        return f"{jid.User}.{jid.RawAgent}:{jid.Device}@{jid.Server}"
    if jid.Device > 0:
        return f"{jid.User}:{jid.Device}@{jid.Server}"
    return f"{jid.User}@{jid.Server}" if jid.User else jid.Server


class StoreUnavailable(Exception):
    """The store cannot be used now; the message says why and quotes no URL."""


def _why(exc: BaseException) -> str:
    # asyncpg's messages and PostgreSQL's never quote the password; the URL is never passed.
    return f"{type(exc).__name__}: {exc}"


class WhatsmeowDatabase:
    """One PostgreSQL database holding whatsmeow's tables for some sessions.

    ``pool`` is the gateway's pool on it when it has one (then it is the caller's to close);
    without it a small pool of its own is opened on first use and closed by ``close``.
    """

    def __init__(
        self,
        url: str,
        ffi: WhatsAppFFI,
        *,
        derived: bool,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self._url = url
        self._ffi = ffi
        self._derived = derived
        self._pool = pool
        self._own_pool = pool is None
        self._opening: asyncio.Lock | None = None
        self._upgraded = False
        self._upgrading: asyncio.Lock | None = None
        #: Unique across replicas: application names must not meet another process's.
        self._token = secrets.token_hex(4)
        self._calls = itertools.count(1)
        self._users = 0

    def join(self) -> None:
        """A session starts using the database (``leave`` closes an own pool after the last)."""
        self._users += 1

    async def leave(self) -> None:
        self._users -= 1
        if self._users <= 0:
            await self.close()

    def new_call(self) -> tuple[str, str]:
        """A name for one neonize call's connections, and the DSN carrying it."""
        name = f"{APPLICATION_PREFIX}{self._token}-{next(self._calls)}"
        return name, neonize_dsn(self._url, derived=self._derived, application_name=name)

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if self._pool is None:
                    from service.cluster import DatabaseError  # noqa: PLC0415
                    from service.cluster.database import open_pool  # noqa: PLC0415

                    try:
                        self._pool = await open_pool(asyncpg_url(self._url), max_size=2)
                    except DatabaseError as exc:
                        raise StoreUnavailable(f"the session store: {exc}") from None
        return self._pool

    async def ready(self) -> None:
        """Makes sure whatsmeow's schema is current, upgrading it at most once per process and
        one replica at a time (see the module); raises ``StoreUnavailable``."""
        if self._upgraded:
            return
        if self._upgrading is None:
            self._upgrading = asyncio.Lock()
        async with self._upgrading:
            if self._upgraded:
                return
            pool = await self.pool()
            name, dsn = self.new_call()
            try:
                async with pool.acquire() as connection:
                    await connection.execute(
                        "SELECT pg_advisory_lock($1)", UPGRADE_LOCK, timeout=UPGRADE_WAIT_SECONDS
                    )
                    try:
                        problem = await asyncio.to_thread(self._ffi.open_store, dsn)
                    finally:
                        await connection.execute("SELECT pg_advisory_unlock($1)", UPGRADE_LOCK)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise StoreUnavailable(f"the session store: {_why(exc)}") from None
            finally:
                await self.release(name)
            if problem:
                raise StoreUnavailable(f"the session store: {problem}")
            self._upgraded = True

    async def has_device(self, jid: npb.JID) -> bool:
        """Whether whatsmeow's ``whatsmeow_device`` holds ``jid``; raises ``StoreUnavailable``."""
        pool = await self.pool()
        try:
            found = await pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM whatsmeow_device WHERE jid = $1)", store_jid(jid)
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"the session store: {_why(exc)}") from None
        return bool(found)

    async def release(self, name: str) -> int:
        """Ends the connections a returned neonize call (named ``name``) left open; how many.

        Only a call that returned, or was given up after a stop, is released: its client is
        done with the store (a failed dial, or a stopped connection)."""
        try:
            pool = await self.pool()
            ended = await pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                name,
            )
        except (StoreUnavailable, OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.warning("the session store's leftover connections stay open: %s", exc)
            return 0
        except asyncpg.InterfaceError as exc:
            log.warning("the session store's leftover connections stay open: %s", _why(exc))
            return 0
        return int(ended or 0)

    async def close(self) -> None:
        if self._own_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
