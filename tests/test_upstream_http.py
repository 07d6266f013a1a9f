"""What goes on the wire to an upstream (`cc_proxy.upstream_http`): the request written
whole as aiohttp would write it, and the answer's head read as aiohttp reads it; pooled
connections the upstream has closed, interim answers, redirects, answers that are not
HTTP, and credentials in the upstream's URL.
The upstream here reads and writes raw bytes on its sockets and records what came."""

from __future__ import annotations

import base64

import httpx
import orjson
import pytest

from cc_proxy.standin import answer
from cc_proxy.upstream_http import UpstreamClient
from conftest import CLIENT_KEY, GatewayFactory
from harness import (
    LoopThread,
    Received,
    RecordingUpstream,
    RunningGateway,
    json_answer,
    plain_upstream,
)

WAIT = 30.0  # upper bound of every wait; never a timing expectation
REQUEST = {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def message_answer() -> bytes:
    return json_answer(orjson.dumps(answer(REQUEST)))


def through(upstream: RecordingUpstream, start_gateway: GatewayFactory) -> RunningGateway:
    """A gateway whose upstreams, both, are `upstream`."""
    return start_gateway(target={"url": upstream.url}, passthrough={"url": upstream.url})


def call(
    gateway: RunningGateway, method: str, path: str, body: bytes | None = None
) -> httpx.Response:
    headers = {"x-api-key": CLIENT_KEY, "content-type": "application/json"}
    return httpx.request(method, gateway.url + path, content=body, headers=headers, timeout=WAIT)


def test_the_target_is_the_clients_and_the_host_and_length_are_written_as_aiohttp_would(
    start_gateway: GatewayFactory, loop_thread: LoopThread
) -> None:
    def respond(received: Received) -> bytes:
        return message_answer() if received.lines[0].startswith(b"POST") else json_answer(b"{}")

    with RecordingUpstream(loop_thread, respond) as upstream:
        gateway = through(upstream, start_gateway)
        port = upstream.url.rsplit(":", 1)[1].encode()
        assert call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST)).status_code == 200
        assert call(gateway, "POST", "/v1/files", b"").status_code == 200
        # The path and query go on as the client wrote them, quoted slash and all.
        assert call(gateway, "GET", "/v1/models/a%20b%2Fc%2f?after_id=x%26y&q=1").status_code == 200
    messages, files, models = upstream.received
    assert messages.lines[0] == b"POST /v1/messages HTTP/1.1"
    assert messages.lines[1] == b"Host: 127.0.0.1:" + port
    assert b"Content-Length: %d" % len(messages.body) in messages.lines
    assert orjson.loads(messages.body)["model"] == "glm-5"  # the target's model, shaped
    # A POST without a body says so; a GET says nothing of a body.
    assert files.lines[0] == b"POST /v1/files HTTP/1.1"
    assert b"Content-Length: 0" in files.lines
    assert models.lines[0] == b"GET /v1/models/a%20b%2Fc%2f?after_id=x%26y&q=1 HTTP/1.1"
    assert not [line for line in models.lines if line.lower().startswith(b"content-length")]


def test_a_pooled_connection_the_upstream_closed_is_tried_again_for_a_get_not_a_post(
    start_gateway: GatewayFactory, loop_thread: LoopThread
) -> None:
    """An upstream may close a kept-alive connection just as the gateway takes it from
    the pool. As aiohttp does, a request that may be repeated (GET) is sent again on a new
    connection; a POST, which the upstream may have begun to act on, is not."""

    def respond(received: Received) -> bytes | None:
        if received.on_connection > 0:
            return None  # the second request on any connection: closed, unanswered
        return message_answer() if received.lines[0].startswith(b"POST") else json_answer(b"{}")

    with RecordingUpstream(loop_thread, respond) as upstream:
        gateway = through(upstream, start_gateway)
        first = call(gateway, "GET", "/v1/models")
        again = call(gateway, "GET", "/v1/models")  # connection 0, then a new one
        refused = call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST))
        fresh = call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST))
    assert [first.status_code, again.status_code, fresh.status_code] == [200, 200, 200]
    assert refused.status_code == 502
    assert refused.json()["error"]["type"] == "api_error"
    assert [(r.connection, r.on_connection) for r in upstream.received] == [
        (0, 0),
        (0, 1),  # closed: the GET is sent again
        (1, 0),
        (1, 1),  # closed: the POST fails
        (2, 0),
    ]


def test_an_interim_answer_before_the_answer_is_not_relayed(
    start_gateway: GatewayFactory, loop_thread: LoopThread
) -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    with RecordingUpstream(loop_thread, lambda _: early_hints + message_answer()) as upstream:
        gateway = through(upstream, start_gateway)
        relayed = call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST))
    assert relayed.status_code == 200
    assert "link" not in relayed.headers
    assert relayed.json()["type"] == "message"


@pytest.mark.parametrize(
    "written",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"],
    ids=["not-http", "bad-length"],
)
def test_an_answer_head_that_cannot_be_read_is_a_502_and_its_connection_is_dropped(
    start_gateway: GatewayFactory, loop_thread: LoopThread, written: bytes
) -> None:
    with RecordingUpstream(
        loop_thread, lambda r: written if r.connection == 0 else message_answer()
    ) as upstream:
        gateway = through(upstream, start_gateway)
        broken = call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST))
        after = call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST))
    assert broken.status_code == 502
    assert broken.json()["error"]["type"] == "api_error"
    assert "unreachable" in broken.json()["error"]["message"]
    assert after.status_code == 200
    assert [r.connection for r in upstream.received] == [0, 1]


@pytest.mark.parametrize(
    "headers",
    [[("x-api-key", "key\r\nx-injected: 1")], [("x-api-key", "key\nx-injected: 1")]],
    ids=["crlf", "lf"],
)
def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(
    loop_thread: LoopThread, headers: list[tuple[str, str]]
) -> None:
    async def send(url: str) -> None:
        client = UpstreamClient()
        try:
            upstream = plain_upstream(url, WAIT)
            await client.send(upstream, "GET", url + "/v1/models", headers, b"")
        finally:
            await client.close()

    with (
        RecordingUpstream(loop_thread, lambda _: json_answer(b"{}")) as upstream,
        pytest.raises(ValueError, match="line break"),
    ):
        loop_thread.run(send(upstream.url), WAIT)
    assert upstream.connections == 0


@pytest.mark.parametrize("base", ["/prefix", "/prefix/"])
def test_the_upstream_urls_path_comes_before_the_clients(
    start_gateway: GatewayFactory, loop_thread: LoopThread, base: str
) -> None:
    with RecordingUpstream(loop_thread, lambda _: message_answer()) as upstream:
        gateway = start_gateway(target={"url": upstream.url + base})
        assert call(gateway, "POST", "/v1/messages?beta=true", orjson.dumps(REQUEST)).is_success
    assert upstream.received[0].lines[0] == b"POST /prefix/v1/messages?beta=true HTTP/1.1"


def test_a_user_and_password_in_the_upstream_url_go_as_basic_credentials_never_shown(
    start_gateway: GatewayFactory, loop_thread: LoopThread
) -> None:
    """As aiohttp does: `http://user:password@host/` reaches the upstream as an
    `Authorization: Basic` header, and the URL's user:password is in no request line,
    Host header or error message."""
    with RecordingUpstream(
        loop_thread, lambda r: message_answer() if r.on_connection == 0 else b"garbage\r\n\r\n"
    ) as upstream:
        url = upstream.url.replace("http://", "http://relay:s3cr%40t@")
        gateway = start_gateway(target={"url": url})
        answered = call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST))
        broken = call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST))
    assert answered.status_code == 200
    assert broken.status_code == 502
    assert "s3cr" not in broken.text
    first = upstream.received[0]
    assert b"Authorization: Basic " + base64.b64encode(b"relay:s3cr@t") in first.lines
    assert first.lines[1] == b"Host: " + upstream.url.removeprefix("http://").encode()
    assert not [line for line in first.lines if b"s3cr" in line]


def test_a_redirect_is_relayed_to_the_client_not_followed(
    start_gateway: GatewayFactory, loop_thread: LoopThread
) -> None:
    moved = (
        b"HTTP/1.1 307 Temporary Redirect\r\n"
        b"location: http://elsewhere.invalid/v1/messages\r\ncontent-length: 0\r\n\r\n"
    )
    with RecordingUpstream(loop_thread, lambda _: moved) as upstream:
        gateway = through(upstream, start_gateway)
        relayed = call(gateway, "POST", "/v1/messages", orjson.dumps(REQUEST))
    assert relayed.status_code == 307
    assert relayed.headers["location"] == "http://elsewhere.invalid/v1/messages"
    assert len(upstream.received) == 1
