"""How the gateway reads an upstream's answer (`cc_proxy.upstream`): everything that has
come, in one piece, whatever HTTP chunks it came in; and no more than aiohttp's bounds
allow while nobody reads it. The upstreams here write raw HTTP/1.1 on a socket, so the
chunking is exactly what each test says."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import NamedTuple

import aiohttp
import httpx
import orjson
import pytest

from cc_proxy.standin import answer, message_events
from cc_proxy.upstream_http import UpstreamClient, open_session
from conftest import CLIENT_KEY, GatewayFactory
from harness import LoopThread, RawServer, body_length, plain_upstream, wait_until
from test_faults import check_stream_ends_in_error

WAIT = 30.0  # upper bound of every wait; never a timing expectation
RELAY_TIMEOUT = aiohttp.ClientTimeout(sock_read=WAIT)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class RawUpstream(RawServer):
    """Answers every request on its connection with `write_answer`, on raw bytes."""

    def __init__(self, loop_thread: LoopThread, write_answer: Answer) -> None:
        super().__init__(loop_thread)
        self._write_answer = write_answer

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                await reader.readexactly(body_length(head))
                await self._write_answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def stream_through(gateway_url: str) -> httpx.Response:
    """A streamed Messages request to the gateway, read whole."""
    request = {"model": "claude", "max_tokens": 64, "stream": True, "messages": []}
    return httpx.post(
        gateway_url + "/v1/messages",
        content=orjson.dumps(request),
        headers={"x-api-key": CLIENT_KEY, "content-type": "application/json"},
        timeout=WAIT,
    )


@pytest.fixture
def events() -> list[bytes]:
    body = {"model": "glm-5", "messages": [{"role": "user", "content": "hi " * 400}]}
    return message_events(answer(body))


def bursts(whole: bytes, seed: int) -> Iterator[bytes]:
    """`whole` as HTTP chunks of 1 to 40 bytes (cutting events anywhere), several chunks
    to a write."""
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(whole):
        size = rng.randint(1, 40)
        pieces.append(chunk(whole[at : at + size]))
        at += size
    while pieces:
        take = rng.randint(1, 60)
        yield b"".join(pieces[:take])
        del pieces[:take]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_answer_in_many_small_chunks_reaches_the_client_whole_and_is_counted(
    start_gateway: GatewayFactory, loop_thread: LoopThread, events: list[bytes], seed: int
) -> None:
    whole = b"".join(events)

    async def write_answer(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        for write in bursts(whole, seed):
            writer.write(write)
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"0\r\n\r\n")

    with RawUpstream(loop_thread, write_answer) as upstream:
        gateway = start_gateway(target={"url": upstream.url})
        relayed = stream_through(gateway.url)
    assert relayed.status_code == 200
    assert relayed.content == whole
    usage = orjson.loads(events[-2].split(b"data: ", 1)[1])["usage"]
    assert wait_until(lambda: gateway.stats["total_requests"] == 1, WAIT)
    assert gateway.stats["output_tokens"] == usage["output_tokens"] > 0


class Held(NamedTuple):
    """What a reader held once its connection was paused, and then the whole body."""

    pieces: int
    size: int
    paused: bool
    body: bytes


async def read_after_a_pause(url: str) -> Held:
    """Reads nothing until the connection is paused (or WAIT has passed), then all."""
    async with open_session() as session:
        # as the gateway reads: no total timeout (see the last test)
        response = await session.get(url + "/", timeout=RELAY_TIMEOUT)
        content = response.content
        assert type(content).__name__ == "_RelayReader"
        protocol = response.connection.protocol if response.connection else None
        for _ in range(int(WAIT / 0.01)):
            if protocol is None or protocol._reading_paused:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # a read under way when paused is held too
        pieces, size = len(content._buffer), sum(map(len, content._buffer))
        paused = protocol is not None and protocol._reading_paused
        body = b""
        while piece := await content.readany():
            body += piece
        return Held(pieces, size, paused, body)


def test_an_unread_answer_in_tiny_chunks_stops_being_read_and_then_arrives_whole(
    loop_thread: LoopThread,
) -> None:
    """aiohttp bounds what a connection holds unread by its bytes and by its number of
    pieces, since each piece costs memory of its own; 30,000 one-byte chunks are far
    below the first bound and far above the second."""
    count = 30_000

    async def write_answer(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        await writer.drain()
        await asyncio.sleep(0.2)  # the body comes in reads of its own, after the head
        writer.write(chunk(b"x") * count + b"0\r\n\r\n")
        await writer.drain()

    with RawUpstream(loop_thread, write_answer) as upstream:
        held = loop_thread.run(read_after_a_pause(upstream.url), WAIT + 10)
    assert held.paused
    assert 0 < held.pieces < count
    assert held.body == b"x" * count


def test_an_unread_answer_in_large_chunks_stops_being_read_and_then_arrives_whole(
    loop_thread: LoopThread,
) -> None:
    """The other bound, on bytes: pieces are few here, and what is held while nobody
    reads stays far below the answer, however fast the upstream writes it."""
    count, size = 256, 64 * 1024  # 16 MiB
    pieces = [bytes([65 + index % 26]) * size for index in range(count)]

    async def write_answer(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        await writer.drain()
        await asyncio.sleep(0.2)
        for piece in pieces:
            writer.write(chunk(piece))
            await writer.drain()  # waits while the gateway does not read
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    with RawUpstream(loop_thread, write_answer) as upstream:
        held = loop_thread.run(read_after_a_pause(upstream.url), WAIT + 10)
    assert held.paused
    # aiohttp's bound (twice the reader's limit: 512 KiB), give or take the last read
    assert 0 < held.size <= 4 * 1024 * 1024
    assert held.body == b"".join(pieces)


async def read_relaying_at_once(
    url: str, ready: Callable[[], bool], consume: Callable[[bytes], None]
) -> list[bytes]:
    """One answer read as the relay reads it: each read the upstream sends while the
    reader waits goes to `consume` where `ready()` allows, the rest to `readany`; what
    `readany` returns is added to what `consume` was given, in the order they came."""
    pieces: list[bytes] = []
    client = UpstreamClient()
    try:
        response = await client.send(plain_upstream(url, WAIT), "POST", "/v1/messages", [], b"{}")

        def take(piece: bytes) -> None:
            consume(piece)
            pieces.append(piece)

        response.relay_at_once((ready, take))
        try:
            while piece := await response.content.readany():
                pieces.append(piece)
        finally:
            response.relay_at_once(None)
            response.close()
    finally:
        await client.close()
    return pieces


def paced(events: list[bytes]) -> Answer:
    async def write_answer(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        for event in events:
            writer.write(chunk(event))
            await writer.drain()
            await asyncio.sleep(0.005)  # as a model paces its tokens: the reader waits
        writer.write(b"0\r\n\r\n")

    return write_answer


def test_what_comes_while_the_relay_waits_is_passed_on_at_once_and_in_order(
    loop_thread: LoopThread, events: list[bytes]
) -> None:
    """Reads that come while the relay waits go straight to it from the connection's
    callback; those that come while it cannot take them (every other one here) wake it,
    and it reads them itself. Either way, nothing is lost or reordered."""
    at_once: list[bytes] = []
    asked = itertools.count()

    def every_other() -> bool:
        return next(asked) % 2 == 0

    with RawUpstream(loop_thread, paced(events[:40])) as upstream:
        pieces = loop_thread.run(
            read_relaying_at_once(upstream.url, every_other, at_once.append), WAIT
        )
    assert b"".join(pieces) == b"".join(events[:40])
    assert 0 < len(at_once) < len(pieces)


def test_a_fault_in_what_is_passed_on_at_once_is_raised_where_the_relay_waits(
    loop_thread: LoopThread, events: list[bytes]
) -> None:
    def fail(piece: bytes) -> None:
        raise ZeroDivisionError(piece)

    with (
        RawUpstream(loop_thread, paced(events[:10])) as upstream,
        pytest.raises(ZeroDivisionError),
    ):
        loop_thread.run(read_relaying_at_once(upstream.url, lambda: True, fail), WAIT)


def test_an_answer_under_a_total_timeout_keeps_aiohttps_reader_and_its_timeout(
    loop_thread: LoopThread,
) -> None:
    """The relay's reader leaves out aiohttp's total-timeout timer, which the gateway
    never sets; an answer read under one (any other user of the session) must still be
    cut off by it, and one without it is read the relay's way."""

    async def write_answer(writer: asyncio.StreamWriter) -> None:
        # and nothing more: the answer never ends, and the connection stays open until
        # the client closes it
        writer.write(SSE_HEAD + chunk(b"event: ping\ndata: {}\n\n"))
        await writer.drain()

    async def read(bounds: aiohttp.ClientTimeout) -> tuple[str, bytes, bool]:
        async with open_session() as session:
            response = await session.get(upstream.url + "/", timeout=bounds)
            reader = type(response.content).__name__
            try:
                first = await response.content.readany()
                await response.content.readany()
            except TimeoutError:
                return reader, first, True
            finally:
                response.close()
            return reader, first, False

    with RawUpstream(loop_thread, write_answer) as upstream:
        total = loop_thread.run(read(aiohttp.ClientTimeout(total=0.5)), WAIT)
        silence = loop_thread.run(read(aiohttp.ClientTimeout(sock_read=0.5)), WAIT)
    assert total == ("StreamReader", b"event: ping\ndata: {}\n\n", True)
    assert silence == ("_RelayReader", b"event: ping\ndata: {}\n\n", True)


async def read_to_the_end(url: str) -> tuple[list[bytes | BaseException], bool]:
    """One answer read as the relay reads it, until its end or a failure; and whether its
    connection went back to the pool, open, for the next request."""
    found: list[bytes | BaseException] = []
    client = UpstreamClient()
    try:
        response = await client.send(plain_upstream(url, WAIT), "POST", "/v1/messages", [], b"{}")
        protocol = response._connection.protocol if response._connection else None
        try:
            while piece := await response.content.readany():
                found.append(piece)
        except aiohttp.ClientError as exc:
            found.append(exc)
            response.close()
        else:
            response.release()
        pooled = protocol is not None and protocol.transport is not None
    finally:
        await client.close()
    return found, pooled


def test_a_chunk_the_parser_refuses_mid_answer_fails_the_read_and_the_connection(
    loop_thread: LoopThread, events: list[bytes]
) -> None:
    async def write_answer(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(events[0]))
        await writer.drain()
        await asyncio.sleep(0.05)  # read mid-answer, the reader waiting
        writer.write(b"zz\r\nnot a chunk size\r\n")
        await writer.drain()
        # and the connection left open, for the reader to close

    with RawUpstream(loop_thread, write_answer) as upstream:
        found, pooled = loop_thread.run(read_to_the_end(upstream.url), WAIT + 5)
    assert found[0] == events[0]
    assert isinstance(found[-1], aiohttp.ClientPayloadError), found
    assert not pooled


def test_an_answer_nobody_asked_for_behind_the_body_is_not_kept_for_the_next_request(
    loop_thread: LoopThread, events: list[bytes]
) -> None:
    """An upstream that sends a second answer after the first, unasked, in the same read
    as the first one's end: it must never be taken for the answer to the connection's
    next request."""
    stray = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray"

    async def write_answer(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(events[0]))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(chunk(events[1]) + b"0\r\n\r\n" + stray)
        await writer.drain()

    with RawUpstream(loop_thread, write_answer) as upstream:
        found, pooled = loop_thread.run(read_to_the_end(upstream.url), WAIT + 5)
    assert found == [events[0], events[1]]
    assert not pooled


@pytest.mark.parametrize("later", [True, False], ids=["in-a-later-read", "in-the-heads-read"])
def test_a_stream_whose_chunks_break_mid_answer_ends_in_an_sse_error_event(
    start_gateway: GatewayFactory, loop_thread: LoopThread, events: list[bytes], later: bool
) -> None:
    """Row 5 of the error table for a framing the parser refuses, rather than a close:
    the client gets what it was given, then an error event, and the stream ends (what
    came in the read that broke is lost with it, as aiohttp's reader has it)."""
    garbage = b"zz\r\nnot a chunk size\r\n"

    async def write_answer(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(events[0]) + chunk(events[1]) + (b"" if later else garbage))
        await writer.drain()
        if later:
            await asyncio.sleep(0.05)
            writer.write(garbage)
            await writer.drain()

    with RawUpstream(loop_thread, write_answer) as upstream:
        gateway = start_gateway(target={"url": upstream.url, "timeout_secs": WAIT})
        relayed = stream_through(gateway.url)
    assert relayed.status_code == 200
    given = events[0] + events[1] if later else b""
    check_stream_ends_in_error(relayed.content, given, "api_error")
