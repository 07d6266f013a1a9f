"""The two upstreams, described as data: where they are, whose credentials they get,
how long they may take, and how many requests they may have in flight."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import TimerNoop
from aiohttp.streams import StreamReader

# RFC 9110 §7.6.1, plus the pre-standard Proxy-Connection.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by aiohttp for the upstream connection.
_SET_FOR_UPSTREAM = frozenset({b"host", b"content-length"})
CLIENT_CREDENTIALS = frozenset({b"x-api-key", b"authorization"})
_ACCEPT_ENCODING = frozenset({b"accept-encoding"})
# What never goes upstream, by (forwards client credentials, asks for identity).
_DROPPED = {
    (forwards, identity): HOP_BY_HOP
    | _SET_FOR_UPSTREAM
    | (frozenset() if forwards else CLIENT_CREDENTIALS)
    | (_ACCEPT_ENCODING if identity else frozenset())
    for forwards in (True, False)
    for identity in (True, False)
}
# aiohttp adds these when absent; a relay must send only what the client sent. Set on
# the session: given per request, aiohttp builds them into a new set every time.
SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})

Headers = list[tuple[str, str]]


class Limiter:
    """At most `capacity` requests in flight; a newcomer waits up to `wait_secs` for a slot.

    A released slot is handed straight to the longest waiter, so waiting is fair and the
    count never dips below the true number in flight.
    """

    def __init__(self, capacity: int, wait_secs: float) -> None:
        self.capacity = capacity
        self.wait_secs = wait_secs
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot only if one is free now (shadow traffic never waits)."""
        if self.in_flight < self.capacity and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> bool:
        """Take a slot, waiting at most `wait_secs`; False when none came free."""
        if self.try_acquire():
            return True
        if self.wait_secs <= 0:
            return False
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            async with asyncio.timeout(self.wait_secs):
                await slot
        except TimeoutError:
            # The slot may have been handed over just as the wait ran out.
            return slot.done() and not slot.cancelled()
        except BaseException:
            if slot.done() and not slot.cancelled():
                self.release()
            raise
        finally:
            if not slot.done():
                slot.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(slot)
        return True

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def release(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes on; in_flight is unchanged
                return
        self.in_flight -= 1


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str  # "target" or "passthrough": the word used in logs, traces and stats
    url: str  # base URL without a trailing slash; the client's path and query follow it
    timeout: aiohttp.ClientTimeout
    # Whether the client's x-api-key / authorization are forwarded. When not, the
    # gateway's own credentials for this upstream (if any) are sent instead.
    forwards_client_credentials: bool
    credentials: Headers
    limiter: Limiter | None = None

    def url_for(self, path: str, query: str) -> str:
        return f"{self.url}{path}?{query}" if query else f"{self.url}{path}"

    def request_headers(
        self, client_headers: Iterable[tuple[bytes, bytes]], *, identity: bool
    ) -> Headers:
        """The client's headers as this upstream must see them.

        `identity` asks the upstream for an uncompressed answer, which the gateway reads
        to count tokens.
        """
        # ASGI servers hand header names over lower-cased.
        dropped = _DROPPED[self.forwards_client_credentials, identity]
        listed = _connection_tokens(client_headers)
        if listed:
            dropped = dropped | listed
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in client_headers
            if name not in dropped
        ]
        if not self.forwards_client_credentials:
            headers.extend(self.credentials)
        if identity:
            headers.append(("accept-encoding", "identity"))
        return headers


def _listed(connection: bytes) -> Iterator[bytes]:
    """The header names a `Connection` value lists, which are hop-by-hop as well."""
    return (token.strip().lower() for token in connection.split(b","))


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in `Connection` headers (`headers` as ASGI gives them, names
    in lower case)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(_listed(value))
    return frozenset(tokens)


def response_headers(upstream_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers for the client: all but the hop-by-hop ones."""
    kept = []
    listed: set[bytes] = set()
    for name, value in upstream_headers:
        lowered = name.lower()  # once: the upstream's own case is what the client gets
        if lowered == b"connection":
            listed.update(_listed(value))
        if lowered not in HOP_BY_HOP:
            kept.append((lowered, name, value))
    return [(name, value) for lowered, name, value in kept if lowered not in listed]


class _RelayReader(StreamReader):
    """aiohttp's reader of an answer's body, as a relay reads it: always all that has
    come (`readany`), never by HTTP chunk.

    aiohttp (3.14) notes where every HTTP chunk ends, for `readchunk`, and hands out what
    it holds one chunk at a time. An SSE upstream sends each event as a chunk of its own,
    so a stream paid for that once per event. Here chunk ends are not noted (`readchunk`
    no longer tells them; nothing here calls it), and all that is held is taken in one
    join. Measured by instruction count (callgrind): 17% less per streamed answer of 100
    deltas, 11% less per Claude Code request.
    """

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        if data:
            buffer = self._buffer
            buffer.append(data)
            self._size += len(data)
            self.total_bytes += len(data)
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            # aiohttp's two bounds on what is held: bytes, and pieces (a piece costs
            # memory of its own, however small).
            if self._size > self._high_water or len(buffer) > self._high_water_chunks:
                self._protocol.pause_reading()
        return False

    # The compiled parser calls these at every HTTP chunk. Chunk ends are not noted, and a
    # builtin that does nothing costs no Python frame: a `pass` method took 8% of the
    # instructions of a stream read in large pieces.
    begin_http_chunk_receiving = end_http_chunk_receiving = staticmethod(bool)  # type: ignore[assignment]

    async def readany(self) -> bytes:
        # aiohttp's, less a coroutine of its own for every wait (`_wait`) and the
        # total-timeout timer around it, which does nothing here (see `_adopt_reader`):
        # 7% of the instructions of a model-paced stream (callgrind, 100 deltas 4 ms
        # apart: 5.17 M -> 4.82 M per answer).
        if self._exception is not None:
            raise self._exception
        while not self._buffer and not self._eof:
            if not self._protocol.connected:
                raise RuntimeError("Connection closed.")
            if self._waiter is not None:
                raise RuntimeError("readany() called while another read is waiting")
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._read_nowait(-1)

    def _read_nowait(self, n: int) -> bytes:
        if n != -1 or self._buffer_offset:
            return super()._read_nowait(n)
        buffer = self._buffer
        if len(buffer) == 1:
            data = buffer.popleft()
        else:
            data = b"".join(buffer)
            buffer.clear()
        self._size -= len(data)
        self._cursor += len(data)
        protocol = self._protocol
        # `_ResponseHandler.resume_reading`'s own test, made here to spare a call per read
        if self._size < self._low_water and (protocol._reading_paused or protocol._buffer_paused):
            # after the buffer is emptied: resuming may feed it again at once
            protocol.resume_reading()
        return data


class _ResponseHandler(ResponseHandler):
    """aiohttp's protocol for an upstream connection, less a call it makes for nothing,
    and reading the answer's body with `_RelayReader`.

    aiohttp's StreamReader (3.14) asks the protocol to resume reading after every read
    that leaves its buffer low, whether or not reading was paused; the protocol then feeds
    its parser an empty chunk and resumes the transport. A stream relayed event by event
    paid that once per event: 7% of a streamed answer's CPU (py-spy, the Claude Code
    request). Only a paused connection has anything to resume.

    It also keeps the read deadline (`sock_read`) without a new timer for every read.
    """

    _read_deadline = 0.0

    def _reschedule_timeout(self) -> None:
        # aiohttp cancels a timer and makes another at every read: 5% of the instructions
        # of a stream read one event at a time. Here a read moves the deadline on, and the
        # one timer, when it fires, is set again for whatever time is left.
        timeout = self._read_timeout
        if not timeout:
            self._drop_timeout()
            return
        loop = self._loop
        self._read_deadline = loop.time() + timeout
        if self._read_timeout_handle is None:
            self._read_timeout_handle = loop.call_at(self._read_deadline, self._deadline_reached)

    def _deadline_reached(self) -> None:
        self._read_timeout_handle = None
        loop = self._loop
        if loop.time() < self._read_deadline:  # data came after the timer was set
            self._read_timeout_handle = loop.call_at(self._read_deadline, self._deadline_reached)
        else:
            self._on_read_timeout()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)

    def data_received(self, data: bytes) -> None:
        payload = self._payload
        if type(payload) is _RelayReader and not payload._eof:
            super().data_received(data)  # more of an answer's body
            return
        # This read may hold an answer's head, and the body behind it: a fast upstream has
        # often sent much of a stream by the time the head is read. The head of a chunked
        # answer is parsed first, so that its chunks go to the relay's reader from the
        # first (a read parsed in two pieces is parsed as two reads are). A body of known
        # length is fed in one piece either way.
        end = data.find(b"\r\n\r\n") + 4
        if 4 <= end < len(data) and data[:end].lower().find(b"chunked") >= 0:
            super().data_received(data[:end])
            self._adopt_reader()
            data = data[end:]
        super().data_received(data)
        self._adopt_reader()

    def _adopt_reader(self) -> None:
        payload = self._payload
        # An answer under a total timeout keeps aiohttp's reader, which enforces it at
        # every read; the gateway sets none (`app._timeout`: a stream may last minutes).
        if type(payload) is StreamReader and type(payload._timer) is TimerNoop:
            # The answer's head is parsed and its reader made, by aiohttp's compiled
            # parser, whose reader class is fixed. The reader is given the relay's class
            # (same layout: it adds no slots) and reads the relay's way from here on.
            payload._http_chunk_splits = None
            payload.__class__ = _RelayReader


def open_session() -> aiohttp.ClientSession:
    """The one client session for both upstreams, opened inside the running loop. No
    connection cap of its own: the target's limiter is the explicit one. No cookie jar:
    a relay must not carry one client's cookies to another. Answers stay as sent, and
    requests get no header that the client did not send (SKIP_AUTO_HEADERS)."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
    # The connector makes each connection's protocol with this factory (aiohttp 3.14).
    connector._factory = functools.partial(  # type: ignore[assignment]
        _ResponseHandler, loop=asyncio.get_running_loop()
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
    )
