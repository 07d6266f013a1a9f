"""The SSE framer and accountant on their own: however an upstream cuts its stream into
TCP writes, the relayed bytes and the counts are those of the whole stream."""

from __future__ import annotations

import itertools
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_proxy.accounting import SseFramer, account_events
from cc_proxy.exchange import Usage
from cc_proxy.standin import answer, message_events, sse_event

TOOLS = [{"name": "Bash"}]
ASK = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "a b c d"}]}


def relay(chunks: list[bytes]) -> tuple[bytes, Usage]:
    framer = SseFramer()
    usage = Usage()
    out = b""
    for chunk in chunks:
        events = framer.feed(chunk)
        account_events(events, usage)
        out += events
    return out + framer.flush(), usage


def streams() -> dict[str, bytes]:
    tool = b"".join(message_events(answer({**ASK, "tools": TOOLS})))
    text = b"".join(message_events(answer(ASK), pieces=40))
    error = sse_event({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    return {
        "tool-use": tool,
        "text": text,
        "crlf": text.replace(b"\n", b"\r\n"),
        "ends-in-error": b"".join(message_events(answer(ASK))[:5]) + error,
        "data-only": b"".join(
            e.split(b"\n", 1)[1] for e in message_events(answer({**ASK, "tools": TOOLS}))
        ),
    }


@pytest.mark.parametrize("name", list(streams()))
def test_any_split_gives_the_same_bytes_and_counts(name: str) -> None:
    stream = streams()[name]
    whole_bytes, whole = relay([stream])
    assert whole_bytes == stream
    assert whole.output_tokens > 0 or whole.error_type
    rng = random.Random(name)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        relayed, usage = relay(chunks)
        assert relayed == stream
        assert usage == whole


@pytest.mark.parametrize("data_only", [False, True])
def test_text_naming_counted_events_is_not_counted(data_only: bool) -> None:
    plain = answer(ASK)
    naming = answer(ASK)
    naming["content"][0]["text"] = " ".join(_NAMING)
    counts = []
    for message in (plain, naming):
        events = message_events(message, pieces=3)
        if data_only:
            events = [event.split(b"\n", 1)[1] for event in events]
        counts.append(relay([b"".join(events)])[1])
    assert counts[0] == counts[1]
    assert counts[1].output_tokens == 12
    assert counts[1].stopped
    assert not counts[1].error_type


def test_every_single_split_point_gives_the_same_counts() -> None:
    stream = streams()["tool-use"]
    _, whole = relay([stream])
    assert whole.tool_calls == 1
    assert whole.stopped
    for cut in range(1, len(stream)):
        relayed, usage = relay([stream[:cut], stream[cut:]])
        assert relayed == stream
        assert usage == whole


def test_relayed_pieces_end_on_event_boundaries() -> None:
    stream = streams()["text"]
    framer = SseFramer()
    for start in range(0, len(stream), 13):
        out = framer.feed(stream[start : start + 13])
        assert out == b"" or out.endswith(b"\n\n")


# --- property: any split of a valid stream ------------------------------------------------

# Text that names counted events: found by name, they must still be told from real ones.
_NAMING = [
    "event: message_stop",
    "an error in message_delta",
    'data: {"type":"content_block_start"}\n\n',
    "message_start\r\n\r\nerror",
]
_text_blocks = (st.text(max_size=30) | st.sampled_from(_NAMING)).map(
    lambda text: {"type": "text", "text": text}
)
_tool_blocks = st.fixed_dictionaries(
    {
        "type": st.just("tool_use"),
        "id": st.just("toolu_1"),
        "name": st.sampled_from(["Bash", "Read", "Edit"]),
        "input": st.dictionaries(
            st.text(max_size=6), st.text(max_size=12) | st.integers(-(2**53), 2**53), max_size=3
        ),
    }
)


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[bytes, Usage]:
    """A Messages stream as Anthropic, vLLM or SGLang would send it, and what it reports."""
    content = draw(st.lists(_text_blocks | _tool_blocks, max_size=4))
    reported = Usage(
        input_tokens=draw(st.integers(0, 2_000_000)),
        output_tokens=draw(st.integers(1, 64_000)),
        cache_read_input_tokens=draw(st.integers(0, 100_000)),
        tool_calls=sum(block["type"] == "tool_use" for block in content),
        stop_reason="tool_use" if content and content[-1]["type"] == "tool_use" else "end_turn",
        model="m",
        stopped=True,
    )
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": content,
        "stop_reason": reported.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": reported.input_tokens,
            "output_tokens": reported.output_tokens,
            "cache_read_input_tokens": reported.cache_read_input_tokens,
        },
    }
    events = message_events(message, pieces=draw(st.integers(1, 6)))
    if draw(st.booleans()):
        # SGLang: message_start reports no input tokens; message_delta does.
        start, delta = orjson.loads(events[0].split(b"data: ")[1]), -2
        start["message"]["usage"]["input_tokens"] = 0
        events[0] = sse_event(start)
        late = orjson.loads(events[delta].split(b"data: ")[1])
        late["usage"]["input_tokens"] = reported.input_tokens
        events[delta] = sse_event(late)
    stream = b"".join(events)
    if draw(st.booleans()):
        stream = stream.replace(b"\n", b"\r\n")
    return stream, reported


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_streams(), st.data())
def test_any_split_of_a_valid_stream_gives_the_counts_of_the_whole(
    stream_and_usage: tuple[bytes, Usage], data: st.DataObject
) -> None:
    stream, reported = stream_and_usage
    relayed, whole = relay([stream])
    assert relayed == stream
    assert whole == reported
    cuts = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=40, unique=True))
    edges = [0, *sorted(cuts), len(stream)]
    relayed, usage = relay([stream[a:b] for a, b in itertools.pairwise(edges)])
    assert relayed == stream
    assert usage == whole
