"""The forwarding core: send one exchange upstream and relay its answer as it arrives.

It knows nothing of stats, logs or traces: it fills the `Exchange` and tells the
observers. Where the answer goes is a `Sink`: the client's ASGI connection for the
primary answer, nowhere for compare mode's shadow copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from cc_proxy.accounting import SseFramer, account_events, account_json
from cc_proxy.errors import ErrorType, GatewayError, sse_error_event
from cc_proxy.exchange import Exchange, Observer, Outcome
from cc_proxy.upstream import Headers, Upstream
from cc_proxy.upstream_http import UpstreamAnswer, UpstreamClient

log = logging.getLogger("cc_proxy")

# A non-streaming Messages answer larger than this is relayed but not counted.
MAX_COUNTED_JSON_BYTES = 64 * 1024 * 1024


class Sink:
    """Where an answer goes. The base class discards it (the shadow's sink)."""

    __slots__ = ()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The upstream's status and headers, before any body."""

    async def body(self, chunk: bytes) -> None:
        """A piece of the body, to pass on now."""

    def body_at_once(self, chunk: bytes) -> bool:
        """Passes a piece of the body on, if that can be done without waiting, and says
        whether it was; if not, the caller awaits `body` with it. The relay loops call
        this first: a coroutine per event was 3% of the instructions of a model-paced
        stream (callgrind, 100 deltas 4 ms apart: 4.82 M -> 4.68 M per answer)."""
        return True

    def at_once(self) -> tuple[Callable[[], bool], Callable[[bytes], object]]:
        """For the pieces that the relay passes on from the upstream connection's
        callback: a test of whether `body_at_once` would pass a piece on now, asked
        before each, and what passes it on once the test has said so (`body_at_once`, or
        a writer that a call fewer reaches)."""
        return _always, self.body_at_once

    async def end(self) -> None:
        """The body is complete."""

    async def fail(self, error: GatewayError, *, started: bool, sse: bool) -> None:
        """The exchange failed; `started` says whether `start` was already called."""


def _always() -> bool:
    return True


def _is_sse(response: UpstreamAnswer) -> bool:
    media_type = response.headers.get("content-type", "").partition(";")[0]
    return media_type.strip().lower() == "text/event-stream"


async def relay(
    client: UpstreamClient,
    upstream: Upstream,
    exchange: Exchange,
    headers: Headers,
    body: bytes,
    sink: Sink,
    observers: Observer,
    watchers: list[Callable[[bytes], None]],
) -> None:
    """Forward `exchange` to `upstream` and relay the answer into `sink`.

    Never raises for an upstream failure: the sink is told, and `exchange.outcome` says
    what happened. Cancellation (the client went away) closes the upstream connection
    at once and propagates.
    """
    response: UpstreamAnswer | None = None
    started = sse = False
    try:
        try:
            response = await client.send(upstream, exchange.method, exchange.target, headers, body)
            exchange.status = response.status
            exchange.upstream_request_id = response.headers.get("request-id")
            sse = _is_sse(response)
            await sink.start(response.status, list(response.raw_headers))
            started = True
            if sse:
                await _relay_sse(response, exchange, sink, observers, watchers)
            else:
                await _relay_body(response, exchange, sink, observers, watchers)
            # Set before the last write: the answer is whole once read to its end, and a
            # shutdown that cancels that write must not count it cancelled or append an
            # error event to it (see below).
            exchange.outcome = Outcome.COMPLETE
            await sink.end()
            return
        except aiohttp.ConnectionTimeoutError as exc:
            # No connection at all is "unreachable" (502), not "no answer" (504).
            error = _failure(exchange, Outcome.UNREACHABLE, 502, ErrorType.API, upstream, exc)
        except TimeoutError:
            error = _failure(exchange, Outcome.TIMEOUT, 504, ErrorType.TIMEOUT, upstream)
        except aiohttp.ClientError as exc:
            broken = Outcome.UNREACHABLE if response is None else Outcome.STREAM_BROKEN
            error = _failure(exchange, broken, 502, ErrorType.API, upstream, exc)
        finally:
            # An answer not read to its end must not go back to the pool: closing the
            # connection is also what tells a self-hosted server to stop generating.
            if response is not None:
                if exchange.outcome is Outcome.COMPLETE:
                    response.release()
                else:
                    response.close()
        await sink.fail(error, started=started, sse=sse)
    except asyncio.CancelledError:
        # The client left (the caller says so), or the shutdown grace ran out: a client
        # still there gets a well-formed end to its stream, which Claude Code retries.
        exchange.outcome = exchange.outcome or Outcome.CANCELLED
        if started and sse and exchange.outcome is Outcome.CANCELLED:
            with contextlib.suppress(Exception):
                await sink.body(sse_error_event(ErrorType.API, "cc-proxy is shutting down"))
                await sink.end()
        raise
    finally:
        exchange.finished = time.perf_counter()


def _failure(
    exchange: Exchange,
    outcome: Outcome,
    status: int,
    kind: ErrorType,
    upstream: Upstream,
    exc: BaseException | None = None,
) -> GatewayError:
    if outcome is Outcome.TIMEOUT:
        detail = f"upstream {upstream.name} gave no answer within {upstream.timeout.sock_read:g}s"
    elif outcome is Outcome.STREAM_BROKEN:
        detail = f"upstream {upstream.name} failed mid-answer: {_reason(exc)}"
    else:
        detail = f"upstream {upstream.name} unreachable: {_reason(exc)}"
    exchange.outcome = outcome
    exchange.detail = detail
    return GatewayError(status, kind, detail)


def _reason(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text or type(exc).__name__


def _show(watchers: list[Callable[[bytes], None]], chunk: bytes) -> None:
    """Pass a relayed chunk to the observers' watchers; one that fails is dropped."""
    failed = []
    for watch in watchers:
        try:
            watch(chunk)
        except Exception:
            log.exception("a body watcher failed; it sees no more of this answer")
            failed.append(watch)
    if failed:  # dropped once all have seen the chunk
        watchers[:] = [watch for watch in watchers if watch not in failed]


async def _first_chunk(response: UpstreamAnswer, exchange: Exchange, observers: Observer) -> bytes:
    """The first piece of the body (b"" for none), which marks the time to first byte.
    The relay loops then call `readany` themselves: an async generator between them and
    the stream cost a few percent of a streamed answer's CPU."""
    chunk = await response.content.readany()
    if chunk:
        exchange.first_byte = time.perf_counter()
        observers.on_first_byte(exchange)
    return chunk


async def _relay_sse(
    response: UpstreamAnswer,
    exchange: Exchange,
    sink: Sink,
    observers: Observer,
    watchers: list[Callable[[bytes], None]],
) -> None:
    framer = SseFramer()
    counting = exchange.is_messages
    usage = exchange.usage

    def passed_on(events: bytes) -> None:
        # counted once passed on: the stats count what the client was given
        if counting:
            account_events(events, usage)
        if watchers:
            _show(watchers, events)

    ready, write = sink.at_once()

    def relay_at_once(chunk: bytes) -> None:
        # the upstream connection's own call while `read` below waits (`relay_at_once`),
        # once `ready()` has said that the sink takes what comes now
        events = framer.feed(chunk)
        if events:
            write(events)
            passed_on(events)

    read = response.content.readany
    chunk = await _first_chunk(response, exchange, observers)
    response.relay_at_once((ready, relay_at_once))
    try:
        while chunk:
            events = framer.feed(chunk)
            if events:
                if not sink.body_at_once(events):
                    await sink.body(events)
                passed_on(events)
            chunk = await read()
    finally:
        response.relay_at_once(None)
    if counting and (exchange.status or 0) < 400 and not usage.stopped and not usage.error_type:
        # A close-delimited stream that ends early looks like a normal end to the HTTP
        # layer; without message_stop it is a broken answer all the same. What is held
        # back is a partial event and is dropped, as below.
        raise aiohttp.ClientPayloadError("the stream ended before message_stop")
    # What is left is an event the upstream never ended; clients drop such an event,
    # so it is passed on unchanged but not counted.
    tail = framer.flush()
    if tail:
        if watchers:
            _show(watchers, tail)
        await sink.body(tail)


async def _relay_body(
    response: UpstreamAnswer,
    exchange: Exchange,
    sink: Sink,
    observers: Observer,
    watchers: list[Callable[[bytes], None]],
) -> None:
    # The answer is kept to be counted; most come in one piece, which is kept as it is.
    counting = exchange.is_messages
    pieces: list[bytes] = []
    size = 0
    read = response.content.readany
    chunk = await _first_chunk(response, exchange, observers)
    while chunk:
        if counting:
            pieces.append(chunk)
            size += len(chunk)
            if size > MAX_COUNTED_JSON_BYTES:
                counting = False
                pieces.clear()
        if watchers:
            _show(watchers, chunk)
        if not sink.body_at_once(chunk):
            await sink.body(chunk)
        chunk = await read()
    if counting:
        exchange.answer_json = answer = b"".join(pieces)
        account_json(answer, exchange.usage)
