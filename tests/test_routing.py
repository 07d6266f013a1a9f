"""SPEC.md §1 and §3: which upstream sees what, with which body and headers, and what the
client gets back — byte for byte."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import anthropic
import httpx
import orjson
import pytest

from cc_proxy.standin import answer, message_events
from conftest import CLIENT_KEY, GatewayFactory
from harness import Gate, LoopThread, Reply, RunningGateway, ScriptedUpstream, load_fixture

HELLO = {
    "model": "claude-test-model",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello"}],
}


def post_raw(
    gateway: RunningGateway, body: bytes, path: str = "/v1/messages", **headers: str
) -> tuple[httpx.Response, bytes]:
    """POST and read the answer's raw bytes as the gateway sent them."""
    request_headers = httpx.Headers({"content-type": "application/json", "x-api-key": CLIENT_KEY})
    request_headers.update(headers)
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", gateway.url + path, content=body, headers=request_headers) as resp,
    ):
        return resp, b"".join(resp.iter_raw())


def test_streamed_answer_reaches_the_client_byte_for_byte(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    events = message_events(answer({**HELLO, "tools": [{"name": "Bash"}]}))
    target.queue(Reply.sse(events))
    resp, raw = post_raw(gateway, orjson.dumps({**HELLO, "stream": True}))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream"
    assert raw == b"".join(events)


def test_events_split_across_writes_or_merged_in_one_are_relayed_unchanged(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    stream = b"".join(message_events(answer(HELLO)))
    # one event cut into 7-byte writes, then the rest of the stream in a single write
    first_event_end = stream.index(b"\n\n") + 2
    first_event = stream[:first_event_end]
    pieces = [first_event[i : i + 7] for i in range(0, first_event_end, 7)]
    target.queue(Reply.sse([*pieces, stream[first_event_end:]]))
    _, raw = post_raw(gateway, orjson.dumps({**HELLO, "stream": True}))
    assert raw == stream


def test_crlf_event_stream_is_relayed_unchanged(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    events = [e.replace(b"\n", b"\r\n") for e in message_events(answer(HELLO))]
    target.queue(Reply.sse(events))
    _, raw = post_raw(gateway, orjson.dumps({**HELLO, "stream": True}))
    assert raw == b"".join(events)
    assert gateway.stats["output_tokens"] > 0


def test_json_answer_reaches_the_client_byte_for_byte(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    # spacing no serializer would produce: any re-encoding would show
    body = json.dumps(answer(HELLO), indent=3).encode() + b"\n"
    target.queue(Reply.json(body, headers={"request-id": "req_42"}))
    resp, raw = post_raw(gateway, orjson.dumps(HELLO))
    assert raw == body
    assert resp.headers["request-id"] == "req_42"


def test_target_mode_sends_everything_to_the_target_and_nothing_to_the_passthrough(
    gateway: RunningGateway, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    path, headers, body = load_fixture("basic")
    post_raw(gateway, body, path, **headers)
    with httpx.Client(base_url=gateway.url) as http:
        http.post("/v1/messages/count_tokens", json=HELLO)
        http.get("/v1/models")
        http.head("/")
    assert [(s.method, s.path) for s in target.seen] == [
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models"),
        ("HEAD", "/"),
    ]
    assert passthrough.seen == []


def test_query_string_is_kept(gateway: RunningGateway, target: ScriptedUpstream) -> None:
    path, headers, body = load_fixture("basic")
    assert path == "/v1/messages?beta=true"
    post_raw(gateway, body, path, **headers)
    assert target.seen[0].query == "beta=true"


def test_target_body_gets_the_model_and_loses_the_billing_block_and_nothing_else_changes(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    path, headers, body = load_fixture("subagent_explore")
    original = json.loads(body)
    assert original["model"].startswith("claude-haiku")
    post_raw(gateway, body, path, **headers)
    sent = target.seen[0].json()
    assert sent["model"] == "glm-5"
    expected = {**original, "system": original["system"][1:]}
    assert {**sent, "model": original["model"]} == expected


def test_target_defaults_are_added_only_where_the_request_lacks_them(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(target={"temperature": 0.6, "top_p": 0.95, "max_tokens": 999})
    post_raw(gateway, orjson.dumps({**HELLO, "temperature": 1.0}))
    sent = target.seen[0].json()
    assert sent["temperature"] == 1.0  # the request's own value stays
    assert sent["top_p"] == 0.95
    assert sent["max_tokens"] == 64


def test_passthrough_gets_the_clients_original_bytes(
    start_gateway: GatewayFactory, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="anthropic-only", allow_anthropic_only=True)
    path, headers, body = load_fixture("agent_haiku")
    odd = json.dumps(json.loads(body), indent=1, ensure_ascii=True).encode()
    post_raw(gateway, odd, path, **headers)
    assert passthrough.seen[0].body == odd
    assert passthrough.seen[0].query == "beta=true"


def test_anthropic_and_claude_code_headers_pass_through(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    path, headers, body = load_fixture("subagent_explore")
    post_raw(gateway, body, path, **headers)
    seen = target.seen[0].headers
    for name in (
        "anthropic-version",
        "anthropic-beta",
        "x-claude-code-session-id",
        "x-claude-code-agent-id",
        "user-agent",
        "x-stainless-retry-count",
    ):
        assert seen[name] == headers[next(k for k in headers if k.lower() == name)]


def test_hop_by_hop_headers_are_dropped_and_host_is_the_upstreams(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    post_raw(
        gateway,
        orjson.dumps(HELLO),
        connection="keep-alive, x-private-hop",
        **{"x-private-hop": "1", "keep-alive": "timeout=5", "te": "trailers", "x-kept": "yes"},
    )
    seen = target.seen[0].headers
    assert "x-private-hop" not in seen
    assert "keep-alive" not in seen
    assert "te" not in seen
    assert seen["x-kept"] == "yes"
    assert seen["host"] == target.url.removeprefix("http://")


def test_the_upstream_gets_no_header_the_client_did_not_send(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    # A bare HTTP/1.1 request: any HTTP client library would add headers of its own.
    body = orjson.dumps(HELLO)
    address = urlsplit(gateway.url)
    assert address.hostname is not None
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=30) as client:
        client.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%b" % (len(body), body)
        )
        answer_bytes = b"".join(iter(lambda: client.recv(65536), b""))
    assert answer_bytes.startswith(b"HTTP/1.1 200")
    seen = {name.lower() for name in target.seen[0].headers}
    # the upstream's own host and length, and identity for an answer the gateway counts
    assert seen - {"x-api-key", "authorization"} == {"host", "content-length", "accept-encoding"}
    assert target.seen[0].headers["accept-encoding"] == "identity"


def test_upstream_status_and_headers_reach_the_client_unchanged(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    target.queue(
        Reply.json(
            error,
            status=429,
            headers={
                "retry-after": "17",
                "request-id": "req_upstream_1",
                "anthropic-ratelimit-requests-remaining": "0",
            },
        )
    )
    resp, raw = post_raw(gateway, orjson.dumps(HELLO))
    assert resp.status_code == 429
    assert orjson.loads(raw) == error
    assert resp.headers["retry-after"] == "17"
    assert resp.headers["request-id"] == "req_upstream_1"
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "0"


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/models", "/health", "/api/stats"])
def test_every_response_carries_a_correlation_id(gateway: RunningGateway, path: str) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        resp = http.post(path, json=HELLO) if path == "/v1/messages" else http.get(path)
    assert len(resp.headers["x-cc-proxy-request-id"]) == 32


def test_anthropic_sdk_round_trip_through_the_target(
    client: anthropic.Anthropic, target: ScriptedUpstream
) -> None:
    message = client.messages.create(**HELLO)  # type: ignore[call-overload]
    assert message.model == "glm-5"
    with client.messages.stream(**HELLO) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.usage.output_tokens > 0
    assert len(target.seen) == 2


class TestCountTokens:
    def test_target_without_count_tokens_gets_a_local_estimate(
        self, gateway: RunningGateway, target: ScriptedUpstream
    ) -> None:
        target.queue(Reply.json({"detail": "Not Found"}, status=404))
        _path, headers, body = load_fixture("basic")
        resp, raw = post_raw(gateway, body, "/v1/messages/count_tokens", **headers)
        assert resp.status_code == 200
        estimate = orjson.loads(raw)
        assert list(estimate) == ["input_tokens"]
        # the recorded request is about 76 KB of JSON: thousands of tokens, not millions
        assert 5_000 < estimate["input_tokens"] < 40_000

    @pytest.mark.parametrize("status", [405, 501])
    def test_other_no_such_endpoint_answers_also_get_the_estimate(
        self, gateway: RunningGateway, target: ScriptedUpstream, status: int
    ) -> None:
        target.queue(Reply.json({"error": "nope"}, status=status))
        resp, raw = post_raw(gateway, orjson.dumps(HELLO), "/v1/messages/count_tokens")
        assert resp.status_code == 200
        assert orjson.loads(raw)["input_tokens"] >= 1

    def test_target_count_tokens_answer_is_relayed_with_the_model_rewritten(
        self, gateway: RunningGateway, target: ScriptedUpstream
    ) -> None:
        target.queue(Reply.json({"input_tokens": 1234}))
        _resp, raw = post_raw(gateway, orjson.dumps(HELLO), "/v1/messages/count_tokens")
        assert orjson.loads(raw) == {"input_tokens": 1234}
        sent = target.seen[0].json()
        assert sent["model"] == "glm-5"
        assert "temperature" not in sent

    def test_count_tokens_goes_to_the_passthrough_unchanged_in_compare_mode(
        self,
        start_gateway: GatewayFactory,
        target: ScriptedUpstream,
        passthrough: ScriptedUpstream,
    ) -> None:
        gateway = start_gateway(default_mode="compare")
        passthrough.queue(Reply.json({"input_tokens": 7}))
        body = orjson.dumps(HELLO)
        _resp, raw = post_raw(gateway, body, "/v1/messages/count_tokens")
        assert orjson.loads(raw) == {"input_tokens": 7}
        assert passthrough.seen[0].body == body
        assert target.seen == []


@pytest.mark.parametrize(
    "content_type", ["text/event-stream", "application/json"], ids=["sse", "json"]
)
def test_answers_are_relayed_as_they_arrive_not_buffered_whole(
    gateway: RunningGateway, target: ScriptedUpstream, loop_thread: LoopThread, content_type: str
) -> None:
    # A relay that buffered the answer whole would never let the client see its first
    # part, and the upstream sends the rest only once the first part got through.
    stream = b"".join(message_events(answer(HELLO)))
    first_event_end = stream.index(b"\n\n") + 2
    gate = Gate(loop_thread)
    parts = [stream[:first_event_end], stream[first_event_end:]]
    target.queue(Reply.sse(parts, headers={"content-type": content_type}, gate=gate, hold_at=1))
    received = b""
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", gateway.url + "/v1/messages", json={**HELLO, "stream": True}) as resp,
    ):
        for chunk in resp.iter_raw():
            received += chunk
            if len(received) >= first_event_end:
                gate.open()
    assert received == stream


def test_a_chunked_request_body_reaches_the_upstream_whole(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    body = orjson.dumps(HELLO)

    def pieces() -> Iterator[bytes]:  # no length known in advance: sent chunked
        yield body[:10]
        yield body[10:]

    with httpx.Client(timeout=30) as http:
        resp = http.post(gateway.url + "/v1/messages", content=pieces())
    assert resp.status_code == 200
    seen = target.seen[0]
    assert seen.json()["messages"] == HELLO["messages"]
    assert seen.headers["content-length"] == str(len(seen.body))
    assert "transfer-encoding" not in seen.headers


def test_sdk_count_tokens_on_a_target_without_it_gets_the_estimate(
    client: anthropic.Anthropic,
) -> None:
    counted = client.messages.count_tokens(
        model="claude-test-model", messages=[{"role": "user", "content": "hello " * 400}]
    )
    assert 400 <= counted.input_tokens <= 1200


def test_gateway_listens_on_ipv6_loopback(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(server={"listen_address": "[::1]:0"})
    assert gateway.url.startswith("http://[::1]:")
    _, raw = post_raw(gateway, orjson.dumps(HELLO))
    assert orjson.loads(raw)["type"] == "message"
