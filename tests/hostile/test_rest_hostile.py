"""Hostile callers on REST, over raw sockets: random methods, paths, query strings, headers and
bodies; then requests HTTP's parser must refuse (control characters in headers, the token's
included, repeated singleton headers, Content-Length with Transfer-Encoding, broken chunking, a
request line or headers too long, too many headers, unknown methods, TLS on the plain port).

Every answer is judged (``tests.helpers.hostile.Judge``): a 4xx in the contract's envelope with
the catalogue's reason and status, or a valid answer; never a 5xx, no answer, a traceback or an
ERROR in the log, a token or an unbounded echo in the answer or the log, or anything reaching
WhatsApp. POST updates are dry runs (``validateOnly=true`` comes first in every query string),
so a valid one changes nothing either. The summary line is printed at the end of the run (and
with ``-s`` as each test ends) and is the assertion's message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.hostile import (
    INSTANCES,
    TOKENS,
    GatewayThread,
    Judge,
    http_request,
    raw_http,
)

EXAMPLES = 250
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PRIVACY = "/api/profile/privacy/"
_TOKEN = TOKENS[0].encode()
#: Framing is the parser test's business: the random test leaves these to the request builder.
_FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"}


@dataclass
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    #: What the caller sent as text, as the gateway could echo it.
    sent: tuple[str, ...] = ()

    def raw(self) -> bytes:
        headers = [(b"Host", b"gateway"), *self.headers]
        if self.body:
            headers.append((b"Content-Length", str(len(self.body)).encode()))
        headers.append((b"Connection", b"close"))
        return http_request(self.method, self.target, headers, self.body)


def _sent(*values: str | bytes) -> tuple[str, ...]:
    texts = []
    for value in values:
        text = value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")
        texts.append(text)
    return tuple(texts)


# -- random requests ---------------------------------------------------------------------------

#: What a header's value may hold (RFC 9110: visible ASCII, space, tab, and obs-text bytes); the
#: control characters the parser refuses are the parser test's.
_header_byte = st.integers(0x20, 0x7E) | st.integers(0x80, 0xFF) | st.just(0x09)
_header_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200).map(
    str.encode
) | st.lists(_header_byte, max_size=200).map(bytes).map(bytes.strip)
_known_token = st.sampled_from([t.encode() for t in TOKENS])
#: Mostly a token the gateway knows, so that requests get past authentication to what they send.
_token = st.one_of(_known_token, _known_token, _known_token, st.just(b"wrong"), _header_value)
_known_instance = st.sampled_from(INSTANCES)
_segment = st.one_of(
    _known_instance,
    _known_instance,
    st.sampled_from(["nope", "", "sales%0A", "%2e%2e", ".."]),
    st.text(min_size=1, max_size=64).map(lambda t: quote(t, safe="")),
    st.text(min_size=65, max_size=600).map(lambda t: quote(t, safe="")),
    st.binary(min_size=1, max_size=40).map(lambda b: quote(b, safe="")),
)
_privacy_path = st.one_of(
    _segment.map(lambda i: PRIVACY + i),
    _segment.map(lambda i: PRIVACY + i + "/operations"),
    st.tuples(_segment, _segment).map(lambda t: f"{PRIVACY}{t[0]}/operations/{t[1]}"),
)
_path = st.one_of(
    _privacy_path,
    _privacy_path,
    _privacy_path,
    st.sampled_from(["/", "/healthz", "/openapi.json", "/api", PRIVACY, "//", PRIVACY + "a/b/c/d"]),
    st.text(max_size=100).map(lambda t: "/" + quote(t, safe="/")),
)
_query_key = st.sampled_from(["pageSize", "pageToken", "failurePolicy", "validateOnly", "force"])
_query_value = (
    st.text(max_size=64)
    | st.text(min_size=65, max_size=600)
    | st.integers(-(10**12), 10**12).map(str)
    | st.sampled_from(["true", "false", "STOP", "ROLLBACK", "CONTINUE", "0", "100", "101", "-1"])
)
_query = st.lists(st.tuples(_query_key | st.text(max_size=20), _query_value), max_size=4)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4)
    ),
    max_leaves=12,
)
_settings_body = st.fixed_dictionaries(
    {},
    optional={
        "visibility": st.dictionaries(
            st.sampled_from(["lastSeen", "status", "profile", "online", "nope"]),
            st.sampled_from(["all", "contacts", "none", "match_last_seen", "x"]) | _json,
            max_size=3,
        ),
        "privacy": st.dictionaries(
            st.just("readReceipts"), st.sampled_from(["all", "none"]) | _json
        ),
        "permissions": st.dictionaries(
            st.sampled_from(["callAdd", "groupAdd"]), st.sampled_from(["known", "contacts"]) | _json
        ),
    },
)
_body = (
    _settings_body.map(lambda b: json.dumps(b).encode())
    | _json.map(lambda b: json.dumps(b).encode())
    | st.binary(max_size=400)
)
_json_type = st.just(b"application/json")
_content_type = st.one_of(
    _json_type,
    _json_type,
    _json_type,
    st.sampled_from([b"application/json; charset=utf-8", b"text/plain", b""]),
    _header_value,
)
_extra_header = st.tuples(
    st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}", fullmatch=True)
    .filter(lambda n: n.lower() not in _FRAMING)
    .map(str.encode),
    _header_value,
)


@st.composite
def _random_request(draw: st.DrawFn) -> Request:
    method = draw(
        st.sampled_from([b"GET"] * 4 + [b"POST"] * 4 + [b"PUT", b"DELETE", b"HEAD", b"OPTIONS"])
    )
    path = draw(_segment.map(lambda i: PRIVACY + i) | _path if method == b"POST" else _path)
    query = draw(_query)
    if method == b"POST":
        query = [("validateOnly", "true"), *query]
    target = path + ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query) if query else "")
    headers: list[tuple[bytes, bytes]] = []
    token = draw(st.none() | _token)
    if token is not None:
        headers.append((b"token", token))
    if method == b"POST" or draw(st.booleans()):
        headers.append((b"Content-Type", draw(_content_type)))
    if draw(st.booleans()):
        key = draw(st.uuids().map(lambda u: str(u).encode()) | _header_value)
        headers.append((b"Idempotency-Key", key))
    if draw(st.booleans()):
        headers.append((b"Accept", draw(st.sampled_from([b"application/x-ndjson", b"*/*"]))))
    headers += draw(st.lists(_extra_header, max_size=3))
    body = draw(_body) if method in (b"POST", b"PUT") else b""
    sent = _sent(path, *(v for _, v in query), *(k for k, _ in query), *(v for _, v in headers))
    return Request(method, target.encode(), headers, body, sent)


def _send(hostile: GatewayThread, judge: Judge, requests: list[Request], label: str) -> None:
    mark = judge.logs.mark()
    for request in requests:
        reply = raw_http(hostile.http_port, request.raw())
        judge.rest(label, reply, request.sent, head=request.method == b"HEAD")
    judge.crash_logs(mark, [s for r in requests for s in r.sent], label)
    judge.batch_done(label)


def _assert_clean(judge: Judge) -> None:
    assert judge.tally.tried >= EXAMPLES, judge.tally.report()
    assert judge.tally.clean, judge.tally.report()


def test_random_methods_paths_queries_headers_and_bodies(
    hostile: GatewayThread, judge: Judge
) -> None:
    """Well-framed requests with random everything else: the envelope, the catalogue's reason
    and status, never a 5xx. ``-s`` prints the tally as the test ends."""

    @HYPOTHESIS
    @given(requests=st.lists(_random_request(), min_size=1, max_size=6))
    def batch(requests: list[Request]) -> None:
        _send(hostile, judge, requests, "random request")

    batch()
    _assert_clean(judge)


@st.composite
def _random_update(draw: st.DrawFn) -> Request:
    """A dry-run update of ``sales`` by its account: past authentication, to the body and query."""
    query = [("validateOnly", "true"), *draw(_query)]
    target = PRIVACY + "sales?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query)
    declared = b"application/json" if draw(st.booleans()) else draw(_content_type)
    headers = [(b"token", _TOKEN), (b"Content-Type", declared)]
    if draw(st.booleans()):
        key = draw(st.uuids().map(lambda u: str(u).encode()) | _header_value)
        headers.append((b"Idempotency-Key", key))
    if draw(st.booleans()):
        headers.append((b"Accept", b"application/x-ndjson"))
    body = draw(_body)
    sent = _sent(*(v for _, v in query), *(k for k, _ in query), *(v for _, v in headers))
    return Request(b"POST", target.encode(), headers, body, (*sent, body.decode("latin-1")))


def test_random_update_bodies_queries_and_keys(hostile: GatewayThread, judge: Judge) -> None:
    """Updates that pass authentication, with random bodies (JSON of any shape, bytes that are
    not JSON), query strings, Content-Types and Idempotency-Keys: the contract's 400s, 409s,
    413s and 415s, or a dry run's 200. ``-s`` prints the tally as the test ends."""

    @HYPOTHESIS
    @given(requests=st.lists(_random_update(), min_size=1, max_size=6))
    def batch(requests: list[Request]) -> None:
        _send(hostile, judge, requests, "random update")

    batch()
    _assert_clean(judge)


# -- what the parser must refuse ---------------------------------------------------------------

_GET = (b"GET", (PRIVACY + "sales").encode())
_CTL = st.sampled_from([*range(0, 9), *range(11, 13), *range(14, 32), 127]).map(
    lambda b: bytes([b])
)


def _base(*extra: tuple[bytes, bytes], token: bytes = _TOKEN) -> list[tuple[bytes, bytes]]:
    return [(b"Host", b"gateway"), (b"token", token), *extra, (b"Connection", b"close")]


Mutation = Callable[[Callable[..., Any]], tuple[str, bytes, tuple[str, ...]]]


def _ctl_in_a_header(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    name = draw(st.sampled_from([b"token", b"Content-Type", b"X-Any", b"Idempotency-Key"]))
    value = _TOKEN if name == b"token" else draw(_header_value.filter(bool))
    at = draw(st.integers(0, len(value)))
    value = value[:at] + draw(_CTL) + value[at:]
    headers = [h for h in _base() if h[0] != name] + [(name, value)]
    return "a control character in a header", http_request(*_GET, headers), _sent(value)


def _token_ending_in_cr(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    ending = draw(st.sampled_from([b"\r", b"\r\r", b"\r\x00", b" \r"]))
    raw = http_request(*_GET, _base(token=_TOKEN + ending))
    return "a token ending in CR", raw, ()


def _token_not_utf8(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    junk = draw(st.binary(min_size=1, max_size=16).map(lambda b: bytes(x | 0x80 for x in b)))
    return "a token that is not UTF-8", http_request(*_GET, _base(token=junk + _TOKEN)), ()


def _bare_lf_or_fold(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    if draw(st.booleans()):
        return "LF line endings", http_request(*_GET, _base(), newline=b"\n"), ()
    headers = [*_base(), (b" folded", b"continuation")]
    return "an obs-fold line", http_request(*_GET, headers), ()


def _repeated_singleton(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    name = draw(st.sampled_from([b"Content-Type", b"Content-Length", b"Host", b"Authorization"]))
    value = b"2" if name == b"Content-Length" else b"application/json"
    headers = _base((name, value), (name, value))
    return f"a repeated {name.decode()}", http_request(b"POST", _GET[1], headers, b"{}"), ()


def _length_with_chunking(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    encoding = draw(st.sampled_from([b"chunked", b"gzip, chunked", b"chunked, gzip", b"x"]))
    headers = _base(
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"2"),
        (b"Transfer-Encoding", encoding),
    )
    return (
        "Content-Length with Transfer-Encoding",
        http_request(b"POST", _GET[1], headers, b"2\r\n{}\r\n0\r\n\r\n"),
        (),
    )


def _broken_chunks(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    body = draw(
        st.sampled_from(
            [
                b"zz\r\n{}\r\n0\r\n\r\n",
                b"2\r\n{}XX0\r\n\r\n",
                b"-1\r\n\r\n",
                b"2;\x00\r\n{}\r\n0\r\n\r\n",
            ]
        )
    )
    headers = _base((b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked"))
    return (
        "a broken chunked body",
        http_request(b"POST", _GET[1] + b"?validateOnly=true", headers, body),
        (),
    )


def _bad_length(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    length = draw(st.sampled_from([b"abc", b"-1", b"+2", b"2 2", b"0x2", b"99999999999999999999"]))
    headers = _base((b"Content-Type", b"application/json"), (b"Content-Length", length))
    return (
        "a Content-Length that is not a number",
        http_request(b"POST", _GET[1], headers, b"{}"),
        (),
    )


def _long_request_line(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    size = draw(st.integers(8200, 40_000))
    where = draw(st.sampled_from(["path", "query"]))
    path = PRIVACY + ("x" * size if where == "path" else "sales/operations?pageToken=" + "W" * size)
    return "a request line too long", http_request(b"GET", path.encode(), _base()), (path,)


def _long_header(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    size = draw(st.integers(8200, 100_000))
    name = draw(st.sampled_from([b"token", b"X-Big", b"Content-Type"]))
    value = (_TOKEN * (size // len(_TOKEN) + 1))[:size] if name == b"token" else b"v" * size
    headers = [h for h in _base() if h[0] != name] + [(name, value)]
    return "a header too long", http_request(*_GET, headers), (value.decode(),)


def _many_headers(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    count = draw(st.integers(129, 400))
    headers = _base(*((f"X-H{i}".encode(), b"v") for i in range(count)))
    return "too many headers", http_request(*_GET, headers), ()


def _unknown_method(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    method = draw(
        st.from_regex(r"[A-Z]{2,12}", fullmatch=True).filter(
            lambda m: m not in {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"}
        )
        | st.sampled_from(["get", "G ET", "GET\x00", "\x16\x03\x01\x02\x00"])
    )
    return "an unknown method", http_request(method.encode(), _GET[1], _base()), ()


def _bad_request_line(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    version = draw(st.sampled_from([b"HTTP/2.0", b"HTTP/1.x", b"HTP/1.1", b"HTTP/1.1 extra", b""]))
    target = draw(st.sampled_from([_GET[1], b"/a b", b"/a\x01b", b"*", b"http://x/y", b""]))
    return "a broken request line", http_request(b"GET", target, _base(), version=version), ()


def _bad_header_name(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    name = draw(st.sampled_from([b"token ", b"to(ken", b"t\xc3\xa9", b"", b"a b", b"x\x00"]))
    return "a header name that is not a token", http_request(*_GET, _base((name, b"v"))), ()


def _garbage(draw: Callable[..., Any]) -> tuple[str, bytes, tuple[str, ...]]:
    # Not only line breaks: a server waits for the request after empty lines (RFC 9112 2.2).
    junk = draw(st.binary(min_size=1, max_size=300).filter(lambda b: b.strip(b"\r\n")))
    return "bytes that are not HTTP", junk + b"\r\n\r\n", ()


MUTATIONS: list[Mutation] = [
    _ctl_in_a_header,
    _token_ending_in_cr,
    _token_not_utf8,
    _bare_lf_or_fold,
    _repeated_singleton,
    _length_with_chunking,
    _broken_chunks,
    _bad_length,
    _long_request_line,
    _long_header,
    _many_headers,
    _unknown_method,
    _bad_request_line,
    _bad_header_name,
    _garbage,
]


def test_requests_the_parser_refuses(hostile: GatewayThread, judge: Judge) -> None:
    """Each of the parser's refusals is a 4xx in the envelope with the catalogue's reason (the
    token never quoted, nothing logged but one line naming the reason); a request the parser
    lets through is answered as any other. ``-s`` prints the tally as the test ends."""

    @HYPOTHESIS
    @given(data=st.data())
    def batch(data: st.DataObject) -> None:
        mark = judge.logs.mark()
        sent: list[str] = []
        for _ in range(data.draw(st.integers(1, 4))):
            mutation = data.draw(st.sampled_from(MUTATIONS))
            label, raw, texts = mutation(data.draw)
            judge.rest(label, raw_http(hostile.http_port, raw), texts)
            sent += texts
        judge.crash_logs(mark, sent, "parser refusals")
        judge.batch_done("parser refusals")

    batch()
    _assert_clean(judge)


def test_an_idempotency_key_is_never_echoed_whole(hostile: GatewayThread, judge: Judge) -> None:
    """A sanity check of the judge itself: a long key is shown cut, and the judge sees no leak."""
    key = "k" * 5000
    request = Request(
        b"POST",
        (PRIVACY + "sales?validateOnly=true").encode(),
        [
            (b"token", _TOKEN),
            (b"Content-Type", b"application/json"),
            (b"Idempotency-Key", key.encode()),
        ],
        json.dumps({"visibility": {"lastSeen": "none"}}).encode(),
        (key, str(uuid.uuid4())),
    )
    _send(hostile, judge, [request], "a 5000-character Idempotency-Key")
    assert judge.tally.answers == {"400/INVALID_REQUEST_ID": 1}, judge.tally.report()
    assert judge.tally.clean, judge.tally.report()
