"""The replicas' shared rate limit (``service.cluster.ratelimit``) on a real PostgreSQL: exact
under a burst spread over replicas, one limit per key, a window that moves by the server's
clock, a retry hint that names when the blocking hit leaves, expired hits purged, 0 = off, and
what a check does when the database cannot answer.

Old hits are written with SQL at the server's ``clock_timestamp() - N s`` rather than waited
for: the production statement and window are the ones under test, and no test sleeps a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import asyncpg
import pytest

from service.cluster import ratelimit
from service.cluster.ratelimit import open_rate_limiter
from service.errors import RATE_LIMITED, GatewayError
from service.ratelimit import RateLimit

KEY = hashlib.sha256(b"token-a").hexdigest()
OTHER = hashlib.sha256(b"token-b").hexdigest()


async def _outcomes(limiter: RateLimit, key: str) -> bool:
    """True if one check of ``key`` is admitted, False if RATE_LIMITED."""
    try:
        await limiter.check(key)
    except GatewayError as exc:
        refused = exc
    else:
        return True
    assert refused.reason == RATE_LIMITED.name
    return False


async def _hits(pool: asyncpg.Pool, key: str, *ages: float) -> None:
    """Hits of ``key`` as if admitted ``ages`` seconds ago by the server's clock."""
    await pool.executemany(
        "INSERT INTO gateway_rate_hits (key, at) VALUES ($1, clock_timestamp() - make_interval("
        "secs => $2))",
        [(key, age) for age in ages],
    )


async def _rows(pool: asyncpg.Pool, key: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM gateway_rate_hits WHERE key = $1", key)
    return count


async def test_a_burst_over_three_replicas_admits_exactly_the_limit(
    pools: list[asyncpg.Pool], caplog: pytest.LogCaptureFixture
) -> None:
    # Several limiters per pool, so that many checks of the one key meet in the database at
    # once (a limiter sends one key's checks one at a time).
    limiters = [await open_rate_limiter(pool, 50) for pool in pools for _ in range(4)]
    checks = [_outcomes(limiters[i % len(limiters)], KEY) for i in range(300)]
    with caplog.at_level(logging.WARNING, "service.cluster.ratelimit"):
        admitted = await asyncio.gather(*checks)
    assert admitted.count(True) == 50
    assert await _rows(pools[0], KEY) == 50
    assert not caplog.records  # never the per-replica fallback


async def test_bursts_in_turn_admit_nothing_past_the_limit(pools: list[asyncpg.Pool]) -> None:
    limiters = [await open_rate_limiter(pool, 7) for pool in pools]
    for _ in range(3):
        admitted = await asyncio.gather(*(_outcomes(lim, KEY) for lim in limiters * 10))
        assert admitted.count(True) == (7 if _ == 0 else 0)


async def test_each_key_has_its_own_limit(pools: list[asyncpg.Pool]) -> None:
    first, second = [await open_rate_limiter(pool, 3) for pool in pools[:2]]
    assert [await _outcomes(first, KEY) for _ in range(4)] == [True, True, True, False]
    assert [await _outcomes(second, OTHER) for _ in range(4)] == [True, True, True, False]
    assert not await _outcomes(second, KEY)


async def test_the_refusal_is_the_catalogues_with_the_limit(pool: asyncpg.Pool) -> None:
    limiter = await open_rate_limiter(pool, 2)
    await limiter.check(KEY)
    await limiter.check(KEY)
    with pytest.raises(GatewayError) as refused:
        await limiter.check(KEY)
    assert refused.value.reason == RATE_LIMITED.name
    assert refused.value.message == "Rate limit exceeded: 2 requests per minute"
    assert refused.value.metadata["limit_per_minute"] == "2"
    assert refused.value.retry_after_seconds is not None
    assert 59.0 < refused.value.retry_after_seconds <= 60.0


async def test_hits_older_than_the_window_do_not_count_and_are_purged(pool: asyncpg.Pool) -> None:
    limiter = await open_rate_limiter(pool, 3)
    await _hits(pool, KEY, 61, 62, 90, 600)
    assert [await _outcomes(limiter, KEY) for _ in range(4)] == [True, True, True, False]
    old = await pool.fetchval(
        "SELECT count(*) FROM gateway_rate_hits WHERE key = $1"
        " AND at <= clock_timestamp() - interval '60 s'",
        KEY,
    )
    assert old == 0
    assert await _rows(pool, KEY) == 3


async def test_the_window_moves_and_retry_after_is_when_the_oldest_hit_leaves(
    pool: asyncpg.Pool,
) -> None:
    limiter = await open_rate_limiter(pool, 3)
    await _hits(pool, KEY, 59.4, 30, 1)
    with pytest.raises(GatewayError) as refused:
        await limiter.check(KEY)
    retry_after = refused.value.retry_after_seconds
    assert retry_after is not None
    assert 0.3 < retry_after <= 0.6
    await asyncio.sleep(retry_after + 0.1)
    assert await _outcomes(limiter, KEY)  # the oldest left: one place again
    assert not await _outcomes(limiter, KEY)


async def test_a_lowered_limit_waits_for_the_hit_that_brings_the_key_under_it(
    pool: asyncpg.Pool,
) -> None:
    """Replicas mid-way through a configuration change: more hits count than this one's limit."""
    limiter = await open_rate_limiter(pool, 3)
    await _hits(pool, KEY, 50, 40, 30, 20, 10)
    with pytest.raises(GatewayError) as refused:
        await limiter.check(KEY)
    assert refused.value.retry_after_seconds == pytest.approx(30, abs=0.5)


async def test_a_replicas_first_check_sweeps_every_keys_expired_hits(pool: asyncpg.Pool) -> None:
    limiter = await open_rate_limiter(pool, 3)
    await _hits(pool, OTHER, 61, 120, 1)
    await limiter.check(KEY)
    assert await _rows(pool, OTHER) == 1  # the live one stays
    await _hits(pool, OTHER, 61)
    await limiter.check(KEY)
    assert await _rows(pool, OTHER) == 2  # the next sweep is a minute away


async def test_replicas_starting_together_create_the_tables_once(
    pools: list[asyncpg.Pool],
) -> None:
    limiters = await asyncio.gather(*(open_rate_limiter(pool, 5) for pool in pools * 3))
    assert all(await asyncio.gather(*(_outcomes(lim, KEY) for lim in limiters[:5])))


async def test_zero_is_off_and_never_asks_the_database(pool: asyncpg.Pool) -> None:
    limiter = await open_rate_limiter(pool, 0)
    assert await pool.fetchval("SELECT to_regclass('gateway_rate_hits')") is None
    await pool.close()
    for _ in range(1000):
        await limiter.check(KEY)
    assert limiter.per_minute == 0


async def test_without_the_database_each_replica_limits_on_its_own(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = await open_rate_limiter(pool, 3)
    await pool.close()
    with caplog.at_level(logging.WARNING, "service.cluster.ratelimit"):
        outcomes = [await _outcomes(limiter, KEY) for _ in range(10)]
    assert outcomes == [True, True, True] + [False] * 7
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one line an outage, not one a request
    assert "InterfaceError" in warnings[0]
    assert KEY not in warnings[0]
    assert "postgres" not in warnings[0]


async def test_once_the_database_answers_again_checks_count_there_again(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "RETRY_DATABASE_SECONDS", 0.0)
    limiter = await open_rate_limiter(pool, 3)
    await limiter.check(KEY)
    await pool.execute("ALTER TABLE gateway_rate_hits RENAME TO gateway_rate_hits_away")
    with caplog.at_level(logging.INFO, "service.cluster.ratelimit"):
        await limiter.check(KEY)  # UndefinedTable: counted by this replica alone
        await pool.execute("ALTER TABLE gateway_rate_hits_away RENAME TO gateway_rate_hits")
        await limiter.check(KEY)
        await limiter.check(KEY)
    assert await _rows(pool, KEY) == 3
    assert not await _outcomes(limiter, KEY)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert "UndefinedTableError 42P01" in lines[0][1]
    assert "again" in lines[1][1]


async def test_a_stalled_database_costs_one_timeout_then_each_replica_limits_alone(
    pools: list[asyncpg.Pool], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "CHECK_TIMEOUT_SECONDS", 0.3)
    limiter = await open_rate_limiter(pools[0], 2)
    async with pools[1].acquire() as holder:  # another session holds the key's lock: a stall
        await holder.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, $2))", KEY, ratelimit.LOCK_SEED
        )
        with caplog.at_level(logging.WARNING, "service.cluster.ratelimit"):
            started = asyncio.get_running_loop().time()
            outcomes = [await _outcomes(limiter, KEY) for _ in range(3)]
            took = asyncio.get_running_loop().time() - started
        await holder.execute("SELECT pg_advisory_unlock_all()")
    assert outcomes == [True, True, False]
    assert 0.3 <= took < 1.0  # the first check waited; the others did not ask
    assert ["TimeoutError" in r.getMessage() for r in caplog.records] == [True]
    # The timed-out statement is cancelled, but the cancel races the unlock: it may have been
    # counted, once (it was admitted, so counting it is not wrong).
    assert await _rows(pools[0], KEY) <= 1
