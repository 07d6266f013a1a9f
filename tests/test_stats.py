"""SPEC.md §5 `GET /api/stats`: counted on the path whose answer the client got."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import orjson
import pytest

from cc_proxy.standin import answer, message_events, sse_event
from harness import Reply, RunningGateway, ScriptedUpstream

TOOLS = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
ASK: dict[str, Any] = {
    "model": "claude-test-model",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "list the files"}],
}


def stats(gateway: RunningGateway) -> dict[str, Any]:
    with httpx.Client() as http:
        figures: dict[str, Any] = http.get(gateway.url + "/api/stats").json()
    return figures


def usage_stream(start_usage: dict[str, int], *deltas: dict[str, int]) -> list[bytes]:
    """A text answer whose message_start and message_delta events report the given usage."""
    message = answer(ASK)
    events = message_events(message)
    start = orjson.loads(events[0].split(b"data: ", 1)[1])
    start["message"]["usage"] = start_usage
    middle = events[1:-2]
    reported = [
        sse_event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": d})
        for d in deltas
    ]
    return [sse_event(start), *middle, *reported, events[-1]]


def test_streamed_answer_is_counted(client: anthropic.Anthropic, gateway: RunningGateway) -> None:
    with client.messages.stream(**ASK) as stream:
        final = stream.get_final_message()
    figures = stats(gateway)
    assert figures["total_requests"] == 1
    assert figures["input_tokens"] == final.usage.input_tokens
    assert figures["output_tokens"] == final.usage.output_tokens
    assert (figures["tool_calls"], figures["errors"]) == (0, 0)
    assert final.usage.output_tokens > 1


def test_json_answer_is_counted(client: anthropic.Anthropic, gateway: RunningGateway) -> None:
    message = client.messages.create(**ASK)
    figures = stats(gateway)
    assert figures["total_requests"] == 1
    assert figures["input_tokens"] == message.usage.input_tokens
    assert figures["output_tokens"] == message.usage.output_tokens


def test_tool_use_blocks_are_counted_streamed_and_not(
    client: anthropic.Anthropic, gateway: RunningGateway
) -> None:
    with client.messages.stream(**ASK, tools=TOOLS) as stream:  # type: ignore[arg-type]
        streamed = stream.get_final_message()
    created = client.messages.create(**ASK, tools=TOOLS)  # type: ignore[arg-type]
    assert streamed.stop_reason == created.stop_reason == "tool_use"
    figures = stats(gateway)
    assert figures["tool_calls"] == 2
    assert figures["total_requests"] == 2
    assert figures["output_tokens"] == streamed.usage.output_tokens + created.usage.output_tokens


def test_cache_tokens_are_counted(
    client: anthropic.Anthropic, gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 4000,
    }
    target.queue(Reply.sse(usage_stream(usage, {"output_tokens": 9})))
    with client.messages.stream(**ASK) as stream:
        stream.until_done()
    figures = stats(gateway)
    assert figures["cache_creation_input_tokens"] == 300
    assert figures["cache_read_input_tokens"] == 4000
    assert figures["input_tokens"] == 10


def test_output_tokens_come_from_the_last_cumulative_message_delta(
    client: anthropic.Anthropic, gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    stream = usage_stream(
        {"input_tokens": 50, "output_tokens": 1}, {"output_tokens": 10}, {"output_tokens": 25}
    )
    target.queue(Reply.sse(stream))
    with client.messages.stream(**ASK) as answer_stream:
        answer_stream.until_done()
    assert stats(gateway)["output_tokens"] == 25


def test_input_tokens_reported_only_in_message_delta_are_counted(
    client: anthropic.Anthropic, gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    # SGLang reports input_tokens 0 in message_start and the real figure in message_delta.
    stream = usage_stream(
        {"input_tokens": 0, "output_tokens": 0}, {"input_tokens": 321, "output_tokens": 40}
    )
    target.queue(Reply.sse(stream))
    with client.messages.stream(**ASK) as answer_stream:
        answer_stream.until_done()
    figures = stats(gateway)
    assert figures["input_tokens"] == 321
    assert figures["output_tokens"] == 40


def test_input_tokens_reported_in_both_events_are_counted_once(
    client: anthropic.Anthropic, gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    stream = usage_stream(
        {"input_tokens": 100, "output_tokens": 1}, {"input_tokens": 100, "output_tokens": 7}
    )
    target.queue(Reply.sse(stream))
    with client.messages.stream(**ASK) as answer_stream:
        answer_stream.until_done()
    assert stats(gateway)["input_tokens"] == 100


def test_upstream_error_answer_counts_a_request_and_an_error_but_no_tokens(
    client: anthropic.Anthropic, gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    error = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    target.queue(Reply.json(error, status=500))
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**ASK)
    figures = stats(gateway)
    assert (figures["total_requests"], figures["errors"]) == (1, 1)
    assert (figures["input_tokens"], figures["output_tokens"]) == (0, 0)


def test_error_event_in_a_200_stream_counts_as_an_error(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    events = message_events(answer(ASK))
    error = sse_event({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    target.queue(Reply.sse([*events[:4], error]))
    with httpx.Client() as http:
        raw = http.post(gateway.url + "/v1/messages", json={**ASK, "stream": True}).content
    assert raw == b"".join([*events[:4], error])
    figures = stats(gateway)
    assert figures["errors"] == 1
    assert figures["input_tokens"] == answer(ASK)["usage"]["input_tokens"]


def test_requests_other_than_messages_are_not_counted(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        http.post("/v1/messages/count_tokens", json=ASK)
        http.get("/v1/models")
    assert stats(gateway)["total_requests"] == 0


def test_counts_accumulate_over_requests(
    client: anthropic.Anthropic, gateway: RunningGateway
) -> None:
    outputs = []
    for _ in range(3):
        outputs.append(client.messages.create(**ASK).usage.output_tokens)
    figures = stats(gateway)
    assert figures["total_requests"] == 3
    assert figures["output_tokens"] == sum(outputs)
    assert figures["requests_by_mode"] == {"target": 3}


def test_a_failing_observer_does_not_break_requests_or_the_other_observers(
    client: anthropic.Anthropic, gateway: RunningGateway
) -> None:
    from cc_proxy.exchange import Exchange, Observer

    class Broken(Observer):
        def on_start(self, exchange: Exchange) -> None:
            raise RuntimeError("observer bug")

        def on_end(self, exchange: Exchange) -> None:
            raise RuntimeError("observer bug")

    gateway.gateway.observers.add(Broken())
    message = client.messages.create(**ASK)
    assert message.usage.output_tokens > 0
    assert stats(gateway)["total_requests"] == 1


def test_a_failing_body_watcher_does_not_break_the_answer(
    client: anthropic.Anthropic, gateway: RunningGateway
) -> None:
    """It is dropped after its first failure; the others still see the whole answer."""
    from collections.abc import Callable

    from cc_proxy.exchange import Exchange, Observer

    calls: list[bytes] = []
    seen: list[bytes] = []

    def broken(chunk: bytes) -> None:
        calls.append(chunk)
        raise RuntimeError("watcher bug")

    class Watching(Observer):
        def __init__(self, watcher: Callable[[bytes], None]) -> None:
            self.watcher = watcher

        def body_watcher(self, exchange: Exchange) -> Callable[[bytes], None] | None:
            return self.watcher

    gateway.gateway.observers.add(Watching(broken))
    gateway.gateway.observers.add(Watching(seen.append))
    with client.messages.stream(**ASK) as stream:
        message = stream.get_final_message()
    assert message.usage.output_tokens > 0
    assert stats(gateway)["output_tokens"] == message.usage.output_tokens
    assert len(calls) == 1
    answer = b"".join(seen)
    assert answer.startswith(b"event: message_start")
    assert answer.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
