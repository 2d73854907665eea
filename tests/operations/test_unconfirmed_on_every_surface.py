"""A stanza whose answer was lost, as every surface tells it: stream, unary, journal, REST.

The simulated session plays whatsmeow's ``info query timed out`` (errors.go:21) with
``lose_answer``; its ``confirm`` is the re-read from WhatsApp itself. The same rules hold for the
WhatsApp session (``test_whatsapp_stanza_fates``); here they are checked on each edge.
"""

from __future__ import annotations

import json
from typing import Any

from grpc import aio
from grpc_status import rpc_status

from service.grpc.convert import field_from_proto, settings_to_proto
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.settings import Field, Settings
from tests.helpers.harness import Harness
from tests.helpers.rest_client import serving
from tests.helpers.rich_status import error_info, update_response


def _states(fields: Any) -> list[tuple[str, str]]:
    return [
        (field_from_proto(f.field).value, pb.FieldState.Name(f.state).removeprefix("FIELD_STATE_"))
        for f in fields
    ]


async def test_the_stream_and_the_journal_show_the_lost_answer_and_its_resolution(
    gateway: Harness,
) -> None:
    gateway.session().lose_answer(Field.LAST_SEEN, applied=True)

    messages = [
        m async for m in gateway.stream(settings_to_proto(Settings({Field.LAST_SEEN: "none"})))
    ]

    fields = [m.field for m in messages if m.WhichOneof("event") == "field"]
    assert _states(fields) == [
        ("last_seen", "STARTED"),
        ("last_seen", "UNCONFIRMED"),
        ("last_seen", "APPLIED"),
    ]
    assert fields[1].error == "info query timed out"
    assert fields[2].error == "info query timed out; a re-read shows none"
    operation = (
        await gateway.stub.GetUpdateOperation(
            pb.GetUpdateOperationRequest(
                instance="sales", operation_id=messages[0].plan.operation_id
            ),
            metadata=gateway.metadata(),
        )
    ).operation
    assert pb.OperationState.Name(operation.state) == "OPERATION_STATE_COMPLETED"
    assert _states(operation.fields) == [("last_seen", "UNCONFIRMED"), ("last_seen", "APPLIED")]


async def test_the_unary_reply_carries_both_outcomes(gateway: Harness) -> None:
    gateway.session().lose_answer(Field.LAST_SEEN, applied=False)

    try:
        await gateway.update(settings_to_proto(Settings({Field.LAST_SEEN: "none"})))
    except aio.AioRpcError as error:
        status = rpc_status.from_call(error)
        assert status is not None
        assert error_info(status).reason == "CONNECTION_LOST"
        assert _states(update_response(status).fields) == [
            ("last_seen", "UNCONFIRMED"),
            ("last_seen", "FAILED"),
        ]
    else:
        raise AssertionError("the update succeeded")
    assert gateway.session().server_settings[Field.LAST_SEEN] == "all"


async def test_rest_lists_the_unconfirmed_outcome_in_the_json_and_ndjson_forms(
    gateway: Harness,
) -> None:
    async with serving(gateway) as rest:
        gateway.session().lose_answer(Field.LAST_SEEN, applied=True)
        reply = await rest.post("sales", {"visibility": {"lastSeen": "none"}})
        assert reply.status == 200
        gateway.session().lose_answer(Field.STATUS, applied=True)
        async with rest.client.post(
            f"{rest.base}/api/profile/privacy/sales",
            json={"visibility": {"status": "none"}},
            headers={"token": gateway.token, "Accept": "application/x-ndjson"},
        ) as response:
            lines = [line async for line in response.content]
    events = [json.loads(line) for line in lines if line.strip()]
    states = [(e["field"], e["state"]) for e in events if e["event"] == "field"]
    assert states == [
        ("visibility.status", "STARTED"),
        ("visibility.status", "UNCONFIRMED"),
        ("visibility.status", "APPLIED"),
    ]
