"""Bursts and limits: the cap on calls in progress, grpc's own queue, message sizes, keepalive.

Past ``max_concurrent_calls`` (gRPC and REST together, an open stream counting until it ends) a
call is refused at once with RESOURCE_EXHAUSTED TOO_MANY_CALLS and a RetryInfo (REST: 429 and
Retry-After), and the calls within the cap are served; none ends CANCELLED, which a caller
could not tell from its own cancel. The limits grpc applies itself are the configuration's,
stated in the README with their defaults.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from service.config import GatewayConfig, from_mapping
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from tests.helpers.harness import ACME_TOKEN, GatewayFactory, Harness
from tests.helpers.rest_client import serving
from tests.helpers.rich_status import details, error_info

ROOT = Path(__file__).resolve().parents[2]
LIMIT_KEYS = (
    "max_concurrent_calls",
    "max_pending_calls",
    "max_message_bytes",
    "keepalive_min_ping_interval_seconds",
    "keepalive_permit_without_calls",
    "keepalive_max_ping_strikes",
)


def _watch(stub: pb_grpc.PrivacyServiceStub) -> Any:
    return stub.WatchPrivacySettings(
        pb.WatchPrivacySettingsRequest(instance="sales"), metadata=(("token", ACME_TOKEN),)
    )


async def _first(call: Any) -> str:
    """What a stream's first read got: ``settings``, or the code and reason it ended with (a
    refusal's RetryInfo checked on the way)."""
    try:
        await call.read()
    except aio.AioRpcError as error:
        return _refusal(error)
    return "settings"


async def _read(harness: Harness) -> str:
    """One GetPrivacySettings: "OK", or how it was refused."""
    try:
        await harness.get()
    except aio.AioRpcError as error:
        return _refusal(error)
    return "OK"


def _refusal(error: aio.AioRpcError) -> str:
    """The code and reason a call was refused with, its RetryInfo checked on the way (a status
    without details is only its code, which no assertion here accepts)."""
    status = rpc_status.from_call(error)
    if status is None:
        return error.code().name
    (retry,) = details(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds >= 1
    return f"{error.code().name} {error_info(status).reason}"


async def _all_released(harness: Harness) -> None:
    """Waits (10 s at most) until the cancelled streams' handlers have ended."""
    for _ in range(1000):
        if not harness.gateway.calls.in_progress:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{harness.gateway.calls.in_progress} calls still hold a place")


async def test_streams_past_the_cap_are_refused_with_a_retry_hint_and_the_rest_served(
    make_gateway: GatewayFactory,
) -> None:
    harness: Harness = await make_gateway(max_concurrent_calls=20)
    watches = [_watch(harness.stub) for _ in range(60)]

    answers = Counter(await asyncio.gather(*(_first(w) for w in watches)))

    assert answers == {"settings": 20, "RESOURCE_EXHAUSTED TOO_MANY_CALLS": 40}
    for watch in watches:
        watch.cancel()
    await _all_released(harness)
    assert await harness.get() is not None  # the places are free again


async def test_a_burst_past_grpcs_own_queue_is_refused_never_cancelled(
    make_gateway: GatewayFactory,
) -> None:
    """1,500 streams at once, with the cap at its default of 1,000: grpc's own queue of calls
    not yet picked up (1,000 before it starts dropping calls, as CANCELLED) is sized to
    ``max_pending_calls``, so every call reaches the gateway: 1,000 are served, 500 refused."""
    harness: Harness = await make_gateway()
    assert harness.gateway.calls.limit == 1000
    watches = [_watch(harness.stub) for _ in range(1500)]

    answers = Counter(await asyncio.gather(*(_first(w) for w in watches)))

    assert answers == {"settings": 1000, "RESOURCE_EXHAUSTED TOO_MANY_CALLS": 500}
    for watch in watches:
        watch.cancel()
    await _all_released(harness)


async def test_a_burst_of_quick_calls_ends_none_cancelled(make_gateway: GatewayFactory) -> None:
    """3,000 unary calls at once: each is answered or refused with TOO_MANY_CALLS and a retry
    hint (not grpc's own RESOURCE_EXHAUSTED), none dropped."""
    harness: Harness = await make_gateway()

    answers = Counter(await asyncio.gather(*(_read(harness) for _ in range(3000))))

    assert set(answers) <= {"OK", "RESOURCE_EXHAUSTED TOO_MANY_CALLS"}, answers
    assert answers["OK"] >= 1000, answers


async def test_unary_calls_past_the_cap_are_refused_with_a_retry_hint(
    make_gateway: GatewayFactory,
) -> None:
    """Quick calls seldom overlap, so the cap is held by watches: every unary call past it is
    refused RESOURCE_EXHAUSTED TOO_MANY_CALLS with a RetryInfo, and served once they end."""
    harness: Harness = await make_gateway(max_concurrent_calls=5)
    watches = [_watch(harness.stub) for _ in range(5)]
    assert [await _first(w) for w in watches] == ["settings"] * 5

    answers = Counter(await asyncio.gather(*(_read(harness) for _ in range(20))))
    for watch in watches:
        watch.cancel()
    await _all_released(harness)

    assert answers == {"RESOURCE_EXHAUSTED TOO_MANY_CALLS": 20}
    assert await harness.get() is not None


async def test_rest_past_the_cap_is_429_with_retry_after(make_gateway: GatewayFactory) -> None:
    """The cap is one for both edges: gRPC watches hold every place, REST is refused."""
    harness: Harness = await make_gateway(max_concurrent_calls=5)
    watches = [_watch(harness.stub) for _ in range(5)]
    assert [await _first(w) for w in watches] == ["settings"] * 5
    async with serving(harness) as rest:
        replies = await asyncio.gather(*(rest.get("sales") for _ in range(20)))
        for watch in watches:
            watch.cancel()
        await _all_released(harness)
        after = await rest.get("sales")

    assert {(r.status, r.body["error"]["reason"], r.headers["Retry-After"]) for r in replies} == {
        (429, "TOO_MANY_CALLS", "1")
    }
    assert after.status == 200


async def test_a_message_over_max_message_bytes_is_refused_by_grpc(
    make_gateway: GatewayFactory,
) -> None:
    harness: Harness = await make_gateway(max_message_bytes=2048)

    with pytest.raises(aio.AioRpcError) as refused:
        await harness.get(instance="x" * 4000)
    near = await _code(harness.get(instance="x" * 1500))

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Received message larger than max" in (refused.value.details() or "")
    assert near == grpc.StatusCode.NOT_FOUND  # under the limit: the gateway's own answer


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_client_pinging_too_often_is_sent_away(make_gateway: GatewayFactory) -> None:
    """Keepalive enforcement: a client that pings more often than
    ``keepalive_min_ping_interval_seconds`` is sent GOAWAY (ENHANCE_YOUR_CALM, too_many_pings)
    after ``keepalive_max_ping_strikes`` strikes, which ends its calls UNAVAILABLE."""
    harness: Harness = await make_gateway(keepalive_min_ping_interval_seconds=5)
    options = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with aio.insecure_channel(harness.address, options=options) as channel:
        watch = _watch(pb_grpc.PrivacyServiceStub(channel))
        assert await _first(watch) == "settings"
        with pytest.raises(aio.AioRpcError) as ended:
            async with asyncio.timeout(30):
                await watch.read()

    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ping" in (ended.value.details() or "").lower()


def test_the_limits_can_be_set_from_the_environment() -> None:
    env = {
        "PRIVACY_GATEWAY_MAX_CONCURRENT_CALLS": "5",
        "PRIVACY_GATEWAY_MAX_PENDING_CALLS": "50000",
        "PRIVACY_GATEWAY_MAX_MESSAGE_BYTES": "65536",
    }
    configured = from_mapping({}, env=env)

    assert (
        configured.max_concurrent_calls,
        configured.max_pending_calls,
        configured.max_message_bytes,
    ) == (5, 50000, 65536)


def test_the_readme_states_every_limit_with_its_default() -> None:
    """The configuration example in the README names each limit with the default it has."""
    text = (ROOT / "README.md").read_text()
    examples = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    (example,) = [e for e in examples if "rate_limit_per_minute" in e]
    stated = tomllib.loads(example)
    defaults = {key: GatewayConfig.model_fields[key].default for key in LIMIT_KEYS}

    assert {key: stated.get(key) for key in LIMIT_KEYS} == defaults
