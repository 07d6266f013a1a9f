"""The benchmark's stand-in upstream: raw asyncio (uvloop), so it is never the bottleneck.

It speaks just enough HTTP/1.1 for the relays under test: keep-alive, `Content-Length`
request bodies, a JSON answer for a non-streaming request and a chunked SSE answer for a
streaming one. The answers are the embedded stand-in's (`cc_proxy.standin`), built once.

In `fast` mode each SSE event is its own write, and the upstream yields to its loop
between events, as a model server does between tokens: a relay sees events one by one
rather than one burst per answer. In `burst` mode a stream is one write, the cheapest
upstream there is (for the two-core part, where the upstream shares the cores with the
relay under test). In `slow` mode it sends one event per second (the
concurrency test's idle streams) until the client leaves.

    python -m bench.upstream --port 0 [--mode fast|burst|slow] [--events 100]
        [--first-token-ms 0] [--gap-ms 0]

`--first-token-ms` and `--gap-ms` pace a fast-mode stream like a model (its time to first
token, its gap between tokens).

prints `listening PORT` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket

import orjson
import uvloop

from cc_proxy.standin import message_events

HEADER_END = b"\r\n\r\n"


def _answer(pieces: int) -> dict[str, object]:
    text = " ".join(f"word{i}" for i in range(pieces))
    return {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "bench-model",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1200,
            "output_tokens": pieces,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Answers:
    """The prepared wire bytes of every answer."""

    def __init__(self, events: int) -> None:
        message = _answer(events)
        body = orjson.dumps(message)
        self.json = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"request-id: req_bench\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
        )
        self.sse_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        # `message_events` splits the text into one delta per word: `events` deltas.
        self.sse_events = [_chunk(event) for event in message_events(message)]
        self.sse_end = b"0\r\n\r\n"
        self.sse_burst = self.sse_head + b"".join(self.sse_events) + self.sse_end
        self.not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def _wants_stream(body: bytes) -> bool:
    # Cheap on purpose: bodies come from the harness, as compact or spaced JSON.
    return b'"stream":true' in body or b'"stream": true' in body


class Connection(asyncio.Protocol):
    def __init__(self, answers: Answers, mode: str, pacing: tuple[float, float]) -> None:
        self.answers = answers
        self.slow = mode == "slow"
        self.burst = mode == "burst"
        # (seconds before the answer's head, seconds between events): a model's time to
        # first token and per-token gap; (0, 0) sends as fast as the loop allows.
        self.first_token, self.gap = pacing
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve()

    def _serve(self) -> None:
        while self.streaming is None:
            end = self.buffer.find(HEADER_END)
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : line_end if line_end >= 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        if not head.startswith(b"post /v1/messages"):
            self.transport.write(self.answers.not_found)
        elif self.burst and _wants_stream(body):
            self.transport.write(self.answers.sse_burst)
        elif _wants_stream(body):
            self.streaming = asyncio.ensure_future(self._stream())
        else:
            self.transport.write(self.answers.json)

    async def _stream(self) -> None:
        assert self.transport is not None
        transport = self.transport
        events = self.answers.sse_events
        if self.first_token:
            await asyncio.sleep(self.first_token)
        transport.write(self.answers.sse_head)
        if self.slow:
            # message_start, ping, content_block_start, then one text delta a second
            transport.write(b"".join(events[:3]))
            while not transport.is_closing():
                await asyncio.sleep(1.0)
                transport.write(events[3])
            return
        for event in events:
            transport.write(event)
            await asyncio.sleep(self.gap)
        transport.write(self.answers.sse_end)
        self.streaming = None
        if self.buffer:
            self._serve()


async def serve(port: int, mode: str, events: int, pacing: tuple[float, float]) -> None:
    answers = Answers(events)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(answers, mode, pacing=pacing),
        "127.0.0.1",
        port,
        backlog=4096,
        reuse_address=True,
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    async with server:
        await server.serve_forever()


def raise_fd_limit() -> int:
    """Soft limit up to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=("fast", "burst", "slow"), default="fast")
    parser.add_argument("--events", type=int, default=100, help="text deltas per answer")
    parser.add_argument(
        "--first-token-ms", type=float, default=0, help="wait before a stream's head"
    )
    parser.add_argument("--gap-ms", type=float, default=0, help="wait between SSE events")
    args = parser.parse_args()
    raise_fd_limit()
    pacing = (args.first_token_ms / 1000, args.gap_ms / 1000)
    uvloop.run(serve(args.port, args.mode, args.events, pacing))


if __name__ == "__main__":
    main()
