"""SPEC.md §4: when the client goes away, the upstream request is cancelled at once, so a
self-hosted GPU stops generating for nobody. Real sockets throughout; no durations are
asserted: an upstream script far longer than any wait here shows the cancellation."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from cc_proxy.standin import answer, message_events
from conftest import GatewayFactory
from harness import Reply, RunningGateway, ScriptedUpstream, load_fixture, wait_until
from test_errors import create_stream, data_of, fixture_request, in_flight, sdk, stats

# 400 events, 0.02 s apart: the upstream's script alone takes 8 s.
EVENTS = 400
DELAY = 0.02


def long_answer_events() -> list[bytes]:
    """The stand-in's answer to a recorded request, with a text of EVENTS words."""
    body, _ = fixture_request()
    message = answer(body)
    message["content"] = [{"type": "text", "text": " ".join(f"w{i}" for i in range(EVENTS))}]
    message["stop_reason"] = "end_turn"
    events = message_events(message)
    assert len(events) > EVENTS
    return events


def test_client_leaving_mid_stream_cancels_the_upstream_request(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    events = long_answer_events()
    target.queue(Reply.sse(events, delay=DELAY))
    gateway = start_gateway()
    body, headers = fixture_request()

    stream = create_stream(sdk(gateway), body, headers)
    received = []
    for event in stream:
        received.append(event.type)
        if received.count("content_block_delta") == 3:
            break
    stream.close()  # the client hangs up mid-answer

    # The upstream sees its connection closed while its script still had most of its
    # events to send: it never completed.
    assert wait_until(lambda: len(target.aborted) == 1, timeout=EVENTS * DELAY * 0.75)
    assert target.completed == 0

    assert wait_until(lambda: stats(gateway)["client_disconnects"] == 1)
    counted = stats(gateway)
    assert counted["total_requests"] == 1
    assert counted["errors"] == 0  # a client leaving is not an upstream fault
    start = data_of(events[0])["message"]["usage"]
    assert counted["input_tokens"] == start["input_tokens"]
    assert in_flight(gateway) == 0


def _send_raw_request(gateway: RunningGateway) -> socket.socket:
    """A recorded Claude Code request written on a plain socket, which the test then
    closes whenever it likes."""
    path, headers, body = load_fixture("basic")
    parts = urlsplit(gateway.url)
    assert parts.hostname is not None
    assert parts.port is not None
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
    return sock


def test_client_leaving_before_the_answer_begins_cancels_the_upstream_request(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    target.queue(Reply.hang())
    gateway = start_gateway()  # timeout_secs is 300: only the client's leaving ends it

    sock = _send_raw_request(gateway)
    assert wait_until(lambda: len(target.seen) == 1)
    sock.close()

    assert wait_until(lambda: len(target.aborted) == 1)
    assert wait_until(lambda: stats(gateway)["client_disconnects"] == 1)
    assert stats(gateway)["errors"] == 0
    assert in_flight(gateway) == 0


def test_slot_of_a_client_that_left_is_free_for_the_next_request(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    target.queue(Reply.sse(long_answer_events(), delay=DELAY))
    gateway = start_gateway(target={"max_concurrent": 1, "queue_wait_secs": 0})
    body, headers = fixture_request()
    client = sdk(gateway)

    stream = create_stream(client, body, headers)
    assert next(iter(stream)).type == "message_start"
    stream.close()
    assert wait_until(lambda: in_flight(gateway) == 0)

    # with no wait allowed, this only succeeds if the departed client's slot was freed
    finished = [event.type for event in create_stream(client, body, headers)]
    assert finished[-1] == "message_stop"
    assert len(target.seen) == 2
