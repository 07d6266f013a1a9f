"""A client that reads slowly holds the upstream back: the gateway stops reading the
upstream while the client is not reading, so an answer is never buffered whole, and it
reads on once the client does, so the answer arrives whole and unchanged."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from cc_proxy.standin import answer, message_events, sse_event
from conftest import GatewayFactory
from harness import Reply, ScriptedUpstream, wait_until

EVENT_TEXT = 256 * 1024  # characters of text per delta event
WAIT = 30.0  # upper bound of every wait; never a timing expectation


def _largest(sysctl: str) -> int:
    return int(Path("/proc/sys/net/ipv4", sysctl).read_text().split()[-1])


# What the way from the upstream to a client that reads nothing can hold at most: the
# upstream's send buffer, the gateway's receive buffer (which the kernel may grow to
# tcp_rmem's largest), its send buffer to the client, and 8 MiB for the processes' own.
HELD_BACK = _largest("tcp_rmem") + 2 * _largest("tcp_wmem") + 8 * 1024 * 1024
DELTAS = 2 * HELD_BACK // EVENT_TEXT  # an answer twice that


def big_answer() -> list[bytes]:
    message = answer({"model": "stand-in", "messages": [{"role": "user", "content": "hi"}]})
    message["content"] = [{"type": "text", "text": ""}]
    events = message_events(message)
    delta = sse_event(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "x" * EVENT_TEXT},
        }
    )
    stop_at = next(i for i, e in enumerate(events) if b"content_block_stop" in e)
    return [*events[:stop_at], *[delta] * DELTAS, *events[stop_at:]]


def test_a_client_that_stops_reading_holds_the_upstream_back_and_then_gets_it_all(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    events = big_answer()
    whole = sum(len(e) for e in events)
    sent = [0]

    async def respond(request: web.Request, up: ScriptedUpstream) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)  # waits while the gateway does not read
            sent[0] += len(event)
        await response.write_eof()
        return response

    target.queue(Reply(respond))
    gateway = start_gateway()
    address = urlsplit(gateway.url)
    body = orjson.dumps(
        {
            "model": "m",
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.settimeout(WAIT)
        client.connect((address.hostname, address.port))
        client.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = bytearray(client.recv(65536))
        # Not reading now: the upstream gets as far as the buffers on the way let it.
        assert wait_until(lambda: sent[0] > 0, timeout=WAIT)
        held = -1
        while held != sent[0]:  # until it stops moving
            held = sent[0]
            time.sleep(0.5)
        assert held < HELD_BACK, f"{held} of {whole} bytes sent to a client reading nothing"
        while not received.endswith(b"0\r\n\r\n"):
            chunk = client.recv(1 << 20)
            assert chunk, "the gateway closed the connection before the answer's end"
            received += chunk
    assert sent[0] == whole
    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert dechunk(chunked) == b"".join(events)


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]
