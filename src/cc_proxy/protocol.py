"""The HTTP/1.1 protocol uvicorn runs for each client connection: its httptools protocol,
with what that leaves unbounded bounded, and its own refusals in the Anthropic shape.

uvicorn times out only an idle keep-alive connection: a client may otherwise take
forever over a request's head (slow loris), or send a head of any size, which httptools
buffers whole. Each such connection would hold a socket and memory for nothing.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from cc_proxy.errors import ErrorType, error_body

# Claude Code's request heads are about 2 KiB; common servers stop at 8 to 64 KiB.
MAX_HEAD_BYTES = 64 * 1024
# The scope key of a request's `ClientLink`.
CLIENT_LINK = "cc_proxy.client_link"


class ClientLink:
    """What ties a request's handler to its client's connection: while the handler holds
    it, losing the connection cancels the handler's task, with `gone` set so that the
    handler can tell this from a shutdown. A task per request waiting on `receive()` for
    the disconnect did the same at a cost, measured A/B, of a fifth of a 5 KB request's
    CPU and 1.8 KB of every stream held."""

    __slots__ = ("_held", "body_whole", "cycle", "gone", "task")

    def __init__(self, held: set[ClientLink]) -> None:
        self._held = held  # the connection's links that are held now
        self.gone = False
        # The request's body has arrived to its end: reading it can no longer stall.
        self.body_whole = False
        self.task: asyncio.Task[Any] | None = None
        # uvicorn's request-response cycle, once the head is read. Weakly: the cycle holds
        # the scope, which holds this link, and a reference loop per request would leave
        # every request's objects to the garbage collector.
        self.cycle: weakref.ref[RequestResponseCycle] | None = None

    def write_chunk(self, chunk: bytes) -> bool:
        """Writes `chunk` to the client as one HTTP chunk of the answer, where uvicorn's
        `send` of `{"body": chunk, "more_body": True}` would do just that (a chunked answer
        under way, the client there, its connection not paused); False, having written
        nothing, where the caller must `send` it. An SSE answer is such a chunk per event,
        and the message dict, the coroutine and uvicorn's checks around each write were
        7% of the instructions of a model-paced stream (callgrind, 100 deltas 4 ms apart:
        5.55 M -> 5.17 M per answer; uvicorn 0.54, whose cycle this reads)."""
        cycle = self.cycle() if self.cycle is not None else None
        if (
            cycle is None
            # None before the head is sent, and for a HEAD request, whose head uvicorn
            # writes unchunked (relayed heads never carry Transfer-Encoding: hop-by-hop)
            or cycle.chunked_encoding is not True
            or cycle.response_complete
            or cycle.disconnected
            or cycle.flow.write_paused
            or not chunk
        ):
            return False
        cycle.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return True

    def writable(self) -> bool:
        """Whether `write_chunk` would write a chunk now (the same test, less the chunk:
        a call of its own from `write_chunk` would cost every write)."""
        cycle = self.cycle() if self.cycle is not None else None
        return not (
            cycle is None
            or cycle.chunked_encoding is not True
            or cycle.response_complete
            or cycle.disconnected
            or cycle.flow.write_paused
        )

    def hold(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self._held.add(self)

    def release(self) -> None:
        """From now on the client leaving changes nothing (the answer is being ended)."""
        self.task = None
        self._held.discard(self)

    def lost(self) -> None:
        task = self.task
        if task is not None:
            self.release()
            self.gone = True
            task.cancel()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """A request head must arrive whole within `head_timeout` seconds of its first byte
    (or of the connection's opening) and be at most MAX_HEAD_BYTES long."""

    head_timeout: float = 60.0  # set per server by `bounded_protocol`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[HTTPStatus, ErrorType, str] | None = None
        self._held_links: set[ClientLink] = set()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        for link in tuple(self._held_links):
            link.lost()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a read that also completes the head is let through.
        if self._in_head:
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    ErrorType.INVALID_REQUEST,
                    f"request line and headers exceed {MAX_HEAD_BYTES} bytes",
                )
            else:
                # Timed from the read that began the head and did not end it: a head that
                # comes whole in one read, as nearly all do, never starts a timer.
                self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[CLIENT_LINK] = ClientLink(self._held_links)  # type: ignore[literal-required]
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # none made for an upgrade
            self.scope[CLIENT_LINK].cycle = weakref.ref(cycle)  # type: ignore[literal-required]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.scope[CLIENT_LINK].body_whole = True  # type: ignore[literal-required]

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None:
            self._refuse(*self._refusal)

    def send_400_response(self, msg: str) -> None:
        # httptools could not parse the request: uvicorn's own answer is plain text.
        self._refuse(HTTPStatus.BAD_REQUEST, ErrorType.INVALID_REQUEST, msg)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse(
            HTTPStatus.REQUEST_TIMEOUT,
            ErrorType.TIMEOUT,
            f"the request line and headers did not arrive within {self.head_timeout:g}s "
            "(server.client_timeout_secs)",
        )

    def _refuse(self, status: HTTPStatus, kind: ErrorType, message: str) -> None:
        """Answer on the raw connection (this request never reached the app) and close
        it. A request read whole before the bad bytes (pipelining, or a body followed by
        more than its Content-Length said) gets its own answer first; one whose body can
        no longer come is dropped, and the app sees its client leave."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            self._refusal = (status, kind, message)
            return
        body = error_body(kind, message)
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"x-cc-proxy-request-id: {uuid.uuid4().hex}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        self.transport.close()


def bounded_protocol(head_timeout: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for a server whose clients get `head_timeout` for a head."""
    return type(
        "BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"head_timeout": head_timeout}
    )
