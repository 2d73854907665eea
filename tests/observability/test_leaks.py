"""No token, no token hash (not even an 8-hex prefix of one) and no QR code reaches the logs.

A full series of calls on both edges, the hostile ones included: wrong tokens, tokens and hashes
in every other place a caller can put text (instance names, request and operation ids, page
tokens, other metadata, headers, query, body, path), very long names, the rate limit, and the
pairing of a stand-in WhatsApp account that shows QR codes, one of them abandoned midway. Every
logger is captured at DEBUG, in both of the gateway's formats.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from grpc import aio

from service.auth import hash_token, new_token
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.sessions.whatsapp.standin import StandInFFI, Timing
from tests.helpers.harness import (
    ACME_TOKEN,
    GLOBEX_TOKEN,
    SALES_TOKEN,
    GatewayFactory,
    Harness,
)
from tests.helpers.observability import INSTANCES, WRONG_TOKEN, Captured, refused, settings
from tests.helpers.rest_client import PATH, Rest
from tests.helpers.whatsapp_harness import (
    JID,
    NOT_PAIRED,
    StartWhatsApp,
    WaGateway,
    drain,
    pair_event,
)

#: No line may be longer: whatever a caller sends, what is logged of it is bounded.
MAX_LINE = 2500
LONG_NAME = "n" * 4000
NDJSON = "application/x-ndjson"


async def grpc_series(harness: Harness, stranger: str) -> int:
    """Calls on gRPC, then hostile ones; returns how many calls were made."""
    made = 0

    async def expect_refusal(call: Any) -> None:
        nonlocal made
        made += 1
        await refused(call)

    metadata = harness.metadata()
    await harness.get("sales")
    done = await harness.update(settings(last_seen="none"))
    _, streamed = await drain_stream(harness.stream(settings(group_add="contacts")))
    assert streamed is None
    await harness.stub.ListUpdateOperations(
        pb.ListUpdateOperationsRequest(instance="sales"), metadata=metadata
    )
    await harness.stub.GetUpdateOperation(
        pb.GetUpdateOperationRequest(instance="sales", operation_id=done.operation_id),
        metadata=metadata,
    )
    made += 5
    # Tokens that are not tokens, and a hash presented as one.
    for token in (WRONG_TOKEN, stranger, hash_token(ACME_TOKEN), " " + ACME_TOKEN):
        await expect_refusal(harness.get("sales", token=token))
    await expect_refusal(harness.get("support", token=SALES_TOKEN))
    # Secrets where names and ids go.
    for name in (ACME_TOKEN, hash_token(ACME_TOKEN), stranger, LONG_NAME, "\n" + ACME_TOKEN):
        await expect_refusal(harness.get(name))
    await expect_refusal(
        harness.stub.UpdatePrivacySettings(
            pb.UpdatePrivacySettingsRequest(
                instance="sales", settings=settings(status="none"), request_id=ACME_TOKEN
            ),
            metadata=metadata,
        )
    )
    await expect_refusal(
        harness.stub.GetUpdateOperation(
            pb.GetUpdateOperationRequest(instance="sales", operation_id=ACME_TOKEN),
            metadata=metadata,
        )
    )
    await expect_refusal(
        harness.stub.ListUpdateOperations(
            pb.ListUpdateOperationsRequest(instance="sales", page_token=GLOBEX_TOKEN),
            metadata=metadata,
        )
    )
    # The token in metadata the gateway does not read, beside a wrong one.
    await expect_refusal(
        harness.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance="sales"),
            metadata=(("token", WRONG_TOKEN), ("authorization", f"Bearer {ACME_TOKEN}")),
        )
    )
    return made


async def drain_stream(call: Any) -> tuple[list[Any], aio.AioRpcError | None]:
    messages: list[Any] = []
    try:
        while (message := await call.read()) is not aio.EOF:
            messages.append(message)
    except aio.AioRpcError as error:
        return messages, error
    return messages, None


async def rest_series(rest: Rest, stranger: str) -> int:
    """Calls on REST, then hostile ones; returns how many calls were made."""
    statuses: list[int] = []
    statuses.append((await rest.get("sales")).status)
    posted = await rest.post("sales", {"privacy": {"readReceipts": "none"}})
    statuses.append(posted.status)
    async with rest.client.post(
        rest.base + PATH.format("sales"),
        json={"visibility": {"profile": "contacts"}},
        headers={"token": ACME_TOKEN, "Accept": NDJSON},
    ) as response:
        await response.read()
        statuses.append(response.status)
    statuses.append((await rest.get("sales", tail="/operations")).status)
    assert statuses == [200] * 4
    hostile = [
        rest.get("sales", token=WRONG_TOKEN),
        rest.get("sales", token=stranger),
        rest.get("sales", token=hash_token(ACME_TOKEN)),
        rest.get(ACME_TOKEN),
        rest.get(hash_token(SALES_TOKEN)),
        rest.get(LONG_NAME),
        rest.get("sales", tail=f"/operations/{ACME_TOKEN}"),
        rest.get("sales", tail=f"/operations?pageToken={ACME_TOKEN}"),
        rest.get("sales", tail=f"/operations?pageSize={ACME_TOKEN}"),
        rest.post("sales", {"privacy": {"readReceipts": ACME_TOKEN}}),
        rest.post("sales", {ACME_TOKEN: {"readReceipts": "none"}}),
        rest.post(
            "sales", {"privacy": {"readReceipts": "all"}}, headers={"Idempotency-Key": ACME_TOKEN}
        ),
        rest.post_raw("sales", ACME_TOKEN.encode()),
        rest.post_raw("sales", b"{}", content_type=f"text/{ACME_TOKEN}"),
        rest.request("GET", f"/{ACME_TOKEN}"),
        rest.request("DELETE", PATH.format("sales") + f"?token={ACME_TOKEN}"),
    ]
    for call in hostile:
        assert (await call).status >= 400
    return len(statuses) + len(hostile)


async def rate_limited_series(make_gateway: GatewayFactory) -> int:
    limited: Harness = await make_gateway(rate_limit_per_minute=2)
    for _ in range(2):
        await limited.get("other", token=GLOBEX_TOKEN)
    assert await refused(limited.get("other", token=GLOBEX_TOKEN)) == "RESOURCE_EXHAUSTED"
    return 3


async def pairing_series(wa: WaGateway) -> tuple[int, list[str]]:
    """Pairs ``wa`` by QR code, abandons a pairing of ``wb`` midway; returns the calls made and
    the QR codes shown."""
    await wa.wait_state("wa", NOT_PAIRED)
    await wa.wait_state("wb", NOT_PAIRED)
    shown: list[str] = []
    call = wa.pair("wa")
    for _ in range(2):
        kind, value = pair_event(await call.read())
        assert kind == "qr_code"
        shown.append(value)
    wa.ffi.scan("wa", JID)
    messages, failure = await drain(call)
    assert failure is None
    assert pair_event(messages[-1]) == ("jid", JID)
    shown += [v for k, v in map(pair_event, messages) if k == "qr_code"]

    abandoned = wa.pair("wb")
    kind, value = pair_event(await abandoned.read())
    shown.append(value)
    abandoned.cancel()
    refused_pairs = [wa.pair("wb", token=WRONG_TOKEN), wa.pair("wb", phone=ACME_TOKEN)]
    for pairing in refused_pairs:
        _, error = await drain(pairing)
        assert error is not None
        assert error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)
    return 4, shown


async def test_no_token_token_hash_or_qr_code_reaches_the_logs(
    rest: Rest,
    make_gateway: GatewayFactory,
    start_whatsapp: StartWhatsApp,
    every_line: Captured,
) -> None:
    stranger = new_token()
    ffi = StandInFFI(timing=Timing(latency=0.01, qr_lifetimes=(0.3, 0.2)))
    wa = await start_whatsapp(ffi, "wa", "wb")

    made = await grpc_series(rest.harness, stranger)
    made += await rest_series(rest, stranger)
    made += await rate_limited_series(make_gateway)
    pairs, qr_codes = await pairing_series(wa)
    made += pairs
    # ``wait_state`` polls GetInstance, as often as it takes: those calls are not counted.
    calls = await every_line.calls_ended(made, besides=INSTANCES + "GetInstance")

    assert len(calls) == made, [c["method"] for c in calls]
    assert len(qr_codes) >= 3
    assert all(code.startswith("2@standin-qr-") for code in qr_codes)
    tokens = [ACME_TOKEN, SALES_TOKEN, GLOBEX_TOKEN, WRONG_TOKEN, stranger]
    hashes = [hash_token(token) for token in tokens]
    forbidden = [*tokens, *hashes, *(h[:8] for h in hashes), *qr_codes, "standin-qr"]
    logged = every_line.everything()
    for secret in forbidden:
        assert secret not in logged, f"{secret!r} was logged"
    for line in logged.splitlines():
        assert len(line) <= MAX_LINE, line[:200]
    # What the test looked at: each call's line, the unknown names among them, QR pairing.
    assert {c["instance"] for c in calls} >= {"sales", "(unknown)", "wa", "wb", "other"}
    assert {c["caller"] for c in calls} >= {None, "account:acme", "instance:sales"}
    assert "RESOURCE_EXHAUSTED" in {c["status"] for c in calls}
    assert "CANCELLED" in {c["status"] for c in calls}
    assert json.dumps(calls).isascii()
