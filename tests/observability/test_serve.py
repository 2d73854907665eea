"""``privacy-gateway serve`` as operators run it: JSON lines on stderr when it is not a terminal,
``log_format`` to choose, and ``/metrics`` on the REST port or on ``metrics_listen``'s own."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request

import grpc

from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from tests.helpers.cli import cli_env
from tests.helpers.observability import CALL_FIELDS, GET, Exposition
from tests.helpers.one_gateway import REST_LISTENING, TOKEN, serve_args
from tests.helpers.processes import TIMEOUT, GatewayProcess, StartServe

METRICS_LISTENING = r"^privacy-gateway: metrics on http://127\.0\.0\.1:(\d+)/metrics$"
GRPC_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ ")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str) -> tuple[int, str]:
    try:
        with _NO_PROXY.open(url, timeout=TIMEOUT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def call_demo(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.address) as channel:
        pb_grpc.PrivacyServiceStub(channel).GetPrivacySettings(
            pb.GetPrivacySettingsRequest(instance="demo"),
            metadata=(("token", TOKEN),),
            timeout=TIMEOUT,
        )


def test_serve_writes_json_lines_and_serves_metrics_on_the_rest_port(
    start_serve: StartServe,
) -> None:
    gateway = start_serve(*serve_args(), env=cli_env())
    rest_port = int(gateway.read_until(REST_LISTENING).group(1))

    call_demo(gateway)
    status, text = fetch(f"http://127.0.0.1:{rest_port}/metrics")
    assert gateway.stop(signal.SIGTERM) == 0

    assert status == 200
    assert Exposition(text, "").value("privacy_gateway_calls_total", method=GET, code="OK") == 1
    # Every line but grpc's core's own (absl's ``I1202 00:00:00.000000 ...``, not Python's).
    python_lines = [x for x in gateway.stderr().splitlines() if not GRPC_CORE_LINE.match(x)]
    entries = [json.loads(line) for line in python_lines]
    (call,) = [e for e in entries if e["logger"] == "service.calls"]
    assert list(call) == ["time", "level", "logger", "message", *CALL_FIELDS]
    assert (call["method"], call["instance"], call["status"]) == (GET, "demo", "OK")
    assert any(e["message"] == "stopped" for e in entries)


def test_metrics_listen_moves_metrics_to_their_own_port_and_text_logs_on_request(
    start_serve: StartServe,
) -> None:
    env = cli_env(PRIVACY_GATEWAY_METRICS_LISTEN="127.0.0.1:0", PRIVACY_GATEWAY_LOG_FORMAT="text")
    gateway = start_serve(*serve_args(), env=env)
    rest_port = int(gateway.read_until(REST_LISTENING).group(1))
    metrics_port = int(gateway.read_until(METRICS_LISTENING).group(1))

    call_demo(gateway)
    own = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
    on_rest = fetch(f"http://127.0.0.1:{rest_port}/metrics")
    assert gateway.stop(signal.SIGTERM) == 0

    assert own[0] == 200
    assert Exposition(own[1], "").value("privacy_gateway_calls_total", method=GET, code="OK") == 1
    assert on_rest[0] == 404
    lines = gateway.stderr().splitlines()
    (line,) = [x for x in lines if f" service.calls: {GET} " in x]
    assert f" INFO service.calls: {GET} OK edge=grpc instance=demo caller=account:demo " in line
    # A path the REST app does not serve (there) is a call like any other.
    assert any(" service.calls: GET (unmatched) NOT_FOUND " in x for x in lines)
