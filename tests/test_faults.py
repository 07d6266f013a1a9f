"""The fault matrix: everything around the gateway misbehaves, one row at a time.

Every row holds the gateway to the same four promises:
1. the client gets the right answer: a status and an Anthropic-shaped body, or a
   well-formed SSE stream that ends in `event: error`;
2. `/api/stats` is exact: it moves by what the client received, counted here on the
   client's side from the bytes it got, nothing twice;
3. nothing is left behind: the gateway's tasks, client connections, upstream connections,
   target slots and this process's file descriptors are back where they were;
4. the next request works.

Real sockets throughout: the real gateway, stand-in upstreams that misbehave on cue,
httpx as the client. Only row 9 asserts a duration, the one the issue sets (100 ms).
"""

from __future__ import annotations

import gc
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import orjson
import pytest

from cc_proxy.standin import answer, message_events, sse_event
from conftest import CLIENT_KEY, GatewayFactory
from harness import Gate, Held, LoopThread, Reply, RunningGateway, ScriptedUpstream, wait_until
from test_errors import check_gateway_error, check_sse_error, closed_port
from test_process import GatewayProcess, gateway_env, refused

ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "stream": True,
    "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": "list the files, then say what you saw"}],
}
PLAIN_ASK: dict[str, Any] = {
    **{k: v for k, v in ASK.items() if k != "tools"},
    "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
}
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
WAIT = 30.0  # upper bound of every wait; never a timing expectation


def events_for(ask: dict[str, Any] = ASK) -> list[bytes]:
    """What the stand-in model streams for `ask`: one item per SSE event."""
    return message_events(answer(ask))


ERROR_EVENT = sse_event(
    {"type": "error", "error": {"type": "overloaded_error", "message": "upstream overloaded"}}
)


# --- what the client received, counted on its side --------------------------------------


def client_sse_events(raw: bytes) -> list[tuple[str, bytes]]:
    """(event, data) of each event a spec-following SSE client dispatches from `raw`: any
    line ending, `event: message` by default, an event still open at the end dropped."""
    events: list[tuple[str, bytes]] = []
    name, data = "message", list[bytes]()
    lines = re.split(rb"\r\n|\r|\n", raw)
    for line in lines[:-1]:  # the last piece has no line end yet
        if not line:
            if data:
                events.append((name, b"\n".join(data)))
            name, data = "message", []
            continue
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"event":
            name = value.decode()
        elif field == b"data":
            data.append(value)
    return events


@dataclass
class Counted:
    """The `/api/stats` figures that what the client received accounts for."""

    total_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    errors: int = 0
    client_disconnects: int = 0

    def add_sse(self, status: int, raw: bytes, *, left: bool = False) -> None:
        """A streamed answer; `left`: the client hung up before its end."""
        self.total_requests += 1
        input_tokens = output_tokens = 0
        failed = status >= 400
        stopped = False
        for _, data in client_sse_events(raw):
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # a client cannot use it; nor is it counted
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "message_start":
                usage = event["message"]["usage"]
                input_tokens, output_tokens = usage["input_tokens"], usage["output_tokens"]
            elif kind == "message_delta":
                usage = event.get("usage", {})
                output_tokens = usage.get("output_tokens", output_tokens)
                input_tokens = input_tokens or usage.get("input_tokens", 0)
            elif kind == "content_block_start":
                self.tool_calls += event["content_block"]["type"] == "tool_use"
            elif kind == "message_stop":
                stopped = True
            elif kind == "error":
                failed = True
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        if left:
            self.client_disconnects += 1
        elif failed or not stopped:
            self.errors += 1

    def add_json(self, status: int, raw: bytes) -> None:
        self.total_requests += 1
        body = orjson.loads(raw)
        if status >= 400 or body.get("type") == "error":
            self.errors += 1
            return
        self.input_tokens += body["usage"]["input_tokens"]
        self.output_tokens += body["usage"]["output_tokens"]
        self.tool_calls += sum(block["type"] == "tool_use" for block in body["content"])

    def add_broken(self) -> None:
        """An answer the client could not read to its end: no token is counted."""
        self.total_requests += 1
        self.errors += 1

    def add(self, response: httpx.Response, raw: bytes | None = None) -> None:
        content = response.content if raw is None else raw
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            self.add_sse(response.status_code, content)
        else:
            self.add_json(response.status_code, content)


def stats_of(url: str) -> dict[str, Any]:
    with httpx.Client(timeout=WAIT) as http:
        response = http.get(url + "/api/stats")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def moved(before: dict[str, Any], after: dict[str, Any]) -> Counted:
    return Counted(**{key: after[key] - before[key] for key in asdict(Counted())})


def check_answer(response: httpx.Response, status: int, kind: str) -> None:
    """An error the gateway answered itself, Anthropic-shaped, with its correlation id."""
    check_gateway_error(
        response.status_code,
        response.headers,
        response.content,
        expected_status=status,
        expected_type=kind,
    )


# --- the four promises ------------------------------------------------------------------


def post(
    url: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    with httpx.Client(timeout=WAIT) as http:
        return http.post(
            url + "/v1/messages",
            content=content,
            headers={**HEADERS, "content-type": "application/json", **(headers or {})},
        )


def complete_stream(url: str, got: Counted, ask: dict[str, Any] = ASK) -> httpx.Response:
    """A streamed request that must succeed, counted into `got`."""
    response = post(url, ask)
    assert response.status_code == 200
    assert response.content.endswith(b'data: {"type":"message_stop"}\n\n')
    got.add(response)
    return response


def settled(gateway: RunningGateway) -> Held:
    """What the gateway holds, once this process's unreachable sockets (an earlier test's
    unclosed clients) are collected: they would move the fd count."""
    gc.collect()
    return gateway.held()


@contextmanager
def promises(
    gateway: RunningGateway,
    *,
    warm_up: bool = True,
    mend: Callable[[], None] | None = None,
) -> Iterator[Counted]:
    """Check the four promises around a fault the body provokes. The body adds what its
    client received to the `Counted` it is given; `mend`, if given, undoes the fault
    before the next request."""
    got = Counted()
    if warm_up:  # the pool, the resolver and the first-use state exist before the baseline
        complete_stream(gateway.url, got)
    before = stats_of(gateway.url)
    baseline = settled(gateway)
    got = Counted()
    yield got
    assert moved(before, stats_of(gateway.url)) == got
    wait_until(lambda: settled(gateway) == baseline, timeout=WAIT)
    assert settled(gateway) == baseline
    if mend is not None:
        mend()
    after = stats_of(gateway.url)
    following = Counted()
    complete_stream(gateway.url, following)
    assert moved(after, stats_of(gateway.url)) == following


# --- rows 1-3: no answer at all ----------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_row_01_upstream_refusing_the_connection_is_502(
    start_gateway: GatewayFactory, loop_thread: LoopThread, stream: bool
) -> None:
    port = closed_port()
    gateway = start_gateway(target={"url": f"http://127.0.0.1:{port}"})
    revived = ScriptedUpstream("target")
    with promises(gateway, warm_up=False, mend=lambda: loop_thread.run(revived.start(port))) as got:
        response = post(gateway.url, {**ASK, "stream": stream})
        check_answer(response, 502, "api_error")
        got.add(response)
    loop_thread.run(revived.stop())


@pytest.mark.parametrize("url", ["https://{plain}", "http://cc-proxy-test.invalid"])
def test_row_02_tls_or_dns_failure_is_502(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    url: str,
) -> None:
    broken = url.format(plain=target.url.removeprefix("http://"))
    gateway = start_gateway(target={"url": broken, "timeout_secs": 20}, allow_anthropic_only=True)

    # The target stays broken: the next request goes to the passthrough.
    to_the_passthrough = lambda: gateway.switch_mode("anthropic-only")  # noqa: E731
    with promises(gateway, warm_up=False, mend=to_the_passthrough) as got:
        response = post(gateway.url, ASK)
        check_answer(response, 502, "api_error")
        got.add(response)
    assert target.seen == []
    assert len(passthrough.seen) == 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_row_03_upstream_that_never_answers_is_504_and_its_connection_closed(
    start_gateway: GatewayFactory, target: ScriptedUpstream, stream: bool
) -> None:
    gateway = start_gateway(target={"timeout_secs": 0.5})
    with promises(gateway) as got:
        target.queue(Reply.hang())
        response = post(gateway.url, {**ASK, "stream": stream})
        check_answer(response, 504, "timeout_error")
        got.add(response)
        assert wait_until(lambda: len(target.aborted) == 1, timeout=WAIT)


# --- rows 4-7: the answer goes wrong after it began --------------------------------------


def check_stream_ends_in_error(raw: bytes, delivered: bytes, kind: str) -> None:
    """`delivered`, byte for byte, then one well-formed `event: error`, then the end."""
    assert raw.startswith(delivered)
    tail = client_sse_events(raw[len(delivered) :])
    assert len(tail) == 1
    assert raw.endswith(b"\n\n")
    name, data = tail[0]
    check_sse_error(name, data, kind)


def test_row_04_upstream_stalling_mid_stream_ends_in_sse_timeout_error(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(target={"timeout_secs": 0.5})
    delivered = events_for()[:4]
    with promises(gateway) as got:
        target.queue(Reply.sse(delivered, then="hang"))
        response = post(gateway.url, ASK)
        assert response.status_code == 200
        check_stream_ends_in_error(response.content, b"".join(delivered), "timeout_error")
        got.add(response)
        assert wait_until(lambda: len(target.aborted) == 1, timeout=WAIT)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda events: events[:3], id="after-message_start"),
        pytest.param(lambda events: events[:-1], id="before-message_stop"),
        pytest.param(lambda events: [*events[:4], events[4][:20]], id="mid-event"),
    ],
)
def test_row_05_upstream_closing_mid_stream_ends_in_sse_error(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    cut: Callable[[list[bytes]], list[bytes]],
) -> None:
    gateway = start_gateway()
    sent = cut(events_for())
    whole = b"".join(e for e in sent if e.endswith(b"\n\n"))
    with promises(gateway) as got:
        target.queue(Reply.sse(sent, then="close"))
        response = post(gateway.url, ASK)
        assert response.status_code == 200
        check_stream_ends_in_error(response.content, whole, "api_error")
        got.add(response)


def relayed_unchanged(
    gateway: RunningGateway, target: ScriptedUpstream, sent: list[bytes]
) -> Counted:
    """The target streams `sent`; the client must get exactly those bytes."""
    with promises(gateway) as got:
        target.queue(Reply.sse(sent))
        response = post(gateway.url, ASK)
        assert response.status_code == 200
        assert response.content == b"".join(sent)
        got.add(response)
    return got


def test_row_06_error_event_in_a_200_stream_is_passed_through_and_counted_as_an_error(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    got = relayed_unchanged(start_gateway(), target, [*events_for()[:5], ERROR_EVENT])
    assert got.errors == 1


def _malformed_streams() -> dict[str, list[bytes]]:
    events = events_for()
    whole = b"".join(events)
    broken_json = events[3].replace(b'"text_delta"', b'"text_delta",,')
    assert events[3].startswith(b"event: content_block_delta")
    return {
        "broken-json-in-data": [*events[:3], broken_json, *events[4:]],
        "undecodable-message_delta": [
            *events[:-2],
            b'event: message_delta\ndata: {"type":"message_delta","usage":\n\n',
            events[-1],
        ],
        "missing-blank-lines": [
            *events[:2],
            events[2].removesuffix(b"\n") + events[3].removesuffix(b"\n"),
            *events[4:],
        ],
        "crlf-line-ends": [event.replace(b"\n", b"\r\n") for event in events],
        "one-event-in-many-writes": [whole[i : i + 7] for i in range(0, len(whole), 7)],
        "all-events-in-one-write": [whole],
        "data-only-events": [event.split(b"\n", 1)[1] for event in events],
    }


MALFORMED = _malformed_streams()


@pytest.mark.parametrize("sent", MALFORMED.values(), ids=MALFORMED.keys())
def test_row_07_malformed_sse_is_relayed_unchanged_and_counted_as_a_client_reads_it(
    start_gateway: GatewayFactory, target: ScriptedUpstream, sent: list[bytes]
) -> None:
    relayed_unchanged(start_gateway(), target, sent)


JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply.raw(JSON_HEAD + b'{"id": "msg_1", "type": "mess'), id="closed"),
        pytest.param(Reply.raw(JSON_HEAD + b'{"id": "msg_1"', then="hang"), id="stalled"),
    ],
)
def test_rows_04_05_json_answer_cut_short_reaches_the_client_as_a_broken_answer(
    start_gateway: GatewayFactory, target: ScriptedUpstream, reply: Reply
) -> None:
    # A plain body cannot carry an error once it began: the connection is closed
    # short of its Content-Length, which every client reads as a failed answer.
    gateway = start_gateway(target={"timeout_secs": 0.5})
    with promises(gateway) as got:
        target.queue(reply)
        with pytest.raises(httpx.RemoteProtocolError):
            post(gateway.url, {**ASK, "stream": False})
        got.add_broken()
        assert wait_until(lambda: len(target.aborted) == 1, timeout=WAIT)


# --- row 8: the upstream's own refusals ---------------------------------------------------


@pytest.mark.parametrize("status", [429, 529])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_row_08_upstream_429_and_529_pass_through_untouched(
    start_gateway: GatewayFactory, target: ScriptedUpstream, status: int, stream: bool
) -> None:
    kind = {429: "rate_limit_error", 529: "overloaded_error"}[status]
    raw = b'{"type":"error", "error":{"type":"' + kind.encode() + b'","message":"slow down"}}\n'
    headers = {"retry-after": "7", "request-id": "req_upstream_1", "x-should-retry": "true"}
    gateway = start_gateway()
    with promises(gateway) as got:
        target.queue(Reply.json(raw, status=status, headers=headers))
        response = post(gateway.url, {**ASK, "stream": stream})
        assert response.status_code == status
        assert response.content == raw
        for name, value in headers.items():
            assert response.headers.get_list(name) == [value]
        got.add(response)


# --- row 9: the client leaves ---------------------------------------------------------------


@contextmanager
def raw_request(gateway: RunningGateway, body: dict[str, Any]) -> Iterator[socket.socket]:
    """A Messages request written on a plain socket, which the test closes when it likes."""
    host, port = gateway.url.removeprefix("http://").split(":")
    raw = orjson.dumps(body)
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(raw)}\r\nx-api-key: {CLIENT_KEY}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(head.encode() + raw)
        yield sock


@pytest.mark.parametrize("sent", [0, 4], ids=["before-the-first-byte", "mid-stream"])
def test_row_09_client_leaving_closes_the_upstream_connection_within_100ms(
    start_gateway: GatewayFactory, target: ScriptedUpstream, sent: int
) -> None:
    gateway = start_gateway()
    delivered = events_for()[:sent]
    with promises(gateway) as got:
        # The upstream keeps its answer open, as a model still thinking or generating
        # would: only the gateway closing the connection ends its handler.
        target.queue(Reply.sse(delivered, then="hang") if sent else Reply.hang())
        received = b""
        with raw_request(gateway, ASK) as sock:
            while received.count(b"\n\n") < sent:
                received += sock.recv(65536)
            assert wait_until(lambda: len(target.seen) == 2, timeout=WAIT)  # warm-up, this
            left = time.monotonic()
        assert wait_until(lambda: len(target.aborted) == 1, timeout=WAIT)
        noticed_ms = (target.aborted[0] - left) * 1000
        assert noticed_ms < 100, f"the upstream saw its connection closed after {noticed_ms}ms"
        head, _, content = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") if sent else received == b""
        assert dechunk(content) == b"".join(delivered)
        got.add_sse(200, dechunk(content), left=True)
        assert wait_until(lambda: gateway.stats["client_disconnects"] == 1, timeout=WAIT)


def dechunk(content: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 answer read so far."""
    body = b""
    while content:
        size, _, rest = content.partition(b"\r\n")
        body += rest[: int(size, 16)]
        content = rest[int(size, 16) + 2 :]
    return body


def test_row_09_client_leaving_while_queued_for_a_target_slot_never_reaches_the_target(
    start_gateway: GatewayFactory, target: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    gate = Gate(loop_thread)
    events = events_for()
    gateway = start_gateway(target={"max_concurrent": 1, "queue_wait_secs": WAIT})
    limiter = gateway.gateway.upstreams["target"].limiter
    assert limiter is not None
    with promises(gateway) as got, ThreadPoolExecutor(max_workers=1) as pool:
        target.queue(Reply.sse(events, gate=gate, hold_at=1))
        holder = pool.submit(post, gateway.url, ASK)
        assert wait_until(lambda: len(target.seen) == 2, timeout=WAIT)  # warm-up, holder
        with raw_request(gateway, ASK):
            assert wait_until(lambda: len(limiter._waiters) == 1, timeout=WAIT)
        # Noticed while still queued: the slot is not waited for on behalf of nobody.
        assert wait_until(lambda: gateway.stats["client_disconnects"] == 1, timeout=WAIT)
        got.add_sse(200, b"", left=True)
        gate.open()
        got.add(holder.result(WAIT))
    assert len(target.seen) == 3  # the warm-up, the holder, the next request


# --- row 10: a burst over max_concurrent ---------------------------------------------------


def test_row_10_burst_of_three_times_max_concurrent_gets_529_for_the_excess_only(
    start_gateway: GatewayFactory, target: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    limit = 4
    gate = Gate(loop_thread)
    events = events_for()
    gateway = start_gateway(target={"max_concurrent": limit, "queue_wait_secs": 0.2})
    results: list[httpx.Response] = []
    with promises(gateway) as got:
        target.queue(*(Reply.sse(events, gate=gate, hold_at=1) for _ in range(limit)))
        with ThreadPoolExecutor(max_workers=3 * limit) as pool:
            burst = [pool.submit(post, gateway.url, ASK) for _ in range(3 * limit)]
            # The excess is answered while the first `limit` streams are still held open.
            assert wait_until(
                lambda: sum(future.done() for future in burst) == 2 * limit, timeout=WAIT
            )
            assert len(target.seen) == 1 + limit  # the warm-up, then the burst's first
            assert gateway.held().in_flight == limit
            gate.open()
            results = [future.result(WAIT) for future in burst]
        overloaded = [r for r in results if r.status_code == 529]
        assert len(overloaded) == 2 * limit
        for response in overloaded:
            check_answer(response, 529, "overloaded_error")
        served = [r for r in results if r.status_code == 200]
        assert len(served) == limit
        assert all(r.content == b"".join(events) for r in served)
        for response in results:
            got.add(response)
    assert gateway.held().in_flight == 0


# --- row 11: SIGTERM with streams in flight (a real cc-proxy process) --------------------

ACCESS_TOKENS = re.compile(
    r"outcome=(\w+) .* input_tokens=(\d+) output_tokens=(\d+) .* tool_calls=(\d+)"
)


def test_row_11_sigterm_lets_streams_in_flight_finish_refuses_new_ones_and_exits_0(
    target: ScriptedUpstream, loop_thread: LoopThread, tmp_path: Any
) -> None:
    streams = 3
    events = events_for()
    gate = Gate(loop_thread)
    target.queue(*(Reply.sse(events, delay=0.01, gate=gate, hold_at=2) for _ in range(streams)))
    process = GatewayProcess(
        ["--target-url", target.url], gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0"), tmp_path
    )
    try:
        url, port = process.listening()
        received = [b""] * streams
        got = Counted()

        def stream(index: int) -> None:
            with (
                httpx.Client(timeout=WAIT) as http,
                http.stream(
                    "POST", url + "/v1/messages", content=orjson.dumps(ASK), headers=HEADERS
                ) as response,
            ):
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    received[index] += chunk

        readers = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
        for reader in readers:
            reader.start()
        assert wait_until(lambda: all(r.count(b"\n\n") >= 2 for r in received), timeout=WAIT)

        process.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: refused(port), timeout=WAIT), "still accepting"
        assert process.proc.poll() is None  # waiting for the streams in flight
        gate.open()
        for reader in readers:
            reader.join(WAIT)
        assert received == [b"".join(events)] * streams
        for raw in received:
            got.add_sse(200, raw)
        assert process.wait() == 0
    finally:
        gate.open()
        process.kill()
    # The process is gone with its stats; its access lines counted the same answers.
    lines = [ACCESS_TOKENS.search(line) for line in process.stderr if "cc_proxy.access" in line]
    counted = [match.groups() for match in lines if match]
    assert len(counted) == streams
    assert all(outcome == "complete" for outcome, *_ in counted)
    assert sum(int(c[1]) for c in counted) == got.input_tokens
    assert sum(int(c[2]) for c in counted) == got.output_tokens
    assert sum(int(c[3]) for c in counted) == got.tool_calls
    assert "cc-proxy stopped" in process.output()


# --- row 12: a mode switch with streams in flight -----------------------------------------


@pytest.mark.parametrize("other", ["anthropic-only", "compare"])
def test_row_12_streams_in_flight_finish_on_the_upstream_they_started_on(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    loop_thread: LoopThread,
    other: str,
) -> None:
    gateway = start_gateway(allow_anthropic_only=True)
    modes = gateway.gateway.modes
    target_events, passthrough_events = events_for(), events_for(PLAIN_ASK)
    gate = Gate(loop_thread)
    with promises(gateway) as got, ThreadPoolExecutor(max_workers=2) as pool:
        target.queue(Reply.sse(target_events, gate=gate, hold_at=2))
        on_target = pool.submit(post, gateway.url, ASK)
        assert wait_until(lambda: len(target.seen) == 2, timeout=WAIT)  # warm-up, this

        gateway.switch_mode(other)
        passthrough.queue(Reply.sse(passthrough_events, gate=gate, hold_at=2))
        on_passthrough = pool.submit(post, gateway.url, PLAIN_ASK)
        assert wait_until(lambda: len(passthrough.seen) == 1, timeout=WAIT)

        gateway.switch_mode("target")
        gate.open()
        first, second = on_target.result(WAIT), on_passthrough.result(WAIT)
        assert first.content == b"".join(target_events)
        assert second.content == b"".join(passthrough_events)
        got.add(first)
        got.add(second)
    # warm-up, the first stream, the next request; in compare mode the shadow copy too
    assert len(target.seen) == 3 + (other == "compare")
    assert len(passthrough.seen) == 1
    assert modes.current.value == "target"
    assert gateway.stats["requests_by_mode"] == {"target": 3, other: 1}
