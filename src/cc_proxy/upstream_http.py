"""HTTP/1.1 to the upstreams: the one client session, the protocol and body reader of
its connections, and a request sent whole on one of them.

aiohttp's connector makes, pools and closes the connections (DNS, TLS, keep-alive), and
its compiled parser reads the answers. `UpstreamClient.send` leaves out what
`ClientSession.request` builds around them, none of which a relay uses: a `ClientRequest`
with URL and header objects, a `ClientResponse`, timers, traces, cookies, redirects, and
on Python 3.11 a task of its own that writes the body after the head. Here the head and
the body go out in one `writev`. Measured by instruction count (callgrind, `python -m
bench.instructions`, per response): a 5 KB non-streaming request 835 k -> 616 k (the
minimal relay: 530 k), a streamed answer of 100 deltas 1,456 k -> 1,257 k, the Claude
Code request 2,465 k -> 2,183 k.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import TimerNoop
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from aiohttp.connector import Connection

    from cc_proxy.upstream import Headers, Upstream

# aiohttp adds these when absent; a relay must send only what the client sent. Set on
# the session, for any request made through it rather than `UpstreamClient.send`.
SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
# aiohttp's rules (3.14), kept: without a body these methods get no `Content-Length: 0`;
# and only these are sent again, on a new connection, when a pooled one turns out to have
# been closed by the upstream while it waited in the pool.
_NO_EMPTY_LENGTH = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# What the relay does with an answer's body as it comes (`UpstreamAnswer.relay_at_once`):
# whether it can take some now, and what takes it.
AtOnce = tuple[Callable[[], bool], Callable[[bytes], None]]


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
        # The compiled parser calls this at every HTTP chunk: once an event of an SSE
        # answer. It keeps the piece and bounds how many are kept (a piece costs memory
        # of its own, however small, and one read may hold thousands); the rest of what
        # aiohttp's does (the bytes held and their bound, waking the reader) is done once
        # a read, in `fed`. Measured by instruction count (callgrind), per streamed answer
        # of 100 deltas read fast: 1,241 k -> 1,147 k.
        if data:
            buffer = self._buffer
            buffer.append(data)
            if len(buffer) > self._high_water_chunks:
                self._protocol.pause_reading()  # pauses the parser too, mid-read
        return False

    def fed(self) -> None:
        """After the parser has been given a read: passed on at once where the relay
        waits for it and can take it now (`UpstreamAnswer.relay_at_once`); else counted,
        the relay woken if it waits, and the connection paused while too much is held."""
        buffer = self._buffer
        if not buffer:
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():  # else busy, or woken already
            protocol = self._protocol
            at_once = protocol.at_once  # type: ignore[attr-defined]
            # A paused connection is resumed by the relay's own read (`readany`).
            if at_once is not None and not (protocol._reading_paused or protocol._buffer_paused):
                ready, consume = at_once
                try:
                    if ready():
                        consume(self._take())
                        return
                except Exception as exc:  # the relay's own fault, raised where it waits
                    self._waiter = None
                    waiter.set_exception(exc)
                    return
            self._waiter = None
            waiter.set_result(None)
        self._size = size = len(buffer[0]) if len(buffer) == 1 else sum(map(len, buffer))
        self.total_bytes = self._cursor + size
        if size > self._high_water:
            self._protocol.pause_reading()

    def _take(self) -> bytes:
        """All that is held, in one piece (no part of it read before)."""
        buffer = self._buffer
        if len(buffer) == 1:
            data = buffer.popleft()
        else:
            data = b"".join(buffer)
            buffer.clear()
        self._size = 0
        self._cursor += len(data)
        self.total_bytes = self._cursor  # all that came has now been read
        return data

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
        buffer = self._buffer
        while not buffer and not self._eof:
            if self._protocol.transport is None:  # aiohttp's `connected`, less a call
                raise RuntimeError("Connection closed.")
            if self._waiter is not None:
                raise RuntimeError("readany() called while another read is waiting")
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if self._buffer_offset:  # part of the first piece was read, not by `readany`
            return self._read_nowait_chunk(-1)
        data = self._take()  # aiohttp's `_read_nowait(-1)`, joined at once (see the class)
        protocol = self._protocol
        # `_ResponseHandler.resume_reading`'s own test, made here to spare a call per read
        if protocol._reading_paused or protocol._buffer_paused:
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
    at_once: AtOnce | None = None  # see `UpstreamAnswer.relay_at_once`
    # Answers read on this connection: one that has had any came from the pool, and may
    # have been closed by the upstream while it waited there.
    answers = 0

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
        parser = self._parser
        if (
            type(payload) is _RelayReader
            and not payload._eof
            and parser is not None
            and self._payload_parser is None
            and not (self._upgraded or self._payload_parser_failed)
        ):
            # More of an answer's body: what aiohttp's `data_received` (3.14) does with
            # it, less a call of its own and the tests that only its other states need. A
            # model-paced stream is a read per event: 6% of the instructions of each.
            if data:
                self._reschedule_timeout()
            try:
                messages, upgraded, _ = parser.feed_data(data)
            except BaseException as exc:
                self._parse_failed(exc)
                return
            if messages or upgraded:
                # An answer that no request asked for, behind this one: aiohttp would
                # queue it for the connection's next request. It is not read; the
                # connection is closed once this answer is done.
                self._should_close = True
            payload.fed()
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
        if self._exception is not None:  # the parser refused the body (aiohttp's branch)
            self._fail_reader(self._exception)
            return
        self._adopt_reader()
        payload = self._payload
        if type(payload) is _RelayReader:
            payload.fed()

    def _parse_failed(self, exc: BaseException) -> None:
        """aiohttp's own steps (3.14) when its parser refuses what the upstream sent (the
        connection closed, whoever waits for an answer told), and the answer's reader
        failed too (`_fail_reader`)."""
        if self.transport is not None:
            self.transport.close()
        if not isinstance(exc, Exception):
            raise exc
        if isinstance(exc, HttpProcessingError):
            error = HttpProcessingError(code=exc.code, message=exc.message, headers=exc.headers)
        else:
            error = HttpProcessingError()
        self.set_exception(error, exc)
        self._fail_reader(error)

    def _fail_reader(self, exc: BaseException) -> None:
        """aiohttp's parser lets go of the answer's reader before it raises, and aiohttp
        (3.14) then tells only whoever waits for a new answer: a relay reading the body
        of one whose chunked framing broke mid-way waited for ever, the connection
        closed and no timer left to end the wait."""
        payload = self._payload
        if isinstance(payload, StreamReader) and not payload.is_eof() and not payload.exception():
            payload.set_exception(
                aiohttp.ClientPayloadError(f"Response payload is not completed: {exc!r}"), exc
            )

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


class UpstreamAnswer:
    """An upstream's answer as the relay reads it: its status, its headers and its body's
    reader. `release` gives a connection read to its end back to the pool (aiohttp pools
    it only if nothing is left unread); `close` closes it."""

    __slots__ = ("_connection", "content", "headers", "raw_headers", "status")

    def __init__(
        self,
        connection: Connection,
        status: int,
        headers: CIMultiDictProxy[str],
        raw_headers: tuple[tuple[bytes, bytes], ...],
        content: StreamReader,
    ) -> None:
        self._connection: Connection | None = connection
        self.status = status
        self.headers = headers
        self.raw_headers = raw_headers
        self.content = content

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def relay_at_once(self, at_once: AtOnce | None) -> None:
        """From now on (until called with None), while the relay waits for more of the
        body (`content.readany()`), each read from the upstream is given to `consume`
        straight from the connection's callback, when `ready()` says it can be taken now,
        instead of waking the relay's task. A model-paced stream is read an event at a
        time, and each wake-up cost a future made and set, and a task stepped through the
        eight coroutines from uvicorn's down to `readany`: by instruction count, 4,443 k
        -> 3,560 k per streamed answer of 100 deltas 20 ms apart; by CPU, 6% less with 5
        ms between deltas (interleaved A/B, median of ten paired rounds). At a fast
        upstream's pace the relay is rarely waiting when a read comes: CPU the same
        (sixteen paired rounds: 1.007), 1.4% more instructions.

        Whatever `consume` cannot take now (not ready, the body's end, a paused
        connection) wakes the task as before, which reads it in order: `consume` is given
        nothing while anything is held, and what it raises is raised by `readany`.
        aiohttp's own reader (an answer under a total timeout) is read as it was."""
        connection = self._connection
        protocol = connection.protocol if connection is not None else None
        if type(self.content) is _RelayReader and isinstance(protocol, _ResponseHandler):
            protocol.at_once = at_once


def _request_head(start: str, start_lines: int, headers: Headers, length: int | None) -> bytes:
    """The request's head as it goes on the wire: `start`, the request line and the
    route's own headers (`start_lines` lines in all), then the request's headers and the
    body's length (none said where `length` is None)."""
    lines = [start]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # A CR and a LF to each line: a method, target, name or value that held either would
    # end its line early and smuggle a header in, as aiohttp refuses. httptools lets none
    # through from a client; configured credentials are checked too.
    breaks = len(lines) - 1 + start_lines
    if head.count("\r") != breaks or head.count("\n") != breaks:
        raise ValueError("a line break in the request line or a header of an upstream request")
    return head.encode("latin-1")


@dataclass(frozen=True, slots=True)
class _Route:
    """What a request to one upstream needs beyond its own bytes."""

    url: URL  # the upstream's URL without any user:password, fit for error messages
    base_path: str  # its path, which the client's target follows
    # After the target: the protocol, the Host header as aiohttp writes it (no default
    # port), and Basic credentials where the URL has a user:password, as aiohttp sends.
    after_target: str
    after_target_lines: int
    basic_auth: bool
    # What the connector reads to find or make a connection to the upstream: its pool
    # key, host, port and TLS settings. Never sent.
    connect: aiohttp.ClientRequest


class UpstreamClient:
    """The one client session for both upstreams, opened inside the running loop, and the
    way the relay sends through it."""

    def __init__(self) -> None:
        self.session = open_session()
        self._routes: dict[str, _Route] = {}  # by upstream URL

    async def close(self) -> None:
        await self.session.close()

    def _route(self, upstream: Upstream) -> _Route:
        route = self._routes.get(upstream.url)
        if route is None:
            url = URL(upstream.url)
            shown = url.with_user(None)
            connect = aiohttp.ClientRequest("GET", shown, loop=asyncio.get_running_loop())
            after = f" HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n"
            basic_auth = bool(url.raw_user or url.raw_password)
            if basic_auth:
                credentials = aiohttp.encode_basic_auth(url.user or "", url.password or "")
                after += f"Authorization: {credentials}\r\n"
            lines = after.count("\n")
            route = _Route(shown, url.raw_path.rstrip("/"), after, lines, basic_auth, connect)
            self._routes[upstream.url] = route
        return route

    async def send(
        self, upstream: Upstream, method: str, target: str, headers: Headers, body: bytes
    ) -> UpstreamAnswer:
        """Send a request for `target` (a path and query, as the client wrote them) to
        `upstream`, and wait for the head of the answer.

        The upstream's `sock_connect` and `sock_read` bounds apply; a total one does not
        (the gateway sets none: a stream may last minutes). Raises as
        `ClientSession.request` does: `aiohttp.ConnectionTimeoutError` when no connection
        came in time, a `TimeoutError` when no answer did, another `aiohttp.ClientError`
        when the connection or the answer failed."""
        route = self._route(upstream)
        if route.basic_auth and any(name.lower() == "authorization" for name, _ in headers):
            # aiohttp refuses this too: which of the two was meant cannot be told
            raise ValueError("an upstream URL's user:password and an Authorization header")
        start = f"{method} {route.base_path}{target}{route.after_target}"
        # The head and the body go out together (one writev), the body not copied: a
        # long Claude Code conversation's is megabytes.
        length = len(body) if body or method not in _NO_EMPTY_LENGTH else None
        request = (_request_head(start, route.after_target_lines, headers, length), body)
        connect = route.connect
        connector = self.session.connector
        assert connector is not None, "the session is open"
        retry = method in _IDEMPOTENT
        while True:
            try:
                connection = await connector.connect(connect, [], upstream.timeout)
            except TimeoutError as exc:
                raise aiohttp.ConnectionTimeoutError(
                    f"Connection timeout to host {route.url}"
                ) from exc
            protocol = connection.protocol
            assert isinstance(protocol, _ResponseHandler)
            pooled = protocol.answers > 0
            try:
                return await self._exchange(connection, protocol, method, upstream, request)
            except BaseException as exc:
                connection.close()
                stale = isinstance(exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError)
                if not (stale and retry and pooled):
                    raise
                retry = False

    async def _exchange(
        self,
        connection: Connection,
        protocol: _ResponseHandler,
        method: str,
        upstream: Upstream,
        request: tuple[bytes, bytes],
    ) -> UpstreamAnswer:
        session = self.session
        protocol.set_response_params(
            skip_payload=method == "HEAD",
            read_until_eof=True,
            auto_decompress=False,
            read_timeout=upstream.timeout.sock_read,
            read_bufsize=session._read_bufsize,
            timeout_ceil_threshold=connection._connector._timeout_ceil_threshold,
            max_line_size=session._max_line_size,
            max_field_size=session._max_field_size,
            max_headers=session._max_headers,
        )
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        transport.writelines(request)
        protocol.start_timeout()  # sock_read: the answer's head is due from now on
        while True:
            try:
                message, payload = await protocol.read()
            except HttpProcessingError as exc:
                url = self._route(upstream).url
                info = aiohttp.RequestInfo(url, method, CIMultiDictProxy(CIMultiDict()))
                raise aiohttp.ClientResponseError(
                    info, (), status=exc.code, message=exc.message
                ) from exc
            # An interim answer (100 Continue, 103 Early Hints) comes before the answer.
            if not 100 <= message.code <= 199 or message.code == 101:
                break
        protocol.answers += 1
        return UpstreamAnswer(
            connection, message.code, message.headers, message.raw_headers, payload
        )
