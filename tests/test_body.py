"""The request body kept as the client's bytes: checked whole, decoded where read, and
written back with only the changed fields encoded."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_proxy.body import MessagesBody, ShapedBody, Utf8Checked, check_utf8
from cc_proxy.errors import GatewayError

FIXTURE = Path(__file__).parent / "fixtures" / "claude-code-2.1.197" / "basic.json"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
objects = st.dictionaries(st.text(max_size=6), json_values, max_size=6)


def test_fields_are_decoded_on_demand_and_equal_a_full_decode() -> None:
    raw = json.dumps(json.loads(FIXTURE.read_text())["body"]).encode()
    body = MessagesBody(raw)
    assert body.raw is raw
    assert dict(body) == orjson.loads(raw)
    assert body["messages"] is body["messages"]  # decoded once


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "request body is not valid JSON"),
        (b'{"model": "m",}', "request body is not valid JSON"),
        (b'{"model": "m"} trailing', "request body is not valid JSON"),
        (b'{"messages": [{"content": "\xff"}]}', "request body is not valid JSON"),
        (b'{"mod\xffel": "m"}', "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object, not list"),
        (b'"text"', "request body must be a JSON object, not str"),
        (b"", "request body is not valid JSON"),
        (b"[1,", "request body is not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "request body is not valid JSON"),
        (
            b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "request body is not valid JSON",
        ),
    ],
    ids=[
        "not-json",
        "trailing-comma",
        "trailing-text",
        "bad-utf8",
        "bad-utf8-in-a-key",
        "array",
        "string",
        "empty",
        "cut-array",
        "deep-array",
        "deep-field",
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400_naming_why(raw: bytes, reason: str) -> None:
    with pytest.raises(GatewayError) as refused:
        MessagesBody(raw)
    assert refused.value.status == 400
    assert refused.value.message.startswith(reason)


def test_unchanged_fields_keep_the_clients_exact_bytes() -> None:
    raw = b'{ "model" : "claude" , "tools" : [ {"name" : "Bash"} ],\n "stream": true }'
    shaped = ShapedBody(MessagesBody(raw), {"model": "glm-5", "temperature": 0.2}, {"stream"})
    assert shaped.encode() == b'{"model":"glm-5","tools":[ {"name" : "Bash"} ],"temperature":0.2}'
    assert dict(shaped) == {"model": "glm-5", "tools": [{"name": "Bash"}], "temperature": 0.2}
    assert "stream" not in shaped
    assert len(shaped) == 3


def test_everything_dropped_is_an_empty_object() -> None:
    assert ShapedBody(MessagesBody(b'{"a": 1}'), {}, {"a"}).encode() == b"{}"


@settings(max_examples=200, deadline=None)
@given(
    original=objects,
    changes=st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    dropped=st.sets(st.text(max_size=6), max_size=3),
    indent=st.booleans(),
)
def test_a_shaped_body_encodes_to_what_its_mapping_says(
    original: dict[str, Any], changes: dict[str, Any], dropped: set[str], indent: bool
) -> None:
    raw = orjson.dumps(original, option=orjson.OPT_INDENT_2 if indent else 0)
    shaped = ShapedBody(MessagesBody(raw), changes, dropped)
    expected = {k: v for k, v in {**original, **changes}.items() if k not in dropped}
    assert orjson.loads(shaped.encode()) == expected == dict(shaped)
    # the key order: the client's first, then the added ones
    assert list(orjson.loads(shaped.encode())) == list(shaped)
    # a plain mapping as the base gives the same object
    assert orjson.loads(ShapedBody(original, changes, dropped).encode()) == expected


# Bytes that make UTF-8 interesting: quotes (where pieces are cut), ASCII, continuation
# bytes, lead bytes of every length, bytes never valid, and whole characters of 2 to 4.
utf8_parts = st.lists(
    st.sampled_from([b'"', b"a", b"\x80", b"\xbf", b"\xc3", b"\xe2", b"\xf0", b"\xff", b"\xc0"])
    | st.text(max_size=3).map(str.encode),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(raw=utf8_parts, piece=st.integers(1, 8))
def test_the_piecewise_utf8_check_agrees_with_a_whole_decode(raw: bytes, piece: int) -> None:
    # The same bytes are refused, at the same place. (The reason may read differently:
    # a character cut short by a quote is "unexpected end of data" in its piece.)
    assert _refused_at(lambda: check_utf8(raw, piece)) == _refused_at(raw.decode)


def _refused_at(decode: Callable[[], object]) -> int | None:
    try:
        decode()
    except UnicodeDecodeError as exc:
        return exc.start
    return None


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.tuples(
            st.sampled_from(["tools", "system"]), st.sampled_from([b"", b"a", b"\xc3"])
        ).flatmap(lambda kv: utf8_parts.map(lambda part: (kv[0], kv[1] * 3 + part))),
        max_size=30,
    )
)
def test_remembered_values_are_refused_exactly_as_a_decode_refuses_them(
    values: list[tuple[str, bytes]],
) -> None:
    # Small enough to remember almost every value, so that equal lengths meet often.
    checked = Utf8Checked(capacity=3, min_remembered=2)
    for field, value in values:
        assert _refused_at(partial(checked.check, field, value)) == _refused_at(value.decode)
        assert len(checked) <= 3


def test_a_remembered_value_is_checked_again_once_changed() -> None:
    checked = Utf8Checked(min_remembered=4)
    valid = "é".encode() * 10
    checked.check("tools", valid)
    invalid = valid[:-1] + b"\xff"  # the same field and length
    with pytest.raises(UnicodeDecodeError):
        checked.check("tools", invalid)
    checked.check("tools", valid)  # still known good
