"""SPEC.md §1 compare mode and §4 shadow traffic: the client gets the passthrough's answer;
a shaped copy goes to the target, fire-and-forget, and never slows or fails the client."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest

from cc_proxy.standin import answer, message_events
from conftest import CLIENT_KEY, GatewayFactory
from harness import Reply, ScriptedUpstream, load_fixture, wait_until

ASK: dict[str, Any] = {
    "model": "claude-test-model",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "compare me"}],
}


def post(url: str, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    with httpx.Client(timeout=30) as http:
        return http.post(
            url + "/v1/messages",
            content=content,
            headers={"x-api-key": CLIENT_KEY, "content-type": "application/json", **headers},
        )


def test_client_gets_the_passthrough_answer_and_the_target_a_shaped_copy(
    start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare")
    passthrough_events = message_events(answer(ASK))
    passthrough.queue(Reply.sse(passthrough_events))
    path, headers, body = load_fixture("subagent_explore")
    with httpx.Client(timeout=30) as http:
        resp = http.post(gateway.url + path, content=body, headers=headers)
    assert resp.content == b"".join(passthrough_events)
    assert passthrough.seen[0].body == body
    assert wait_until(lambda: target.completed == 1)
    shadow = target.seen[0].json()
    assert shadow["model"] == "glm-5"
    assert shadow["stream"] is True
    original = orjson.loads(body)
    expected = {**original, "system": original["system"][1:]}  # the billing block is gone
    assert {**shadow, "model": original["model"]} == expected
    assert target.seen[0].query == "beta=true"


def test_stats_count_the_passthrough_answer_not_the_shadow(
    start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare")
    expected = answer(ASK)["usage"]
    post(gateway.url, ASK)
    assert wait_until(lambda: gateway.stats["shadow"]["requests"] == 1)
    figures = gateway.stats
    assert figures["total_requests"] == 1
    assert figures["output_tokens"] == expected["output_tokens"]
    assert len(target.seen) == 1  # the target answered too: none of it is counted
    assert figures["requests_by_mode"] == {"compare": 1}


def test_shadow_outcome_is_logged_with_the_correlation_id(
    start_gateway: GatewayFactory, target: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cc_proxy")
    gateway = start_gateway(default_mode="compare")
    resp = post(gateway.url, ASK)
    request_id = resp.headers["x-cc-proxy-request-id"]

    def shadow_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "role=shadow" in r.getMessage()]

    assert wait_until(lambda: len(shadow_lines()) == 1)
    line = shadow_lines()[0]
    assert f"id={request_id}" in line
    for field in ("status=200", "ttft_ms=", "duration_ms=", "model=glm-5", "stop_reason=end_turn"):
        assert field in line
    assert f"output_tokens={answer(ASK)['usage']['output_tokens']}" in line


def test_shadow_is_dropped_and_counted_when_the_target_is_saturated(
    start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare", target={"max_concurrent": 1})
    target.queue(Reply.hang())  # the first shadow holds the only slot
    assert post(gateway.url, ASK).status_code == 200
    assert wait_until(lambda: len(target.seen) == 1)
    second = post(gateway.url, ASK)
    assert second.status_code == 200
    assert second.content.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert gateway.stats["shadow"]["dropped"] == 1
    assert len(target.seen) == 1
    assert len(passthrough.seen) == 2


def test_a_hanging_target_does_not_hold_up_the_client(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare")
    target.queue(Reply.hang())
    resp = post(gateway.url, ASK)
    assert resp.status_code == 200
    # the client has its whole answer while the shadow is still waiting on the target
    assert gateway.gateway.shadow.in_flight == 1
    assert gateway.stats["total_requests"] == 1


def test_an_unreachable_target_does_not_fail_the_client(
    start_gateway: GatewayFactory, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare", target={"url": "http://127.0.0.1:9"})
    resp = post(gateway.url, {**ASK, "stream": False})
    assert resp.status_code == 200
    assert resp.json()["type"] == "message"
    assert wait_until(lambda: gateway.stats["shadow"]["errors"] == 1)
    assert gateway.stats["errors"] == 0


def test_a_target_error_does_not_reach_the_client(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare")
    target.queue(Reply.json({"type": "error", "error": {"type": "api_error"}}, status=500))
    resp = post(gateway.url, ASK)
    assert resp.status_code == 200
    assert wait_until(lambda: gateway.stats["shadow"]["errors"] == 1)
