"""Hostile callers on gRPC: random bytes as request messages, random values in every field, random
metadata, against every method of the gateway's two services.

Each example sends a batch of calls (unary ones at once, streams one by one, each stream read to
its first message or its error); each answer is judged (``tests.helpers.hostile.Judge``): no
crash (UNKNOWN, INTERNAL, a traceback or an ERROR in the log), no code that is not the
catalogue's for its reason, no token and no unbounded echo in the answer, its trailers or the
log, and nothing reaching WhatsApp. Updates are sent as dry runs (``validate_only``), so that a
valid one changes nothing either. The summary line is printed at the end of the run (and with
``-s`` as each test ends) and is the assertion's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.proto.wagateway.privacy.v1 import instance_service_pb2 as instance_pb
from service.proto.wagateway.privacy.v1 import privacy_service_pb2 as pb
from tests.helpers.hostile import INSTANCES, TOKENS, GatewayThread, Judge

EXAMPLES = 250
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Method:
    path: str
    streaming: bool
    request: type[Message]


def _methods() -> list[Method]:
    services = (
        pb.DESCRIPTOR.services_by_name["PrivacyService"],
        instance_pb.DESCRIPTOR.services_by_name["InstanceService"],
    )
    return [
        Method(f"/{s.full_name}/{m.name}", m.server_streaming, GetMessageClass(m.input_type))
        for s in services
        for m in s.methods
    ]


METHODS = _methods()

_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_token = st.sampled_from([*TOKENS, "wrong-token", ""]) | st.text(_ascii, max_size=80)
_metadata_entry = (
    st.tuples(st.just("token"), _token)
    | st.tuples(
        st.from_regex(r"x-[a-z0-9_.-]{1,16}", fullmatch=True), st.text(_ascii, max_size=120)
    )
    | st.tuples(st.from_regex(r"x-[a-z0-9]{1,8}-bin", fullmatch=True), st.binary(max_size=64))
)
_with_a_token = st.tuples(st.sampled_from(TOKENS), st.lists(_metadata_entry, max_size=2)).map(
    lambda drawn: [("token", drawn[0]), *drawn[1]]
)
#: Mostly a token the gateway knows, so that calls get past authentication to what they send.
_metadata = st.one_of(
    _with_a_token, _with_a_token, _with_a_token, st.lists(_metadata_entry, max_size=4)
)
#: Text of any kind: control characters, line breaks, other scripts, long.
_text = st.one_of(
    st.sampled_from([*INSTANCES, "", "nope"]),
    st.text(max_size=64),
    st.text(min_size=65, max_size=2000),
)


def _field_value(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _text
    if field.type == FieldDescriptor.TYPE_BOOL:
        # Updates are dry runs, so that whatever passes reaches no WhatsApp session.
        return st.just(True) if field.name == "validate_only" else st.booleans()
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(field.message_type)
    if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return st.integers(-(2**63), 2**63 - 1)
    # int32 and enums (open in proto3): the valid numbers often, any other too.
    return st.integers(-2, 8) | st.integers(-(2**31), 2**31 - 1)


def _message(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    kind = GetMessageClass(descriptor)
    fields = {
        f.name: _field_value(f)
        for f in descriptor.fields
        if not f.is_repeated and f.containing_oneof is None
    }
    return st.fixed_dictionaries(fields).map(lambda values: kind(**values))


def _valid_bytes(method: Method) -> st.SearchStrategy[bytes]:
    return _message(method.request.DESCRIPTOR).map(lambda m: m.SerializeToString())


def _mutated(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` cut, grown, or with bytes overwritten: mostly not a message any more."""
    how = data.draw(st.sampled_from(["cut", "grow", "overwrite", "as is"]))
    if how == "cut" and raw:
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if how == "grow":
        return raw + data.draw(st.binary(min_size=1, max_size=64))
    if how == "overwrite" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at + 8 :]
    return raw


@dataclass
class Call:
    method: Method
    body: bytes
    metadata: list[tuple[str, str | bytes]]

    def sent(self) -> list[str]:
        """What the caller sent as text, as the gateway could echo it: metadata values and every
        string of the message, if it is one."""
        texts = [v for _, v in self.metadata if isinstance(v, str)]
        try:
            message = self.method.request.FromString(self.body)
        except DecodeError:
            return texts
        return texts + list(_strings(message))


def _strings(message: Message) -> Iterator[str]:
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            yield value
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _strings(value)


def _send(channel: grpc.Channel, judge: Judge, calls: list[Call]) -> None:
    """Sends the batch and judges each answer, then whether anything reached WhatsApp."""
    mark = judge.logs.mark()
    pending = []
    for call in calls:
        if call.method.streaming:
            continue
        unary = channel.unary_unary(call.method.path)
        pending.append((call, unary.future(call.body, metadata=call.metadata, timeout=10)))
    for call, future in pending:
        try:
            future.result()
            judge.grpc(call.method.path, None, call.sent())
        except grpc.RpcError as error:
            judge.grpc(call.method.path, error, call.sent())
    for call in calls:
        if not call.method.streaming:
            continue
        stream = channel.unary_stream(call.method.path)(
            call.body, metadata=call.metadata, timeout=10
        )
        try:
            next(stream, None)  # the first message (a watch never ends) or the end
            judge.grpc(call.method.path, None, call.sent())
        except grpc.RpcError as error:
            judge.grpc(call.method.path, error, call.sent())
        finally:
            stream.cancel()
    label = ", ".join(sorted({c.method.path.rsplit("/", 1)[1] for c in calls}))
    judge.crash_logs(mark, [s for c in calls for s in c.sent()], label)
    judge.batch_done(label)


def _assert_clean(judge: Judge) -> None:
    assert judge.tally.tried >= EXAMPLES, judge.tally.report()
    assert judge.tally.clean, judge.tally.report()


def test_random_bytes_as_request_messages(hostile: GatewayThread, judge: Judge) -> None:
    """Random bytes, and valid messages cut, grown or overwritten, as every method's request,
    with random metadata: each is a caller's mistake (MALFORMED_REQUEST, or what the message
    parses as) or a valid call, never a crash. ``-s`` prints the tally as the test ends."""

    @HYPOTHESIS
    @given(data=st.data())
    def batch(data: st.DataObject) -> None:
        calls = []
        for _ in range(data.draw(st.integers(1, 8))):
            method = data.draw(st.sampled_from(METHODS))
            body = data.draw(st.binary(max_size=512) | _valid_bytes(method))
            calls.append(Call(method, _mutated(body, data), data.draw(_metadata)))
        _send(channel, judge, calls)

    with grpc.insecure_channel(hostile.grpc_address) as channel:
        batch()
    _assert_clean(judge)


def test_random_values_in_every_field(hostile: GatewayThread, judge: Judge) -> None:
    """Well-formed messages with random values in every field (any text, any 32-bit number,
    any enum number) and random metadata: caller errors from the catalogue, or answers, never
    a crash, a token or an unbounded echo. ``-s`` prints the tally as the test ends."""

    @HYPOTHESIS
    @given(data=st.data())
    def batch(data: st.DataObject) -> None:
        calls = []
        for _ in range(data.draw(st.integers(1, 8))):
            method = data.draw(st.sampled_from(METHODS))
            body = data.draw(_valid_bytes(method))
            calls.append(Call(method, body, data.draw(_metadata)))
        _send(channel, judge, calls)

    with grpc.insecure_channel(hostile.grpc_address) as channel:
        batch()
    _assert_clean(judge)
