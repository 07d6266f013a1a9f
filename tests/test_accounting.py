"""The SSE framer and accountant on their own: however an upstream cuts its stream into
TCP writes, the relayed bytes and the counts are those of the whole stream."""

from __future__ import annotations

import random

import pytest

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
