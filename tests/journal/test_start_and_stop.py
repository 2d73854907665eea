"""The journal at the gateway's start and stop: real ``privacy-gateway serve`` processes.

At start, a journal that cannot be used (not a database, or locked by another process) stops
the gateway with one line and exit code 2, before any port is bound. At stop, an update the
shutdown cuts is journaled as the gateway's doing (SHUTTING_DOWN), not as its caller's cancel,
and its caller hears what was applied.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from grpc_status import rpc_status

from service.grpc.convert import settings_to_proto
from service.http.body import settings_json
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.sessions.simulated import DEFAULT_SETTINGS
from service.settings import Settings
from tests.helpers.faults import JournalLock
from tests.helpers.journal_restart import StartGateway, write_config
from tests.helpers.processes import TIMEOUT, held_ports, port_is_free, stripped_env
from tests.helpers.rich_status import error_info, update_response
from tests.helpers.updates import FIVE_CHANGES

TOKEN = "start-and-stop-token"
REST_LISTENING = r"^privacy-gateway: REST listening on (http://127\.0\.0\.1:\d+)$"
METADATA = (("token", TOKEN),)


def _config(
    tmp_path: Path,
    data_dir: Path,
    *,
    listen: str,
    latency_ms: int,
    grace: float,
    http_listen: str = "",
) -> Path:
    return write_config(
        tmp_path, data_dir, token=TOKEN, latency_ms=latency_ms, listen=listen,
        http_listen=http_listen, grace=grace,
    )  # fmt: skip


def _ports_config(tmp_path: Path, data_dir: Path, grpc_port: int, rest_port: int) -> Path:
    return _config(
        tmp_path, data_dir, listen=f"127.0.0.1:{grpc_port}", latency_ms=0, grace=1,
        http_listen=f"127.0.0.1:{rest_port}",
    )  # fmt: skip


def _serve_refused(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli.main", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=stripped_env(),
        check=False,
    )


def test_a_journal_that_is_not_a_database_stops_the_start_in_one_line(tmp_path: Path) -> None:
    """Its gRPC and REST ports are held meanwhile (``held_ports``): had the gateway bound either
    before opening the journal, its one line would name that port instead."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "journal.db").write_bytes(b"this is not a SQLite database, but it is 64 bytes" * 4)

    with held_ports(2) as (grpc_port, rest_port):
        done = _serve_refused(_ports_config(tmp_path, data_dir, grpc_port, rest_port))

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"privacy-gateway: journal {data_dir / 'journal.db'}: ")
    assert "move it aside" in lines[0]
    assert port_is_free(grpc_port)
    assert port_is_free(rest_port)


def test_a_journal_locked_by_another_process_stops_the_start_in_one_line(tmp_path: Path) -> None:
    """Its ports are held meanwhile, as above: the one line is the journal's, not a port's."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    async def refused_while_locked(config: Path) -> subprocess.CompletedProcess[str]:
        lock = JournalLock(data_dir / "journal.db")
        await lock.take()
        try:
            return await asyncio.to_thread(_serve_refused, config)
        finally:
            await lock.release()

    with held_ports(2) as (grpc_port, rest_port):
        config = _ports_config(tmp_path, data_dir, grpc_port, rest_port)
        done = asyncio.run(refused_while_locked(config))

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"privacy-gateway: journal {data_dir / 'journal.db'}: ")
    assert "database is locked" in lines[0]
    assert "another process holds it" in lines[0]
    assert port_is_free(grpc_port)
    assert port_is_free(rest_port)


def test_an_update_cut_by_shutdown_is_journaled_as_the_shutdown_and_its_caller_told(
    tmp_path: Path, gateway_processes: StartGateway
) -> None:
    data_dir = tmp_path / "data"
    config = _config(tmp_path, data_dir, listen="127.0.0.1:0", latency_ms=600, grace=1.5)
    gateway = gateway_processes(config)
    channel = grpc.insecure_channel(gateway.address)
    stub = pb_grpc.PrivacyServiceStub(channel)
    try:
        call = stub.StreamUpdatePrivacySettings(
            pb.StreamUpdatePrivacySettingsRequest(
                instance="sales", settings=settings_to_proto(FIVE_CHANGES)
            ),
            metadata=METADATA,
            timeout=TIMEOUT,
        )
        messages = [next(call)]  # the plan
        messages.append(next(call))  # the first field STARTED: its stanza is out
        gateway.process.send_signal(signal.SIGTERM)
        try:
            messages.extend(call)
        except grpc.RpcError as cut:
            error = cut
        else:
            raise AssertionError("the update ended without an error")
    finally:
        channel.close()
    assert gateway.process.wait(timeout=TIMEOUT) == 0, gateway.stderr()

    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    assert error_info(status).reason == "SHUTTING_DOWN"
    told = update_response(status)
    applied = [f for f in told.fields if f.state == pb.FIELD_STATE_APPLIED]
    assert applied, "the stanza in flight finished and was reported"
    assert {f.state for f in told.fields} <= {pb.FIELD_STATE_APPLIED, pb.FIELD_STATE_NOT_ATTEMPTED}

    again = gateway_processes(config)
    channel = grpc.insecure_channel(again.address)
    try:
        operation = (
            pb_grpc.PrivacyServiceStub(channel)
            .GetUpdateOperation(
                pb.GetUpdateOperationRequest(
                    instance="sales", operation_id=messages[0].plan.operation_id
                ),
                metadata=METADATA,
                timeout=TIMEOUT,
            )
            .operation
        )
    finally:
        channel.close()
    assert operation.state == pb.OPERATION_STATE_FAILED
    assert operation.error_reason == "SHUTTING_DOWN"
    assert [(f.field, f.state) for f in operation.fields] == [
        (f.field, f.state) for f in told.fields
    ]


def _http(base: str, method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
    """One REST call on a gateway process (``http.client``: the test is not async)."""
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=TIMEOUT)
    try:
        headers = {"token": TOKEN, "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body)
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        assert response.getheader("Content-Type", "").startswith("application/json")
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_rest_update_cut_by_shutdown_names_its_live_fields_in_the_envelope(
    tmp_path: Path, gateway_processes: StartGateway
) -> None:
    """REST's caller of an update the shutdown cuts is told, in the envelope, the reason, the
    operation and which fields are live; the journal says the same after a restart."""
    data_dir = tmp_path / "data"
    config = write_config(
        tmp_path, data_dir, token=TOKEN, latency_ms=600, listen="127.0.0.1:0",
        http_listen="127.0.0.1:0", grace=1.5,
    )  # fmt: skip
    gateway = gateway_processes(config)
    base = gateway.read_until(REST_LISTENING).group(1)
    path = "/api/profile/privacy/sales"
    with ThreadPoolExecutor(1) as pool:
        posted = pool.submit(_http, base, "POST", path, settings_json(FIVE_CHANGES))
        # The first field is journaled APPLIED: the second stanza is out when the signal comes.
        deadline = time.monotonic() + TIMEOUT
        while True:
            status, listed = _http(base, "GET", f"{path}/operations")
            assert status == 200, listed
            running = listed["operations"]
            if running and any(f["state"] == "APPLIED" for f in running[0]["fields"]):
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.05)
        gateway.process.send_signal(signal.SIGTERM)
        status, body = posted.result(timeout=TIMEOUT)
    assert gateway.process.wait(timeout=TIMEOUT) == 0, gateway.stderr()

    assert status == 500, body
    assert body["success"] is False
    assert body["error"]["reason"] == "SHUTTING_DOWN"
    states = [f["state"] for f in body["fields"]]
    applied = states.count("APPLIED")
    assert applied >= 1
    assert states == ["APPLIED"] * applied + ["NOT_ATTEMPTED"] * (len(states) - applied)
    assert len(states) == len(FIVE_CHANGES)
    fields = list(FIVE_CHANGES)
    if applied < len(fields):
        assert body["error"]["message"] == (
            f"the gateway is shutting down before updating {fields[applied].spec.rest_name} privacy"
        )
    live = Settings({**DEFAULT_SETTINGS, **{f: FIVE_CHANGES[f] for f in fields[:applied]}})
    assert body["settings"] == settings_json(live)
    assert body["operationId"] == running[0]["id"]

    again = gateway_processes(config)
    base = again.read_until(REST_LISTENING).group(1)
    status, read = _http(base, "GET", f"{path}/operations/{body['operationId']}")
    assert status == 200, read
    operation = read["operation"]
    assert operation["state"] == "FAILED"
    assert operation["error"]["reason"] == "SHUTTING_DOWN"
    assert [(f["field"], f["state"]) for f in operation["fields"]] == [
        (f["field"], f["state"]) for f in body["fields"]
    ]
    assert operation["settings"] == body["settings"]
