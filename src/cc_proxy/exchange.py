"""One request to one upstream, as the forwarding core sees it, and its observers.

The core fills an `Exchange` and tells the observers what happened to it; the observers
(stats, logs, traces, the compare recorder) never reach into the relay loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cc_proxy.modes import Mode

log = logging.getLogger("cc_proxy")


class Role(StrEnum):
    PRIMARY = "primary"  # the client gets this answer
    SHADOW = "shadow"  # compare mode's fire-and-forget copy to the target


class Outcome(StrEnum):
    COMPLETE = "complete"  # the upstream's answer reached its end (any status)
    REJECTED = "rejected"  # the gateway answered itself: bad body, too large, overloaded
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    STREAM_BROKEN = "stream_broken"  # the upstream died after the answer began
    CLIENT_GONE = "client_gone"
    CANCELLED = "cancelled"  # stopped by the gateway itself: the shutdown grace ran out
    DROPPED = "dropped"  # shadow copy not sent: the target was saturated


@dataclass(slots=True)
class Usage:
    """What an answer reported about itself; filled by `cc_proxy.accounting`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    tool_calls: int = 0
    stop_reason: str | None = None
    model: str | None = None
    # `type` of an Anthropic error: an error body, or an SSE `event: error`
    error_type: str | None = None
    stopped: bool = False  # the answer reached `message_stop` (or was a whole message)


@dataclass(slots=True)
class Exchange:
    id: str
    role: Role
    mode: Mode
    upstream: str
    method: str
    path: str  # unquoted, as routing, logs and traces read it
    query: str
    # The request target as the client wrote it (path still quoted, and query): what the
    # upstream gets after its base URL, byte for byte.
    target: str
    is_messages: bool
    requested_model: str | None = None
    model: str | None = None  # as sent upstream, after any rewrite
    stream: bool = False
    request_body: bytes = b""
    # The Messages body as sent upstream (None elsewhere), its fields decoded where read
    # (`body.MessagesBody`): observers read it instead of parsing the bytes again.
    request: Mapping[str, Any] | None = None
    # A non-streaming Messages answer whole, as relayed (None for a stream, and for an
    # answer too large to count).
    answer_json: bytes | None = None
    session_id: str | None = None  # Claude Code's X-Claude-Code-Session-Id
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    finished: float | None = None
    status: int | None = None
    upstream_request_id: str | None = None
    outcome: Outcome | None = None
    detail: str | None = None  # a short, secret-free reason for a failed outcome
    usage: Usage = field(default_factory=Usage)
    trace_content: bool = False  # content tracing was on when this exchange started

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_byte is None else (self.first_byte - self.started) * 1000

    @property
    def duration_ms(self) -> float | None:
        return None if self.finished is None else (self.finished - self.started) * 1000

    @property
    def failed(self) -> bool:
        return (
            self.outcome is not Outcome.COMPLETE
            or (self.status or 0) >= 400
            or self.usage.error_type is not None
        )

    @property
    def error_kind(self) -> str | None:
        """None when the exchange succeeded; else the Anthropic error type the answer gave,
        or how the exchange failed (`timeout`, `unreachable`, …), or the HTTP status."""
        if not self.failed:
            return None
        if self.usage.error_type:
            return self.usage.error_type
        if self.outcome is not None and self.outcome is not Outcome.COMPLETE:
            return self.outcome.value
        return str(self.status)


class AnswerCopy:
    """What an observer keeps of a relayed answer: its first `limit` bytes, and its size."""

    __slots__ = ("data", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.size = 0

    def keep(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data.extend(chunk[:room])


def shown(content: bytes | bytearray, limit: int, size: int | None = None) -> str:
    """`content` as text for a log line or span, cut at `limit` bytes; a cut says how
    large the whole was (`size`, when `content` is already a cut copy)."""
    whole = len(content) if size is None else size
    text = bytes(content[:limit]).decode("utf-8", "replace")
    if whole > limit:
        text += f"… ({whole} bytes in all)"
    return text


class Observer:
    """Subscribes to exchanges. Every hook is optional and must not block or raise.

    `only_modes` and `only_traced` narrow which exchanges reach the hooks at all, so that
    an observer with nothing to do for most exchanges costs them nothing."""

    only_modes: frozenset[Mode] | None = None  # None: every mode
    only_traced: bool = False  # only exchanges that started with content tracing on

    def on_start(self, exchange: Exchange) -> None:
        """The route is chosen and the request is about to be sent upstream."""

    def on_first_byte(self, exchange: Exchange) -> None:
        """The first byte of the response body arrived."""

    def on_end(self, exchange: Exchange) -> None:
        """The exchange is over; `outcome` says how."""

    def body_watcher(self, exchange: Exchange) -> Callable[[bytes], None] | None:
        """A callable to receive each relayed body chunk of this exchange, or None."""
        return None

    def wants(self, mode: Mode, traced: bool) -> bool:
        """Whether exchanges of `mode`, with content tracing on or off, reach the hooks."""
        return (self.only_modes is None or mode in self.only_modes) and (
            traced or not self.only_traced
        )


# Per hook, the observers that define it.
_Hooked = dict[str, list[Observer]]


class Observers(Observer):
    """Fans each hook out to the observers it holds, in order.

    An observer that raises is logged and skipped: a broken observer must never break a
    client's request. A hook is called only on the observers that define it and want the
    exchange (`Observer.wants`): most define two or three of the four, and the calls that
    do nothing were a measurable part of a small request's CPU.
    """

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self._observers: list[Observer] = []
        # by the exchange's (mode, trace_content): made when first needed
        self._hooked: dict[tuple[Mode, bool], _Hooked] = {}
        for observer in observers:
            self.add(observer)

    def add(self, observer: Observer) -> None:
        self._observers.append(observer)
        self._hooked.clear()

    def _hooks(self, exchange: Exchange) -> _Hooked:
        kind = (exchange.mode, exchange.trace_content)
        hooked = self._hooked.get(kind)
        if hooked is None:
            wanting = [observer for observer in self._observers if observer.wants(*kind)]
            hooked = self._hooked[kind] = {
                hook: [o for o in wanting if getattr(type(o), hook) is not getattr(Observer, hook)]
                for hook in _HOOKS
            }
        return hooked

    def on_start(self, exchange: Exchange) -> None:
        for observer in self._hooks(exchange)["on_start"]:
            try:
                observer.on_start(exchange)
            except Exception:
                _log_failure(observer, "on_start")

    def on_first_byte(self, exchange: Exchange) -> None:
        for observer in self._hooks(exchange)["on_first_byte"]:
            try:
                observer.on_first_byte(exchange)
            except Exception:
                _log_failure(observer, "on_first_byte")

    def on_end(self, exchange: Exchange) -> None:
        for observer in self._hooks(exchange)["on_end"]:
            try:
                observer.on_end(exchange)
            except Exception:
                _log_failure(observer, "on_end")

    def watchers(self, exchange: Exchange) -> list[Callable[[bytes], None]]:
        found = []
        for observer in self._hooks(exchange)["body_watcher"]:
            try:
                watcher = observer.body_watcher(exchange)
            except Exception:
                _log_failure(observer, "body_watcher")
                continue
            if watcher is not None:
                found.append(watcher)
        return found


_HOOKS = ("on_start", "on_first_byte", "on_end", "body_watcher")


def _log_failure(observer: Observer, hook: str) -> None:
    log.exception("observer %s failed in %s", type(observer).__name__, hook)
