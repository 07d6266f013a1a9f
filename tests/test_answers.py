"""A relayed answer put back together as the message it carried (traces, compare records)."""

from __future__ import annotations

from typing import Any

import orjson

from cc_proxy.answers import answer_message, message_text, reassemble_message, tool_calls
from cc_proxy.standin import message_events, sse_event


def answer() -> dict[str, Any]:
    return {
        "id": "msg_a",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "text", "text": "Looking at the files now, then writing."},
            {"type": "tool_use", "id": "toolu_a", "name": "Write", "input": {"path": "a", "n": 1}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 20},
    }


def test_many_small_deltas_and_a_tool_input_split_across_deltas() -> None:
    events = message_events(answer(), pieces=9)
    # the tool input arrives in three pieces, as upstreams send it
    tool_delta = next(e for e in events if b"input_json_delta" in e)
    partial = orjson.dumps(answer()["content"][1]["input"]).decode()
    pieces = [partial[:3], partial[3:10], partial[10:]]
    split = [
        sse_event(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            }
        )
        for piece in pieces
    ]
    at = events.index(tool_delta)
    stream = b"".join(events[:at] + split + events[at + 1 :])

    assert reassemble_message(stream) == answer()
    assert reassemble_message(stream.replace(b"\n", b"\r\n")) == answer()


def test_data_over_several_lines_is_joined() -> None:
    start = {"type": "message_start", "message": {**answer(), "content": []}}
    data = orjson.dumps(start, option=orjson.OPT_INDENT_2).replace(b"\n", b"\ndata: ")
    stream = b"event: message_start\ndata: " + data + b"\nid: 1\n\n"

    message = reassemble_message(stream)

    assert message is not None
    assert message["id"] == "msg_a"


def test_a_stream_cut_short_gives_the_message_as_far_as_it_went() -> None:
    stream = b"".join(message_events(answer()))
    cut = stream[: stream.index(b'"partial_json"') + 20]

    message = reassemble_message(cut)

    assert message is not None
    assert message_text(message) == "Looking at the files now, then writing."
    assert tool_calls(message) == [{"name": "Write", "input": {}}]  # its start, no input yet
    assert message["stop_reason"] is None


def test_an_error_answer_or_no_message_is_none() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}

    assert answer_message(orjson.dumps(error), stream=False) is None
    assert (
        answer_message(b"event: error\ndata: " + orjson.dumps(error) + b"\n\n", stream=True) is None
    )
    assert answer_message(b"not json", stream=False) is None
    assert answer_message(orjson.dumps(answer()), stream=False) == answer()
