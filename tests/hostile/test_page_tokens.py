"""A page token is the caller's to send and the journal's to decode: whatever it holds, decoding
it either gives back a position the journal could have handed out or fails with the one
ValueError that both edges answer INVALID_PAGE_TOKEN (before, a token nested thousands deep
was a RecursionError and one with a 400-digit number an OverflowError: UNKNOWN on gRPC, 500 on
REST)."""

from __future__ import annotations

import base64
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.journal.store import (
    MAX_PAGE_TOKEN_CHARS,
    decode_page_token,
    encode_page_token,
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


CRAFTED = {
    "nested deep": _b64(b"[" * 100_000),
    "nested within the bound": _b64(b"[" * 180),
    "a 400-digit time": _b64(b"[" + b"9" * 400 + b', "x"]'),
    "an infinite time": _b64(b'[1e999, "x"]'),
    "NaN": _b64(b'[NaN, "x"]'),
    "a boolean time": _b64(b'[true, "x"]'),
    "not UTF-8": _b64(b"\xff\xfe[1, 2]"),
    "not base64": "!!!",
    "not ASCII": "é" * 8,
    "a lone surrogate": "\udcff",
    "an object": _b64(json.dumps({"started_at": 1.0, "id": "x"}).encode()),
    "three items": _b64(b'[1.0, "x", "y"]'),
    "an id that is not text": _b64(b"[1.0, 2]"),
    "an id too long": _b64(json.dumps([1.0, "x" * 65]).encode()),
    "a string": _b64(b'"ab"'),
    "too long": "A" * (MAX_PAGE_TOKEN_CHARS + 1),
}


@pytest.mark.parametrize("token", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_crafted_token_is_the_one_value_error(token: str) -> None:
    with pytest.raises(ValueError, match="invalid page_token"):
        decode_page_token(token)


@settings(max_examples=500, deadline=None, database=None)
@given(token=st.text(max_size=400) | st.binary(max_size=300).map(_b64))
def test_any_token_decodes_to_a_position_or_the_one_value_error(token: str) -> None:
    try:
        started_at, operation_id = decode_page_token(token)
    except ValueError as exc:
        refusal = str(exc)
    else:
        refusal = ""
        assert math.isfinite(started_at)
        assert isinstance(operation_id, str)
        assert len(operation_id) <= 64
    assert refusal in ("", "invalid page_token")


def test_the_tokens_the_journal_hands_out_still_decode() -> None:
    token = encode_page_token(1_767_225_600.123456, "0123456789abcdef0123456789abcdef")

    assert len(token) <= MAX_PAGE_TOKEN_CHARS
    assert decode_page_token(token) == (1_767_225_600.123456, "0123456789abcdef0123456789abcdef")
