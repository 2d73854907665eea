"""Client commands: call a running gateway and show what happens, field by field."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

import grpc
import segno
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.engine import FieldState
from service.grpc import convert
from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import instance_service_pb2_grpc as instance_grpc
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2_grpc as pb_grpc
from service.settings import FIELDS, Settings
from service.tls import PemError, Role, certificates, key_pair

_STATE_WORDS = {
    FieldState.STARTED: "sending",
    FieldState.APPLIED: "applied",
    FieldState.UNCHANGED: "unchanged (already set, no stanza)",
    FieldState.FAILED: "FAILED",
    FieldState.NOT_ATTEMPTED: "not attempted",
    FieldState.RESTORE_STARTED: "restoring",
    FieldState.RESTORED: "restored",
    FieldState.RESTORE_FAILED: "RESTORE FAILED",
    FieldState.UNCONFIRMED: "UNCONFIRMED (sent, answer lost)",
}


def get(args: argparse.Namespace) -> int:
    with _channel(args) as (stub, metadata):
        try:
            response = stub.GetPrivacySettings(
                pb.GetPrivacySettingsRequest(instance=args.instance), metadata=metadata
            )
        except grpc.RpcError as error:
            return _report(error, args)
    print_settings(convert.settings_from_proto(response.settings))
    return 0


def set_(args: argparse.Namespace) -> int:
    requested = {spec.field: getattr(args, spec.proto_name) for spec in FIELDS}
    wanted = Settings({f: v for f, v in requested.items() if v is not None})
    if not wanted:
        flags = " ".join(f"--{s.proto_name.replace('_', '-')}" for s in FIELDS)
        print(f"privacy-gateway set: give at least one of {flags}", file=sys.stderr)
        return 2
    request = pb.StreamUpdatePrivacySettingsRequest(
        instance=args.instance, settings=convert.settings_to_proto(wanted)
    )
    with _channel(args) as (stub, metadata):
        try:
            for message in stub.StreamUpdatePrivacySettings(request, metadata=metadata):
                _print_event(message)
        except grpc.RpcError as error:
            return _report(error, args)
    return 0


def health(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        # The published stubs for grpc_health leave HealthStub's methods out.
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        except grpc.RpcError as error:
            return _report(error, args)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def print_settings(settings: Settings, out: TextIO = sys.stdout) -> None:
    """The settings as a table, in the field table's order."""
    print(f"{'section':<12} {'field':<14} value", file=out)
    for spec in FIELDS:
        value = settings.get(spec.field, "(unknown)")
        print(f"{spec.section:<12} {spec.proto_name:<14} {value}", file=out)


def _print_event(message: pb.StreamUpdatePrivacySettingsResponse) -> None:
    kind = message.WhichOneof("event")
    if kind == "plan":
        plan = message.plan
        print(f"plan: {len(plan.fields)} field(s), {plan.stanzas} stanza(s) to send", flush=True)
        for step in plan.fields:
            field = convert.field_from_proto(step.field)
            current = convert.value_from_proto(field, step.current)
            target = convert.value_from_proto(field, step.target)
            print(f"  {field.value:<14} {current} -> {target}", flush=True)
    elif kind == "field":
        update = message.field
        field = convert.field_from_proto(update.field)
        state = convert.state_from_proto(update.state)
        line = f"{field.value:<14} {_STATE_WORDS[state]}"
        if state in {FieldState.APPLIED, FieldState.FAILED}:
            line += f" {convert.value_from_proto(field, update.value)}"
            line += f" ({update.elapsed.ToMilliseconds()} ms)"
        if update.error and state is not FieldState.NOT_ATTEMPTED:
            line += f": {update.error}"
        print(line, flush=True)
    elif kind == "snapshot":
        print("\nsettings now:")
        print_settings(convert.settings_from_proto(message.snapshot))


def _report(error: grpc.RpcError, args: argparse.Namespace) -> int:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    print(f"error: {code.name if code else 'UNKNOWN'}: {details}", file=sys.stderr)
    if code == grpc.StatusCode.UNAVAILABLE:
        # grpc's words for a refused handshake are about sockets ("Socket closed"): say what to
        # check (a gateway that is not running reads the same to grpc).
        if _uses_tls(args):
            hint = "if it runs, the TLS handshake failed: check --ca-file, --cert-file, --key-file"
        else:
            hint = "if it runs and serves TLS, give --ca-file (for mutual TLS, --cert-file too)"
        print(f"privacy-gateway: cannot reach {args.address}; {hint}", file=sys.stderr)
    return 1


_TLS_FLAGS: dict[Role, str] = {"ca": "--ca-file", "cert": "--cert-file", "key": "--key-file"}


def _tls_files(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    """--ca-file, --cert-file and --key-file (or their environment variables); None: not given."""
    return args.ca_file or None, args.cert_file or None, args.key_file or None


def _uses_tls(args: argparse.Namespace) -> bool:
    return any(_tls_files(args))


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``args.address``: over TLS when any of the TLS options is given.

    A file that cannot be used ends the command with a one-line usage error (exit 2).
    """
    credentials = _credentials(args)
    if credentials is None:
        return grpc.insecure_channel(args.address)
    return grpc.secure_channel(args.address, credentials)


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    ca_file, cert_file, key_file = _tls_files(args)
    if (cert_file is None) != (key_file is None):
        _usage_error("--cert-file and --key-file go together (a certificate and its private key)")
    if ca_file is None and cert_file is None:
        return None
    try:
        # Without --ca-file the gateway's certificate is checked against the system's CAs.
        root = certificates(ca_file, "ca") if ca_file is not None else None
        chain, key = (None, None)
        if cert_file is not None and key_file is not None:
            chain, key = key_pair(cert_file, key_file)
    except PemError as exc:
        _usage_error(f"{_TLS_FLAGS[exc.role]}: {exc}")
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )


def _usage_error(message: str) -> NoReturn:
    print(f"privacy-gateway: {message}", file=sys.stderr)
    raise SystemExit(2)


Metadata = tuple[tuple[str, str], ...]


@contextmanager
def _connection(args: argparse.Namespace) -> Iterator[tuple[grpc.Channel, Metadata]]:
    """A channel to the gateway, and the token metadata for calls on it."""
    if not args.token:
        _usage_error("--token (or PRIVACY_GATEWAY_TOKEN) is required")
    with open_channel(args) as channel:
        yield channel, (("token", str(args.token)),)


@contextmanager
def _channel(args: argparse.Namespace) -> Iterator[tuple[pb_grpc.PrivacyServiceStub, Metadata]]:
    """A PrivacyService stub on a channel to the gateway, and the token metadata."""
    with _connection(args) as (channel, metadata):
        yield pb_grpc.PrivacyServiceStub(channel), metadata


def instances(args: argparse.Namespace) -> int:
    with _connection(args) as (channel, metadata):
        try:
            response = instance_grpc.InstanceServiceStub(channel).ListInstances(
                instance_pb.ListInstancesRequest(), metadata=metadata
            )
        except grpc.RpcError as error:
            return _report(error, args)
    print(f"{'instance':<16} {'account':<12} {'kind':<10} {'state':<15} {'since':<20} detail")
    for item in response.instances:
        kind = instance_pb.SessionKind.Name(item.kind).removeprefix("SESSION_KIND_").lower()
        state = instance_pb.InstanceState.Name(item.state).removeprefix("INSTANCE_STATE_")
        since = item.state_since.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        connected = item.state == instance_pb.INSTANCE_STATE_CONNECTED
        detail = item.jid if connected or not item.last_error else item.last_error
        if item.HasField("retry_time"):
            retry = item.retry_time.ToDatetime(tzinfo=UTC).astimezone()
            detail += f" (next attempt {retry:%Y-%m-%d %H:%M:%S})"
        print(f"{item.name:<16} {item.account:<12} {kind:<10} {state:<15} {since:<20} {detail}")
    return 0


def pair(args: argparse.Namespace) -> int:
    request = instance_pb.PairInstanceRequest(instance=args.instance, phone=args.phone or "")
    with _connection(args) as (channel, metadata):
        stub = instance_grpc.InstanceServiceStub(channel)
        try:
            for message in stub.PairInstance(request, metadata=metadata):
                kind = message.WhichOneof("event")
                if kind == "qr_code":
                    print("\nScan with WhatsApp > Settings > Linked devices > Link a device:")
                    segno.make(message.qr_code, error="l").terminal(compact=True)
                    print("(a new code replaces this one in a few seconds)", flush=True)
                elif kind == "pairing_code":
                    print(
                        "On the phone: WhatsApp > Settings > Linked devices > Link a device >\n"
                        f"Link with phone number instead, and enter: {message.pairing_code}",
                        flush=True,
                    )
                elif kind == "jid":
                    print(f"paired: {args.instance} is now linked as {message.jid}")
        except grpc.RpcError as error:
            return _report(error, args)
    return 0


def watch(args: argparse.Namespace) -> int:
    request = pb.WatchPrivacySettingsRequest(instance=args.instance)
    with _channel(args) as (stub, metadata):
        try:
            for message in stub.WatchPrivacySettings(request, metadata=metadata):
                settings = convert.settings_from_proto(message.settings)
                if message.source == pb.CHANGE_SOURCE_INITIAL:
                    print_settings(settings)
                    print("\nwatching for changes (Ctrl+C to stop)", flush=True)
                    continue
                source = pb.ChangeSource.Name(message.source).removeprefix("CHANGE_SOURCE_")
                stamp = datetime.now().strftime("%H:%M:%S")
                for number in message.changed:
                    field = convert.field_from_proto(number)
                    print(f"{stamp} {source.lower():<8} {field.value:<14} -> {settings[field]}")
                sys.stdout.flush()
        except grpc.RpcError as error:
            return _report(error, args)
    return 0
