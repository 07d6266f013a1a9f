"""SPEC.md §4: a client that goes away cancels the upstream request at once, even while
the upstream is still thinking and has sent nothing."""

from __future__ import annotations

import httpx
import pytest

from harness import Reply, RunningGateway, ScriptedUpstream, wait_until

ASK = {
    "model": "claude-test-model",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "think hard"}],
}


def leave_before_the_first_byte(gateway: RunningGateway, target: ScriptedUpstream) -> None:
    """Ask a target that never answers, and hang up after a moment."""
    target.queue(Reply.hang())
    with (
        httpx.Client(timeout=httpx.Timeout(30, read=0.3)) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.post(gateway.url + "/v1/messages", json=ASK)


def test_client_leaving_before_the_first_byte_closes_the_upstream_request(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    leave_before_the_first_byte(gateway, target)
    # the stand-in's handler is cancelled when its connection closes
    assert wait_until(lambda: len(target.aborted) == 1)
    assert wait_until(lambda: gateway.stats["client_disconnects"] == 1)
    assert gateway.gateway.upstreams["target"].limiter.in_flight == 0  # type: ignore[union-attr]


def test_the_gateway_serves_the_next_request_after_a_client_left(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    leave_before_the_first_byte(gateway, target)
    with httpx.Client(timeout=30) as http:
        resp = http.post(gateway.url + "/v1/messages", json=ASK)
    assert resp.status_code == 200
    assert resp.content.endswith(b'data: {"type":"message_stop"}\n\n')
