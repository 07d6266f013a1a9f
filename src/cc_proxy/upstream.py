"""The two upstreams, described as data: where they are, whose credentials they get,
how long they may take, and how many requests they may have in flight; and the rules for
the headers that cross the gateway. How a request reaches one is `upstream_http`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import aiohttp

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
# Written for the upstream connection by `upstream_http.UpstreamClient.send`.
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
