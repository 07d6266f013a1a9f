"""SPEC.md §6: the embedded stand-in target speaks the Messages API, streaming and not,
with usage and a tool call, and serves behind the gateway as a real target would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from cc_proxy.standin import start_standin
from conftest import CLIENT_KEY
from harness import LoopThread, RunningGateway, settings_for

TOOLS: list[Any] = [
    {"name": "Bash", "description": "run a command", "input_schema": {"type": "object"}}
]
ASK: list[Any] = [{"role": "user", "content": "list the files here"}]


@pytest.fixture
def via_standin(loop_thread: LoopThread) -> Iterator[RunningGateway]:
    runner, url = loop_thread.run(start_standin())
    settings = settings_for(None, None, target={"url": url, "model": "standin-1"})
    gateway = RunningGateway(settings)
    yield gateway
    gateway.stop()
    loop_thread.run(runner.cleanup())


@pytest.fixture
def sdk(via_standin: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=via_standin.url, api_key=CLIENT_KEY, max_retries=0)


def test_streams_text_with_usage(sdk: anthropic.Anthropic, via_standin: RunningGateway) -> None:
    with sdk.messages.stream(model="claude-x", max_tokens=100, messages=ASK) as stream:
        message = stream.get_final_message()
    assert message.model == "standin-1"
    assert message.stop_reason == "end_turn"
    assert "list the files here" in message.content[0].text  # type: ignore[union-attr]
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == len(message.content[0].text.split())  # type: ignore[union-attr]
    assert via_standin.stats["output_tokens"] == message.usage.output_tokens


def test_calls_bash_when_offered_then_answers_the_tool_result(sdk: anthropic.Anthropic) -> None:
    first = sdk.messages.create(model="claude-x", max_tokens=100, messages=ASK, tools=TOOLS)
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use"
    assert call.name == "Bash"
    assert call.input == {"command": "echo hello from the stand-in"}
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "hello"}],
        },
    ]
    with sdk.messages.stream(
        model="claude-x", max_tokens=100, messages=history, tools=TOOLS
    ) as stream:
        second = stream.get_final_message()
    assert second.stop_reason == "end_turn"


def test_has_no_count_tokens_so_the_gateway_estimates(via_standin: RunningGateway) -> None:
    with httpx.Client() as http:
        resp = http.post(
            via_standin.url + "/v1/messages/count_tokens",
            json={"model": "claude-x", "messages": ASK},
        )
    assert resp.status_code == 200
    assert resp.headers["x-cc-proxy-estimate"] == "true"
    assert resp.json()["input_tokens"] >= 1
