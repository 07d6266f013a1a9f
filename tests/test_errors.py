"""SPEC.md §4, row by row, over real sockets: the gateway's own errors and how upstream
faults reach the client.

Every test talks to the real uvicorn server of cc-proxy, which talks to scripted aiohttp
upstreams; nothing of the HTTP layer is mocked, and no test asserts on durations.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from cc_proxy.standin import answer, message_events
from conftest import CLIENT_KEY, GatewayFactory
from harness import (
    Gate,
    LoopThread,
    Reply,
    RunningGateway,
    ScriptedUpstream,
    load_fixture,
    wait_until,
)

REQUEST_ID = "x-cc-proxy-request-id"


# --- helpers ---------------------------------------------------------------------------


def sdk(gateway: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)


def fixture_request(name: str = "basic") -> tuple[dict[str, Any], dict[str, str]]:
    """A recorded Claude Code request as SDK arguments: its body and its beta header."""
    _, headers, raw = load_fixture(name)
    body: dict[str, Any] = orjson.loads(raw)
    return body, {"anthropic-beta": headers["anthropic-beta"]}


def create(client: anthropic.Anthropic, body: dict[str, Any], headers: dict[str, str]) -> Any:
    """`messages.create` with a recorded body, not streaming."""
    rest = {k: v for k, v in body.items() if k not in {"model", "max_tokens", "messages"}}
    rest.pop("stream", None)
    return client.messages.create(
        model=body["model"],
        max_tokens=body["max_tokens"],
        messages=body["messages"],
        extra_body=rest,
        extra_headers=headers,
        timeout=30,
    )


def create_stream(
    client: anthropic.Anthropic, body: dict[str, Any], headers: dict[str, str]
) -> anthropic.Stream[Any]:
    """`messages.create(stream=True)` with a recorded body."""
    rest = {k: v for k, v in body.items() if k not in {"model", "max_tokens", "messages"}}
    rest.pop("stream", None)
    return client.messages.create(
        model=body["model"],
        max_tokens=body["max_tokens"],
        messages=body["messages"],
        stream=True,
        extra_body=rest,
        extra_headers=headers,
        timeout=30,
    )


def call(
    client: anthropic.Anthropic, body: dict[str, Any], headers: dict[str, str], *, stream: bool
) -> Any:
    """A Messages call as Claude Code makes it (streaming) or not."""
    if stream:
        return create_stream(client, body, headers)
    return create(client, body, headers)


def data_of(event: bytes) -> Any:
    """The decoded `data:` of one SSE event."""
    return orjson.loads(event.split(b"data: ", 1)[1])


def check_gateway_error(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    expected_status: int,
    expected_type: str,
) -> dict[str, Any]:
    """A gateway-produced error: status, Anthropic shape, JSON type, correlation id."""
    assert status == expected_status
    assert headers["content-type"].startswith("application/json")
    assert len(headers[REQUEST_ID]) == 32
    body: dict[str, Any] = orjson.loads(content)
    assert set(body) == {"type", "error"}
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == expected_type
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body


def check_sdk_error(
    error: anthropic.APIStatusError, *, expected_status: int, expected_type: str
) -> dict[str, Any]:
    body = check_gateway_error(
        error.status_code,
        error.response.headers,
        error.response.content,
        expected_status=expected_status,
        expected_type=expected_type,
    )
    assert error.type == expected_type  # the SDK read the shape too
    return body


def sse_events(raw: bytes) -> list[tuple[str | None, bytes]]:
    """(event name, data) of each complete event in `raw`; the stream must end on one."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    events: list[tuple[str | None, bytes]] = []
    for block in raw[:-2].split(b"\n\n"):
        name: str | None = None
        data: list[bytes] = []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b": ")
            if field == b"event":
                name = value.decode()
            elif field == b"data":
                data.append(value)
        events.append((name, b"\n".join(data)))
    return events


def check_sse_error(name: str | None, data: bytes, expected_type: str) -> None:
    assert name == "error"
    body = orjson.loads(data)
    assert set(body) == {"type", "error"}
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == expected_type
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


def stats(gateway: RunningGateway) -> dict[str, Any]:
    """`GET /api/stats`, over the socket."""
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.get("/api/stats")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def stream_events(body: dict[str, Any], *, pieces: int | None = None) -> list[bytes]:
    """What the stand-in model streams for `body`: one item per SSE event."""
    return message_events(answer(body), pieces=pieces)


def closed_port() -> int:
    """A loopback port on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def in_flight(gateway: RunningGateway) -> int:
    limiter = gateway.gateway.upstreams["target"].limiter
    assert limiter is not None
    return limiter.in_flight


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


# --- 400: a body that is not JSON, or not an object ------------------------------------
# The SDK only ever sends a JSON object, so these requests are written with httpx, with
# the headers of a recorded Claude Code request.

_BASIC_BODY = load_fixture("basic")[2]


NOT_A_JSON_OBJECT = {
    "empty": b"",
    "garbage": b"{not json",
    "truncated-claude-code-body": _BASIC_BODY[:500],
    "not-utf8": b"\xff\xfe{}",
    "two-values": b"{} {}",
    "empty-array": b"[]",
    "array-of-object": b'[{"model": "x"}]',
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "boolean": b"true",
}


@pytest.mark.parametrize("raw", NOT_A_JSON_OBJECT.values(), ids=NOT_A_JSON_OBJECT.keys())
def test_messages_body_that_is_not_a_json_object_is_400_invalid_request(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    raw: bytes,
) -> None:
    gateway = start_gateway()
    path, headers, _ = load_fixture("basic")
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post(path, content=raw, headers=headers)
    check_gateway_error(
        response.status_code,
        response.headers,
        response.content,
        expected_status=400,
        expected_type="invalid_request_error",
    )
    assert target.seen == []
    assert passthrough.seen == []


@pytest.mark.parametrize("mode", ["compare", "anthropic-only"])
def test_messages_body_that_is_not_json_is_400_in_every_mode(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    mode: str,
) -> None:
    gateway = start_gateway(default_mode=mode, allow_anthropic_only=True)
    path, headers, _ = load_fixture("basic")
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post(path, content=b"{not json", headers=headers)
    check_gateway_error(
        response.status_code,
        response.headers,
        response.content,
        expected_status=400,
        expected_type="invalid_request_error",
    )
    assert target.seen == []
    assert passthrough.seen == []


# --- 413: a body over server.max_body_bytes ---------------------------------------------


def test_body_with_content_length_over_max_body_bytes_is_413_request_too_large(
    start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(server={"max_body_bytes": 1000})
    body, headers = fixture_request()  # a real Claude Code request: about 77 KB
    with pytest.raises(anthropic.APIStatusError) as caught:
        create(sdk(gateway), body, headers)
    check_sdk_error(caught.value, expected_status=413, expected_type="request_too_large")
    assert target.seen == []
    assert passthrough.seen == []


def test_chunked_body_growing_past_max_body_bytes_is_413_request_too_large(
    start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(server={"max_body_bytes": 1000})
    raw = orjson.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "x" * 1400}],
        }
    )
    assert len(raw) > 1000

    def chunks() -> Iterator[bytes]:  # no length known in advance: sent chunked
        for start in range(0, len(raw), 250):
            yield raw[start : start + 250]

    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post(
            "/v1/messages",
            content=chunks(),
            headers={"content-type": "application/json", "x-api-key": CLIENT_KEY},
        )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    check_gateway_error(
        response.status_code,
        response.headers,
        response.content,
        expected_status=413,
        expected_type="request_too_large",
    )
    assert target.seen == []
    assert passthrough.seen == []


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_large_body_over_max_body_bytes_gets_its_413_and_the_connection_stays_usable(
    start_gateway: GatewayFactory, target: ScriptedUpstream, framing: str
) -> None:
    # Far more than the socket buffers hold: the client is still sending when the gateway
    # has decided. It must get the 413, not a reset, and its connection must stay in step.
    gateway = start_gateway(server={"max_body_bytes": 1000})
    size = 8 * 1024 * 1024
    piece = b"x" * 65536

    def chunks() -> Iterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    content: bytes | Iterator[bytes] = piece * (size // len(piece))
    if framing == "chunked":
        content = chunks()
    path, headers, _ = load_fixture("basic")
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post(path, content=content, headers=headers)
        check_gateway_error(
            response.status_code,
            response.headers,
            response.content,
            expected_status=413,
            expected_type="request_too_large",
        )
        small = orjson.dumps({"model": "m", "max_tokens": 8, "messages": []})
        assert len(small) < 1000
        after = http.post(path, content=small, headers=headers)
    assert after.status_code == 200
    assert len(target.seen) == 1
    assert target.seen[0].json()["messages"] == []


def test_body_of_exactly_max_body_bytes_is_forwarded(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(server={"max_body_bytes": 1000})
    skeleton = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": ""}]}
    padding = 1000 - len(orjson.dumps(skeleton))
    skeleton["messages"] = [{"role": "user", "content": "y" * padding}]
    raw = orjson.dumps(skeleton)
    assert len(raw) == 1000
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post(
            "/v1/messages", content=raw, headers={"content-type": "application/json"}
        )
    assert response.status_code == 200
    assert len(target.seen) == 1


# --- 502: upstream refused, unreachable, TLS failure ------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_target_refusing_connections_is_502_api_error(
    start_gateway: GatewayFactory, stream: bool
) -> None:
    gateway = start_gateway(target={"url": f"http://127.0.0.1:{closed_port()}"})
    body, headers = fixture_request()
    with pytest.raises(anthropic.APIStatusError) as caught:
        call(sdk(gateway), body, headers, stream=stream)
    check_sdk_error(caught.value, expected_status=502, expected_type="api_error")
    assert wait_until(lambda: stats(gateway)["errors"] == 1)
    assert in_flight(gateway) == 0


def test_passthrough_refusing_connections_is_502_api_error(
    start_gateway: GatewayFactory,
) -> None:
    gateway = start_gateway(
        default_mode="anthropic-only",
        allow_anthropic_only=True,
        passthrough={"url": f"http://127.0.0.1:{closed_port()}"},
    )
    body, headers = fixture_request()
    with pytest.raises(anthropic.APIStatusError) as caught:
        create(sdk(gateway), body, headers)
    check_sdk_error(caught.value, expected_status=502, expected_type="api_error")


def test_target_with_unresolvable_host_is_502_api_error(start_gateway: GatewayFactory) -> None:
    # `.invalid` never resolves (RFC 6761)
    gateway = start_gateway(target={"url": "http://cc-proxy-test.invalid"})
    body, headers = fixture_request()
    with pytest.raises(anthropic.APIStatusError) as caught:
        create(sdk(gateway), body, headers)
    check_sdk_error(caught.value, expected_status=502, expected_type="api_error")


def test_tls_failure_to_target_is_502_api_error(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    # https:// to a port that speaks plain HTTP: the TLS handshake fails. The timeout is
    # only a backstop: a hang would surface as 504 and fail the test.
    plain = target.url.removeprefix("http://")
    gateway = start_gateway(target={"url": f"https://{plain}", "timeout_secs": 20})
    body, headers = fixture_request()
    with pytest.raises(anthropic.APIStatusError) as caught:
        create(sdk(gateway), body, headers)
    check_sdk_error(caught.value, expected_status=502, expected_type="api_error")
    assert target.seen == []  # no request was ever made over the failed handshake
    assert in_flight(gateway) == 0


# --- 504: no answer within timeout_secs --------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_upstream_silent_past_timeout_is_504_timeout_error_and_its_connection_closed(
    start_gateway: GatewayFactory, target: ScriptedUpstream, stream: bool
) -> None:
    target.queue(Reply.hang())
    gateway = start_gateway(target={"timeout_secs": 0.5})
    body, headers = fixture_request()
    with pytest.raises(anthropic.APIStatusError) as caught:
        call(sdk(gateway), body, headers, stream=stream)
    check_sdk_error(caught.value, expected_status=504, expected_type="timeout_error")
    assert len(target.seen) == 1
    # the upstream sees its connection closed: a self-hosted server stops working on it
    assert wait_until(lambda: len(target.aborted) == 1)
    assert wait_until(lambda: stats(gateway)["errors"] == 1)
    assert in_flight(gateway) == 0


# --- 529: max_concurrent in flight --------------------------------------------------------


def test_request_over_max_concurrent_is_529_overloaded_after_bounded_wait(
    start_gateway: GatewayFactory, target: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    gate = Gate(loop_thread)
    body, headers = fixture_request()
    target.queue(Reply.sse(stream_events(body), gate=gate, hold_at=2))
    gateway = start_gateway(target={"max_concurrent": 1, "queue_wait_secs": 0.2})
    client = sdk(gateway)

    holder = create_stream(client, body, headers)  # headers relayed: the slot is held
    events = iter(holder)
    assert next(events).type == "message_start"
    assert in_flight(gateway) == 1

    with pytest.raises(anthropic.APIStatusError) as caught:
        create(client, body, headers)
    check_sdk_error(caught.value, expected_status=529, expected_type="overloaded_error")
    assert isinstance(caught.value, anthropic.OverloadedError)  # the SDK retries these
    assert len(target.seen) == 1  # the rejected request never reached the target

    gate.open()
    assert [event.type for event in events][-1] == "message_stop"
    holder.close()

    # the slot is back: nothing is left counted in flight and the next request succeeds
    assert wait_until(lambda: in_flight(gateway) == 0)
    message = create(client, body, headers)
    assert message.type == "message"
    assert in_flight(gateway) == 0
    assert len(target.seen) == 2


def test_request_over_max_concurrent_via_streaming_call_is_529(
    start_gateway: GatewayFactory, target: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    gate = Gate(loop_thread)
    body, headers = fixture_request()
    target.queue(Reply.sse(stream_events(body), gate=gate, hold_at=2))
    gateway = start_gateway(target={"max_concurrent": 1, "queue_wait_secs": 0.2})
    client = sdk(gateway)
    holder = create_stream(client, body, headers)
    events = iter(holder)
    assert next(events).type == "message_start"

    with pytest.raises(anthropic.APIStatusError) as caught:
        create_stream(client, body, headers)
    check_sdk_error(caught.value, expected_status=529, expected_type="overloaded_error")

    gate.open()
    holder.close()
    assert wait_until(lambda: in_flight(gateway) == 0)


def test_waiting_request_that_gets_the_slot_within_the_wait_succeeds(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    loop_thread: LoopThread,
    pool: ThreadPoolExecutor,
) -> None:
    gate = Gate(loop_thread)
    body, headers = fixture_request()
    target.queue(Reply.sse(stream_events(body), gate=gate, hold_at=2))
    # A long wait, so that the slot surely comes free inside it on a slow machine too.
    gateway = start_gateway(target={"max_concurrent": 1, "queue_wait_secs": 60})
    limiter = gateway.gateway.upstreams["target"].limiter
    assert limiter is not None
    client = sdk(gateway)

    holder = create_stream(client, body, headers)
    events = iter(holder)
    assert next(events).type == "message_start"

    waiting = pool.submit(create, client, body, headers)
    assert wait_until(lambda: len(limiter._waiters) == 1)  # it is queued for the slot
    assert len(target.seen) == 1

    gate.open()  # the first stream finishes and hands its slot over
    assert [event.type for event in events][-1] == "message_stop"
    holder.close()

    message = waiting.result(timeout=30)
    assert message.type == "message"
    assert len(target.seen) == 2
    assert wait_until(lambda: in_flight(gateway) == 0)
    assert stats(gateway)["errors"] == 0


# --- the upstream dies mid-stream -----------------------------------------------------------


@pytest.mark.parametrize("cut", [5, -1], ids=["after-first-deltas", "before-message-stop"])
def test_upstream_closing_mid_stream_ends_with_sse_error_after_what_was_delivered(
    start_gateway: GatewayFactory, target: ScriptedUpstream, cut: int
) -> None:
    body, headers = fixture_request()
    events = stream_events(body)
    if cut == -1:
        # An SGLang-style message_delta that repeats the input tokens: delivered, it must
        # still not be counted twice.
        delta = data_of(events[-2])
        assert delta["type"] == "message_delta"
        delta["usage"]["input_tokens"] = data_of(events[0])["message"]["usage"]["input_tokens"]
        events[-2] = b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n"
    delivered = events[:cut]
    target.queue(Reply.sse(delivered, then="close"))
    gateway = start_gateway()
    client = sdk(gateway)

    rest = {k: v for k, v in body.items() if k not in {"model", "max_tokens", "messages"}}
    rest.pop("stream", None)
    with client.messages.with_streaming_response.create(
        model=body["model"],
        max_tokens=body["max_tokens"],
        messages=body["messages"],
        stream=True,
        extra_body=rest,
        extra_headers=headers,
    ) as response:
        assert response.status_code == 200
        assert len(response.headers[REQUEST_ID]) == 32
        raw = b"".join(response.iter_bytes())

    # every event the upstream sent, byte for byte, then one error event, then the end
    expected = b"".join(delivered)
    assert raw.startswith(expected)
    tail = sse_events(raw[len(expected) :])
    assert len(tail) == 1
    check_sse_error(*tail[0], "api_error")

    start = data_of(delivered[0])["message"]["usage"]
    output = start["output_tokens"]
    if cut == -1:
        output = data_of(delivered[-1])["usage"]["output_tokens"]
    assert wait_until(lambda: stats(gateway)["errors"] == 1)
    counted = stats(gateway)
    assert counted["total_requests"] == 1
    assert counted["input_tokens"] == start["input_tokens"] > 0
    assert counted["output_tokens"] == output
    assert counted["tool_calls"] == (1 if cut == -1 else 0)
    assert counted["client_disconnects"] == 0
    assert in_flight(gateway) == 0


def test_upstream_closing_mid_event_never_relays_the_broken_event(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    body, _ = fixture_request()
    events = stream_events(body)
    whole, broken = events[:4], events[4][:25]
    target.queue(Reply.sse([*whole, broken], then="close"))
    gateway = start_gateway()
    path, headers, raw_body = load_fixture("basic")
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post(path, content=raw_body, headers=headers)
    assert response.status_code == 200
    # the half event is held back, so the error event follows a well-formed stream
    expected = b"".join(whole)
    assert response.content.startswith(expected)
    tail = sse_events(response.content[len(expected) :])
    assert len(tail) == 1
    check_sse_error(*tail[0], "api_error")
    assert wait_until(lambda: stats(gateway)["errors"] == 1)


def test_sdk_stream_raises_the_mid_stream_error_after_the_delivered_events(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    body, headers = fixture_request()
    delivered = stream_events(body)[:5]
    target.queue(Reply.sse(delivered, then="close"))
    gateway = start_gateway()
    seen: list[str] = []

    def consume(stream: anthropic.Stream[Any]) -> None:
        seen.extend(event.type for event in stream)

    with pytest.raises(anthropic.APIStatusError) as caught:
        consume(create_stream(sdk(gateway), body, headers))
    # ping is the SDK's to skip
    assert seen == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ]
    assert caught.value.body is not None
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "api_error"


def test_upstream_stalling_mid_stream_past_timeout_ends_with_sse_timeout_error(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    body, _ = fixture_request()
    delivered = stream_events(body)[:5]
    target.queue(Reply.sse(delivered, then="hang"))
    gateway = start_gateway(target={"timeout_secs": 0.5})
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        path, fixture_headers, raw_body = load_fixture("basic")
        response = http.post(path, content=raw_body, headers=fixture_headers)
    assert response.status_code == 200
    assert len(response.headers[REQUEST_ID]) == 32
    expected = b"".join(delivered)
    assert response.content.startswith(expected)
    tail = sse_events(response.content[len(expected) :])
    assert len(tail) == 1
    check_sse_error(*tail[0], "timeout_error")
    assert wait_until(lambda: len(target.aborted) == 1)  # the stalled request is dropped
    assert wait_until(lambda: stats(gateway)["errors"] == 1)
    assert stats(gateway)["input_tokens"] > 0
    assert in_flight(gateway) == 0


def test_a_stream_slower_in_all_than_the_timeout_but_never_silent_that_long_completes(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    # timeout_secs bounds each silence, not the whole answer: 0.2 s between events, 0.5 s
    # allowed, and the answer takes several times 0.5 s.
    body, _ = fixture_request()
    events = stream_events(body)
    assert len(events) * 0.2 > 4 * 0.5
    target.queue(Reply.sse(events, delay=0.2))
    gateway = start_gateway(target={"timeout_secs": 0.5})
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        path, fixture_headers, raw_body = load_fixture("basic")
        response = http.post(path, content=raw_body, headers=fixture_headers)
    assert response.status_code == 200
    assert response.content == b"".join(events)
    assert stats(gateway)["errors"] == 0


# --- upstream error answers pass through unchanged ------------------------------------------

RATE_LIMIT_HEADERS = {
    "retry-after": "17",
    "request-id": "req_011CUpstreamErr0001",
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "0",
    "anthropic-ratelimit-requests-reset": "2026-05-13T10:00:17Z",
    "anthropic-ratelimit-input-tokens-limit": "30000",
    "anthropic-ratelimit-input-tokens-remaining": "0",
    "anthropic-ratelimit-input-tokens-reset": "2026-05-13T10:00:17Z",
    "anthropic-ratelimit-output-tokens-limit": "8000",
    "anthropic-ratelimit-tokens-remaining": "0",
    "x-should-retry": "true",
}
ERROR_KINDS = {429: "rate_limit_error", 529: "overloaded_error", 500: "api_error"}


@pytest.mark.parametrize("status", [429, 529, 500])
@pytest.mark.parametrize("mode", ["target", "anthropic-only"])
def test_upstream_error_answer_passes_through_with_status_body_and_headers_unchanged(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    status: int,
    mode: str,
) -> None:
    # Odd spacing and a trailing newline: any re-encoding would show.
    raw = (
        b'{"type": "error",  "error": {"type": "'
        + ERROR_KINDS[status].encode()
        + b'", "message": "upstream says no \\u00e9"}}\n'
    )
    upstream = target if mode == "target" else passthrough
    upstream.queue(Reply.json(raw, status=status, headers=RATE_LIMIT_HEADERS))
    gateway = start_gateway(default_mode=mode, allow_anthropic_only=True)
    body, headers = fixture_request()
    with pytest.raises(anthropic.APIStatusError) as caught:
        create(sdk(gateway), body, headers)
    response = caught.value.response
    assert response.status_code == status
    assert response.content == raw
    for name, value in RATE_LIMIT_HEADERS.items():
        assert response.headers.get_list(name) == [value], name
    assert response.headers["content-type"] == "application/json"
    assert len(response.headers[REQUEST_ID]) == 32  # every answer is correlated
    assert caught.value.request_id == RATE_LIMIT_HEADERS["request-id"]
    assert len(upstream.seen) == 1
    assert wait_until(lambda: stats(gateway)["total_requests"] == 1)


@pytest.mark.parametrize("complete", [True, False], ids=["with-message_stop", "cut-short"])
def test_close_delimited_stream_is_broken_only_without_message_stop(
    start_gateway: GatewayFactory, target: ScriptedUpstream, complete: bool
) -> None:
    body, _ = fixture_request()
    events = stream_events(body)
    sent = events if complete else events[:5]
    target.queue(Reply.close_delimited(b"".join(sent)))
    gateway = start_gateway()
    with httpx.Client(timeout=30) as http:
        raw = http.post(gateway.url + "/v1/messages", json={**body, "stream": True}).content
    assert raw.startswith(b"".join(sent))
    rest = raw[len(b"".join(sent)) :]
    if complete:
        assert rest == b""
    else:
        tail = sse_events(rest)
        assert len(tail) == 1
        check_sse_error(*tail[0], "api_error")
    assert wait_until(lambda: stats(gateway)["total_requests"] == 1)
    assert stats(gateway)["errors"] == (0 if complete else 1)


def test_upstream_that_never_accepts_the_connection_is_502_unreachable(
    start_gateway: GatewayFactory,
) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so the
    # gateway's connect times out with no connection ever made.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        gateway = start_gateway(target={"url": f"http://127.0.0.1:{port}", "timeout_secs": 0.5})
        with httpx.Client(timeout=30) as http:
            resp = http.post(gateway.url + "/v1/messages", json={"model": "m", "messages": []})
        body = check_gateway_error(
            resp.status_code,
            resp.headers,
            resp.content,
            expected_status=502,
            expected_type="api_error",
        )
        assert "unreachable" in body["error"]["message"]
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
