"""The operation journal outlives the gateway process: real ``privacy-gateway serve`` processes.

A gateway stopped with SIGTERM and started again on the same ``data_dir`` still answers
GetUpdateOperation with the same record; one killed with SIGKILL mid-update leaves the operation
readable after the restart as INTERRUPTED, with the fields it had applied.

Every process a test starts is stopped by the ``gateway_processes`` fixture's teardown, and every
wait has a timeout.
"""

from __future__ import annotations

import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from service.grpc.convert import field_from_proto, settings_from_proto, settings_to_proto
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import Field, Settings
from tests.helpers.journal_restart import StartGateway, write_config
from tests.helpers.processes import TIMEOUT, GatewayProcess
from tests.helpers.updates import FIVE_CHANGES

TOKEN = "journal-restart-token"


def _write_config(tmp_path: Path, data_dir: Path, latency_ms: int) -> Path:
    return write_config(tmp_path, data_dir, token=TOKEN, latency_ms=latency_ms)


@dataclass
class Client:
    channel: grpc.Channel
    stub: pb_grpc.PrivacyServiceStub

    @classmethod
    def to(cls, gateway: GatewayProcess) -> Client:
        channel = grpc.insecure_channel(gateway.address)
        return cls(channel, pb_grpc.PrivacyServiceStub(channel))

    def get_operation(self, operation_id: str) -> pb.UpdateOperation:
        response = self.stub.GetUpdateOperation(
            pb.GetUpdateOperationRequest(instance="sales", operation_id=operation_id),
            metadata=(("token", TOKEN),),
            timeout=TIMEOUT,
        )
        return response.operation

    def list_operations(self) -> list[pb.UpdateOperation]:
        response = self.stub.ListUpdateOperations(
            pb.ListUpdateOperationsRequest(instance="sales", page_size=100),
            metadata=(("token", TOKEN),),
            timeout=TIMEOUT,
        )
        assert response.next_page_token == ""
        return list(response.operations)

    def settings(self) -> Settings:
        response = self.stub.GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance="sales"),
            metadata=(("token", TOKEN),),
            timeout=TIMEOUT,
        )
        return settings_from_proto(response.settings)

    def close(self) -> None:
        self.channel.close()


def _update_request(settings: Settings, request_id: str) -> pb.UpdatePrivacySettingsRequest:
    return pb.UpdatePrivacySettingsRequest(
        instance="sales", settings=settings_to_proto(settings), request_id=request_id
    )


def test_the_journal_survives_a_restart(
    tmp_path: Path, data_dir: Path, gateway_processes: StartGateway
) -> None:
    config = _write_config(tmp_path, data_dir, latency_ms=10)
    request_id = str(uuid.uuid4())
    first = gateway_processes(config)
    client = Client.to(first)
    try:
        response = client.stub.UpdatePrivacySettings(
            _update_request(FIVE_CHANGES, request_id),
            metadata=(("token", TOKEN),),
            timeout=TIMEOUT,
        )
        before = client.get_operation(response.operation_id)
        listed_before = client.list_operations()
    finally:
        client.close()
    assert before.state == pb.OPERATION_STATE_COMPLETED

    assert first.stop(signal.SIGTERM) == 0, first.stderr()
    assert (data_dir / "journal.db").is_file()
    second = gateway_processes(config)
    client = Client.to(second)
    try:
        after = client.get_operation(response.operation_id)
        listed_after = client.list_operations()
        retried = client.stub.UpdatePrivacySettings(
            _update_request(FIVE_CHANGES, request_id),
            metadata=(("token", TOKEN),),
            timeout=TIMEOUT,
        )
        # The new process's simulated account starts afresh: the retry sent nothing.
        held = client.settings()
    finally:
        client.close()

    assert after == before
    assert after.request_id == request_id
    assert settings_from_proto(after.settings) == Settings({**DEFAULT_SETTINGS, **FIVE_CHANGES})
    assert [o.id for o in listed_after] == [o.id for o in listed_before] == [after.id]
    assert listed_after == listed_before
    assert retried.operation_id == response.operation_id
    assert list(retried.fields) == list(response.fields)
    assert retried.settings == response.settings
    assert held == DEFAULT_SETTINGS


def _kill_after_two_applied(gateway: GatewayProcess, request_id: str) -> tuple[str, list[Field]]:
    """Streams FIVE_CHANGES and SIGKILLs the gateway once the second field is reported APPLIED;
    returns the operation's id and the fields the stream reported applied."""
    client = Client.to(gateway)
    operation_id = ""
    reported: list[Field] = []
    call = client.stub.StreamUpdatePrivacySettings(
        pb.StreamUpdatePrivacySettingsRequest(
            instance="sales", settings=settings_to_proto(FIVE_CHANGES), request_id=request_id
        ),
        metadata=(("token", TOKEN),),
        timeout=TIMEOUT,
    )
    try:
        for message in call:
            if message.WhichOneof("event") == "plan":
                operation_id = message.plan.operation_id
            elif message.field.state == pb.FIELD_STATE_APPLIED:
                reported.append(field_from_proto(message.field.field))
                if len(reported) == 2:
                    gateway.process.kill()
                    break
        assert gateway.process.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        call.cancel()
        client.close()
    return operation_id, reported


def test_a_killed_gateway_leaves_the_operation_interrupted(
    tmp_path: Path, data_dir: Path, gateway_processes: StartGateway
) -> None:
    config = _write_config(tmp_path, data_dir, latency_ms=300)
    request_id = str(uuid.uuid4())
    operation_id, reported = _kill_after_two_applied(gateway_processes(config), request_id)
    assert operation_id
    assert reported == list(FIVE_CHANGES)[:2]

    client = Client.to(gateway_processes(config))
    try:
        operation = client.get_operation(operation_id)
        listed = client.list_operations()
        with pytest.raises(grpc.RpcError) as retried:
            client.stub.UpdatePrivacySettings(
                _update_request(FIVE_CHANGES, request_id),
                metadata=(("token", TOKEN),),
                timeout=TIMEOUT,
            )
        held = client.settings()
    finally:
        client.close()

    assert operation.state == pb.OPERATION_STATE_INTERRUPTED
    assert operation.request_id == request_id
    assert operation.requested == settings_to_proto(FIVE_CHANGES)
    applied = [field_from_proto(u.field) for u in operation.fields]
    assert [u.state for u in operation.fields] == [pb.FIELD_STATE_APPLIED] * len(applied)
    assert 2 <= len(applied) <= 3, f"{len(applied)} fields recorded"
    assert applied == list(FIVE_CHANGES)[: len(applied)]
    assert applied[:2] == reported
    assert all(u.HasField("elapsed") for u in operation.fields)
    assert not operation.HasField("settings"), "an interrupted update has no settings after"
    assert operation.error_reason == "INTERRUPTED"
    assert operation.error_message
    assert operation.HasField("start_time")
    assert operation.HasField("end_time")
    assert operation.end_time.ToNanoseconds() >= operation.start_time.ToNanoseconds()
    assert [o.id for o in listed] == [operation_id]
    assert listed[0] == operation
    # A retry returns the recorded outcome and sends nothing (the fresh account is untouched).
    error = retried.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == operation.error_message
    assert held == DEFAULT_SETTINGS
