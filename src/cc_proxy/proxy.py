"""The request path, top to bottom: receive the request, choose the route by mode, shape
the body for that upstream, forward and relay, and let the observers know.

Plain ASGI: this is the hot path for `/v1/messages` and every proxied path.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from cc_proxy.body import MessagesBody
from cc_proxy.errors import ErrorType, GatewayError, error_body, sse_error_event
from cc_proxy.estimate import estimate_input_tokens
from cc_proxy.exchange import Exchange, Observers, Outcome, Role
from cc_proxy.modes import Mode, ModeSwitch
from cc_proxy.protocol import CLIENT_LINK, ClientLink
from cc_proxy.relay import Sink, relay
from cc_proxy.shadow import Shadow
from cc_proxy.shaping import PassthroughShaping, TargetShaping
from cc_proxy.shared import Cell
from cc_proxy.upstream import Upstream, response_headers
from cc_proxy.upstream_http import UpstreamClient

REQUEST_ID_HEADER = b"x-cc-proxy-request-id"
# Claude Code names its session in every request (X-Claude-Code-Session-Id).
SESSION_HEADER = b"x-claude-code-session-id"


class Endpoint(StrEnum):
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    OTHER = "other"


def endpoint_of(method: str, path: str) -> Endpoint:
    if method == "POST":
        if path == "/v1/messages":
            return Endpoint.MESSAGES
        if path == "/v1/messages/count_tokens":
            return Endpoint.COUNT_TOKENS
    return Endpoint.OTHER


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str  # "target" or "passthrough"
    shape: bool = False  # the target rewrites (SPEC.md §3) apply
    shadow: bool = False  # a shaped copy also goes to the target (compare mode)
    estimate: bool = False  # a target without count_tokens gets a local estimate
    # thinking blocks the target signed are taken out (Anthropic would reject them)
    strip_target_thinking: bool = False


TARGET = Route("target")
PASSTHROUGH = Route("passthrough")
PASSTHROUGH_MESSAGES = Route("passthrough", strip_target_thinking=True)

# SPEC.md §1 as a table.
ROUTES: Mapping[tuple[Mode, Endpoint], Route] = {
    (Mode.TARGET, Endpoint.MESSAGES): Route("target", shape=True),
    (Mode.TARGET, Endpoint.COUNT_TOKENS): Route("target", shape=True, estimate=True),
    (Mode.TARGET, Endpoint.OTHER): TARGET,
    (Mode.COMPARE, Endpoint.MESSAGES): Route(
        "passthrough", shadow=True, strip_target_thinking=True
    ),
    (Mode.COMPARE, Endpoint.COUNT_TOKENS): PASSTHROUGH_MESSAGES,
    (Mode.COMPARE, Endpoint.OTHER): PASSTHROUGH,
    (Mode.ANTHROPIC_ONLY, Endpoint.MESSAGES): PASSTHROUGH_MESSAGES,
    (Mode.ANTHROPIC_ONLY, Endpoint.COUNT_TOKENS): PASSTHROUGH_MESSAGES,
    (Mode.ANTHROPIC_ONLY, Endpoint.OTHER): PASSTHROUGH,
}

# count_tokens answers that mean "this server has no such endpoint"
NO_SUCH_ENDPOINT = frozenset({404, 405, 501})


class ContentTracing:
    """Whether requests that start now have their content logged (PUT /api/tracing); in a
    `Cell`, so that with several workers the switch reaches all of them."""

    def __init__(self, enabled: bool, cell: Cell | None = None) -> None:
        # A shared cell was set before the workers started (see `ModeSwitch`).
        self._cell = cell if cell is not None else Cell(int(enabled))

    @property
    def enabled(self) -> bool:
        return bool(self._cell.value)

    @enabled.setter
    def enabled(self, enabled: bool) -> None:
        self._cell.value = int(enabled)


def _never() -> bool:
    return False


class ClientGone(Exception):
    """The client closed its connection."""


class ClientSink(Sink):
    """Relays the answer to the client over its ASGI connection. Once the answer is being
    ended (its last write, or an error in its place), the client leaving no longer
    cancels the request: the link is let go."""

    __slots__ = ("_link", "_request_id", "_send")

    def __init__(self, send: Send, request_id: bytes, link: ClientLink | None) -> None:
        self._send = send
        self._request_id = request_id
        self._link = link

    def _let_go(self) -> None:
        if self._link is not None:
            self._link.release()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        relayed = response_headers(headers)
        relayed.append((REQUEST_ID_HEADER, self._request_id))
        await self._send({"type": "http.response.start", "status": status, "headers": relayed})

    async def body(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    def body_at_once(self, chunk: bytes) -> bool:
        link = self._link
        return link is not None and link.write_chunk(chunk)

    def at_once(self) -> tuple[Callable[[], bool], Callable[[bytes], object]]:
        link = self._link
        return (
            (link.writable, link.write_chunk) if link is not None else (_never, self.body_at_once)
        )

    async def end(self) -> None:
        self._let_go()
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def fail(self, error: GatewayError, *, started: bool, sse: bool) -> None:
        self._let_go()
        if not started:
            await send_json(self._send, error.status, error.body, self._request_id)
        elif sse:
            await self.body(sse_error_event(error.kind, error.message))
            await self.end()
        # A plain body cut short cannot be mended: returning without ending it makes the
        # server close the connection, which the client sees as a broken answer.


class EstimatingSink(ClientSink):
    """count_tokens on a target that lacks it: answer `{"input_tokens": N}` ourselves."""

    __slots__ = ("_body", "_estimating")

    def __init__(
        self, send: Send, request_id: bytes, link: ClientLink | None, body: Mapping[str, Any]
    ) -> None:
        super().__init__(send, request_id, link)
        self._body = body
        self._estimating = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._estimating = status in NO_SUCH_ENDPOINT
        if not self._estimating:
            await super().start(status, headers)

    async def body(self, chunk: bytes) -> None:
        if not self._estimating:
            await super().body(chunk)

    def body_at_once(self, chunk: bytes) -> bool:
        return self._estimating or super().body_at_once(chunk)

    def at_once(self) -> tuple[Callable[[], bool], Callable[[bytes], object]]:
        return Sink.at_once(self) if self._estimating else super().at_once()

    async def end(self) -> None:
        if not self._estimating:
            await super().end()
            return
        self._let_go()
        estimate = orjson.dumps({"input_tokens": estimate_input_tokens(self._body)})
        await send_json(
            self._send, 200, estimate, self._request_id, [(b"x-cc-proxy-estimate", b"true")]
        )


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    request_id: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID_HEADER, request_id),
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _content_length(headers: Mapping[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        ErrorType.REQUEST_TOO_LARGE,
        f"request body exceeds the gateway's limit of {limit} bytes (server.max_body_bytes)",
    )


async def read_body(
    scope: Scope, receive: Receive, declared: int | None, limit: int, silence_secs: float
) -> bytes:
    """The request body whole; `declared` is its Content-Length, if it has one."""
    if declared is not None and declared > limit:
        raise _too_large(limit)  # answered before a byte of the body is read
    link: ClientLink | None = scope.get(CLIENT_LINK)
    chunks: list[bytes] = []
    size = 0
    while True:
        if link is not None and link.body_whole:
            # Already here, as a small body mostly is by the time the request starts:
            # nothing can stall, and a timer per request is a few percent of its CPU.
            message = await receive()
        else:
            message = await _receive_within(receive, silence_secs)
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _receive_within(receive: Receive, silence_secs: float) -> Message:
    """The next piece of the body. One that falls silent (a Content-Length that lies, a
    client that stalls) must not hold the connection for ever."""
    try:
        async with asyncio.timeout(silence_secs):
            return await receive()
    except TimeoutError:
        raise GatewayError(
            408,
            ErrorType.TIMEOUT,
            f"the request body fell silent for {silence_secs:g}s (server.client_timeout_secs)",
        ) from None


class Proxy:
    def __init__(
        self,
        *,
        upstreams: Mapping[str, Upstream],
        modes: ModeSwitch,
        shaping: TargetShaping,
        passthrough_shaping: PassthroughShaping,
        observers: Observers,
        shadow: Shadow,
        tracing: ContentTracing,
        max_body_bytes: int,
        client_timeout: float,
    ) -> None:
        self.upstreams = upstreams
        self.modes = modes
        self.shaping = shaping
        self.passthrough_shaping = passthrough_shaping
        self.observers = observers
        self.shadow = shadow
        self.tracing = tracing
        self.max_body_bytes = max_body_bytes
        self.client_timeout = client_timeout
        self.client: UpstreamClient | None = None  # opened with the event loop
        # Request ids: 32 hex digits, a random per-process half and a counter, unique
        # across restarts and workers. uuid4 cost a tenth of a small request's CPU.
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mode = self.modes.current  # read once: a switch applies to later requests
        method = scope["method"]
        endpoint = endpoint_of(method, scope["path"])
        route = ROUTES[mode, endpoint]
        upstream = self.upstreams[route.upstream]
        request_id = f"{self._id_prefix}{next(self._id_counter):016x}"
        query = scope["query_string"].decode("latin-1")
        raw_path = scope["raw_path"].decode("latin-1")  # uvicorn's, as the client wrote it
        exchange = Exchange(
            id=request_id,
            role=Role.PRIMARY,
            mode=mode,
            upstream=upstream.name,
            method=method,
            path=scope["path"],
            query=query,
            target=f"{raw_path}?{query}" if query else raw_path,
            is_messages=endpoint is Endpoint.MESSAGES,
            trace_content=self.tracing.enabled,
        )
        rid = request_id.encode()
        # Losing the client cancels this task, wherever it waits: reading the body, queued
        # for a slot, relaying. A self-hosted GPU stops generating for nobody, and a
        # client that leaves while queued never reaches the upstream at all.
        link: ClientLink | None = scope.get(CLIENT_LINK)
        task = asyncio.current_task()
        if link is not None and task is not None:
            link.hold(task)
        self.observers.on_start(exchange)
        try:
            await self._forward(scope, receive, send, exchange, route, upstream, endpoint, rid)
        except GatewayError as error:
            exchange.outcome = Outcome.REJECTED
            exchange.status = error.status
            exchange.detail = error.message
            if link is not None:
                link.release()
            await send_json(send, error.status, error_body(error.kind, error.message), rid)
        except ClientGone:
            exchange.outcome = Outcome.CLIENT_GONE
        except asyncio.CancelledError:
            if link is None or not link.gone or task is None:
                raise  # a shutdown, not the client
            task.uncancel()
            exchange.outcome = Outcome.CLIENT_GONE
        finally:
            if link is not None:
                link.release()
            self.observers.on_end(exchange)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: Exchange,
        route: Route,
        upstream: Upstream,
        endpoint: Endpoint,
        rid: bytes,
    ) -> None:
        # One lookup table for the headers read here (ASGI names are lower-case); where a
        # name repeats, the last one counts.
        named = dict(scope["headers"])
        declared = _content_length(named)
        raw = await read_body(scope, receive, declared, self.max_body_bytes, self.client_timeout)
        body: Mapping[str, Any] = {}
        if endpoint is Endpoint.MESSAGES or route.shape:
            body = MessagesBody(raw)
            model = body.get("model")
            exchange.requested_model = exchange.model = model if isinstance(model, str) else None
            exchange.stream = body.get("stream") is True
            exchange.request = body
            session = named.get(SESSION_HEADER)
            exchange.session_id = session.decode("latin-1") if session else None
        if route.shape:
            shaped = self.shaping.shaped(body, sampling=endpoint is Endpoint.MESSAGES)
            if shaped is not None:
                raw = shaped.encode()
                exchange.request = shaped
                exchange.model = self.shaping.model or exchange.model
        elif route.strip_target_thinking:
            parsed = body if endpoint is Endpoint.MESSAGES else None
            raw = self.passthrough_shaping.shape(raw, parsed) or raw
        exchange.request_body = raw  # as the upstream gets it
        if route.shadow:
            self.shadow.send(scope, exchange, body)

        assert self.client is not None, "the client session opens at start-up"
        headers = upstream.request_headers(scope["headers"], identity=exchange.is_messages)
        if route.upstream == "target":
            headers = self.shaping.shape_headers(headers)
        link = scope.get(CLIENT_LINK)
        sink = (
            EstimatingSink(send, rid, link, body) if route.estimate else ClientSink(send, rid, link)
        )
        await self._relay(exchange, upstream, headers, raw, sink)

    async def _relay(
        self,
        exchange: Exchange,
        upstream: Upstream,
        headers: list[tuple[str, str]],
        body: bytes,
        sink: Sink,
    ) -> None:
        """Take a slot of the upstream's limiter (or refuse with 529) and relay."""
        assert self.client is not None
        limiter = upstream.limiter
        if limiter is not None and not await limiter.acquire():
            raise GatewayError(
                529,
                ErrorType.OVERLOADED,
                f"upstream {upstream.name} is at its limit of {limiter.capacity} requests "
                "in flight (target.max_concurrent); retry shortly",
            )
        try:
            watchers = self.observers.watchers(exchange)
            await relay(
                self.client, upstream, exchange, headers, body, sink, self.observers, watchers
            )
        finally:
            if limiter is not None:
                limiter.release()
