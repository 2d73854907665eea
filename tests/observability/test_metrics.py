"""``/metrics``: the Prometheus exposition parses, and after a series of calls it shows exactly
those calls, updates, field outcomes, instance states, the rate-limit refusal and the journal's
commits; each gateway counts only its own; and ``metrics_listen`` moves it to a port of its own.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client import generate_latest

from service.auth import hash_token
from service.engine import FailurePolicy
from service.http.metrics import MetricsServer
from service.http.server import HttpServer
from service.journal import Journal
from service.listen import ListenError
from service.operations import OperationRecord, OperationState
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.sessions.base import SessionState
from service.settings import Field
from tests.helpers.harness import ACME_TOKEN, GLOBEX_TOKEN, GatewayFactory, Harness
from tests.helpers.observability import (
    GET,
    INSTANCES,
    RATE_LIMIT,
    REST_PRIVACY,
    STREAM,
    UPDATE,
    WRONG_TOKEN,
    Exposition,
    refused,
    scrape,
    settings,
)
from tests.helpers.rest_client import Rest

LIST_INSTANCES = INSTANCES + "ListInstances"


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


async def test_after_a_series_of_calls_the_metrics_show_exactly_those_calls(
    limited: Rest,
) -> None:
    rest, harness = limited, limited.harness
    instances = instance_grpc.InstanceServiceStub(harness.channel)
    harness.session("support").fail_field(Field.PROFILE, "info query returned status 500")

    # gRPC: reads, refusals, updates that complete and one that fails, a stream.
    await harness.get("sales")
    assert await refused(harness.get("nope")) == "NOT_FOUND"
    assert await refused(harness.get("sales", token=WRONG_TOKEN)) == "UNAUTHENTICATED"
    await harness.update(settings(last_seen="none", status="contacts"))
    failed_code = await refused(
        harness.update(settings(profile="none", read_receipts="none"), instance="support")
    )
    stream = harness.stream(settings(group_add="contacts"))
    assert [m async for m in stream]
    assert await stream.code() == grpc.StatusCode.OK
    await instances.ListInstances(instance_pb.ListInstancesRequest(), metadata=harness.metadata())
    # REST: a read, an update, a wrong token, a path no route serves; probes are not calls.
    assert (await rest.get("sales")).status == 200
    assert (await rest.post("sales", {"privacy": {"readReceipts": "none"}})).status == 200
    assert (await rest.get("sales", token=WRONG_TOKEN)).status == 401
    assert (await rest.request("GET", "/nowhere")).status == 404
    assert (await rest.request("GET", "/healthz")).status == 200
    # globex's calls: all it may make in a minute, then one more.
    for _ in range(RATE_LIMIT):
        await harness.get("other", token=GLOBEX_TOKEN)
    assert await refused(harness.get("other", token=GLOBEX_TOKEN)) == "RESOURCE_EXHAUSTED"
    harness.session("other").disconnect()

    # A call is counted as it ends, a moment after its caller heard the answer: the last one's
    # count may trail the scrape by that moment.
    deadline = time.monotonic() + 5
    scraped = await scrape(rest.client, rest.base)
    while (
        time.monotonic() < deadline
        and sum(scraped.samples("privacy_gateway_calls_total").values()) < 12 + RATE_LIMIT
    ):
        await asyncio.sleep(0.05)
        scraped = await scrape(rest.client, rest.base)

    assert scraped.content_type.startswith("text/plain")
    assert scraped.nonzero("privacy_gateway_calls_total") == {
        labels(method=GET, code="OK"): 1 + RATE_LIMIT,
        labels(method=GET, code="NOT_FOUND"): 1,
        labels(method=GET, code="UNAUTHENTICATED"): 1,
        labels(method=GET, code="RESOURCE_EXHAUSTED"): 1,
        labels(method=UPDATE, code="OK"): 1,
        labels(method=UPDATE, code=failed_code): 1,
        labels(method=STREAM, code="OK"): 1,
        labels(method=LIST_INSTANCES, code="OK"): 1,
        labels(method=f"GET {REST_PRIVACY}", code="OK"): 1,
        labels(method=f"GET {REST_PRIVACY}", code="UNAUTHENTICATED"): 1,
        labels(method=f"POST {REST_PRIVACY}", code="OK"): 1,
        labels(method="GET (unmatched)", code="NOT_FOUND"): 1,
    }
    assert scraped.nonzero("privacy_gateway_updates_total") == {
        labels(outcome="COMPLETED"): 3,
        labels(outcome="FAILED"): 1,
    }
    assert scraped.nonzero("privacy_gateway_stanzas_total") == {
        labels(field="last_seen", result="applied"): 1,
        labels(field="status", result="unchanged"): 1,
        labels(field="profile", result="failed"): 1,
        labels(field="read_receipts", result="not_attempted"): 1,
        labels(field="group_add", result="applied"): 1,
        labels(field="read_receipts", result="applied"): 1,
    }
    # Only stanzas that went out have a round trip.
    assert scraped.nonzero("privacy_gateway_stanza_seconds_count") == {
        labels(field="last_seen"): 1,
        labels(field="profile"): 1,
        labels(field="group_add"): 1,
        labels(field="read_receipts"): 1,
    }
    assert scraped.nonzero("privacy_gateway_instances") == {
        labels(state="connected"): 2,
        labels(state="disconnected"): 1,
    }
    every_state = {labels(state=state.value) for state in SessionState}
    assert set(scraped.samples("privacy_gateway_instances")) == every_state
    assert scraped.value("privacy_gateway_rate_limited_total") == 1
    # Four journaled updates: each one's begin, then at least one commit for the rest.
    commits = scraped.samples("privacy_gateway_journal_commit_seconds_count")
    assert set(commits) == {labels(thread="loop"), labels(thread="writer")}
    assert sum(commits.values()) >= 8
    assert sum(scraped.samples("privacy_gateway_journal_commit_seconds_sum").values()) > 0
    # Counts only: no instance, account or token is named.
    for secret in ("sales", "support", "acme", "globex", ACME_TOKEN, hash_token(ACME_TOKEN)[:8]):
        assert secret not in scraped.text


async def test_metrics_need_no_token_and_are_not_rate_limited(limited: Rest) -> None:
    for _ in range(RATE_LIMIT + 2):
        scraped = await scrape(limited.client, limited.base)
    assert scraped.value("privacy_gateway_rate_limited_total") == 0
    assert scraped.nonzero("privacy_gateway_calls_total") == {}


async def test_the_processs_open_descriptors_are_shown_against_its_limit(rest: Rest) -> None:
    """neonize leaves a session store open per connection it makes (goneonize/main.go:58-64):
    an operator watches process_open_fds against process_max_fds."""
    scraped = await scrape(rest.client, rest.base)
    assert 0 < scraped.value("process_open_fds") < scraped.value("process_max_fds")
    assert scraped.value("process_resident_memory_bytes") > 0


async def test_each_gateway_counts_only_its_own_calls(make_gateway: GatewayFactory) -> None:
    first: Harness = await make_gateway()
    second: Harness = await make_gateway()

    await first.get("sales")
    await first.get("sales")
    await second.get("support", token=ACME_TOKEN)

    def calls(harness: Harness) -> dict[tuple[tuple[str, str], ...], float]:
        text = generate_latest(harness.gateway.metrics.registry).decode()
        return Exposition(text, "").nonzero("privacy_gateway_calls_total")

    assert calls(first) == {labels(method=GET, code="OK"): 2}
    assert calls(second) == {labels(method=GET, code="OK"): 1}


async def test_metrics_listen_serves_them_on_their_own_port_and_not_on_rest(
    gateway: Harness,
) -> None:
    http = HttpServer(gateway.gateway, metrics=False)
    own = MetricsServer(gateway.gateway.metrics)
    await http.start("127.0.0.1:0")
    await own.start("127.0.0.1:0")
    try:
        await gateway.get("sales")
        async with aiohttp.ClientSession() as client:
            scraped = await scrape(client, f"http://127.0.0.1:{own.port}")
            async with client.get(f"http://127.0.0.1:{http.port}/metrics") as on_rest:
                assert on_rest.status == 404
                assert (await on_rest.json())["error"]["reason"] == "ROUTE_NOT_FOUND"
        assert scraped.value("privacy_gateway_calls_total", method=GET, code="OK") == 1
        taken = MetricsServer(gateway.gateway.metrics)
        with pytest.raises(ListenError, match="metrics_listen"):
            await taken.start(f"127.0.0.1:{own.port}")
    finally:
        await own.stop()
        await http.stop()


async def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(rest: Rest) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    async with rest.client.get(rest.base + "/metrics", headers={"Accept": accept}) as response:
        body = await response.text()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


async def test_updates_a_killed_gateway_left_running_count_as_interrupted(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    data = tmp_path / "killed"
    left = Journal(data / "journal.db")
    for number in range(2):
        record = OperationRecord(
            id=f"left-running-{number}", instance="sales", requested_by="account:acme#00000000",
            request_id=None, body_hash="", requested={Field.LAST_SEEN: "none"},
            policy=FailurePolicy.STOP, validate_only=False, force=False,
            state=OperationState.RUNNING, started_at=time.time(),
        )  # fmt: skip
        await left.begin(record)
    await left.close()

    harness: Harness = await make_gateway(data_dir=str(data))

    text = generate_latest(harness.gateway.metrics.registry).decode()
    assert Exposition(text, "").nonzero("privacy_gateway_updates_total") == {
        labels(outcome="INTERRUPTED"): 2
    }
