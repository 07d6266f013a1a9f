"""What the dashboard shows of recent traffic: the last exchanges (`GET /api/recent`) and,
per upstream, a series of fixed time buckets for the sparklines (`GET /api/series`).

Both are bounded: a ring of `RECENT_SIZE` exchanges and `SERIES_BUCKETS` buckets, so a
gateway that runs for months holds no more than one that just started.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cc_proxy.exchange import Exchange, Observer, Outcome

RECENT_SIZE = 200
SERIES_BUCKET_SECS = 5
SERIES_BUCKETS = 60  # five minutes
# A client's model name or path is shown, never trusted to be short.
MAX_SHOWN = 120


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:MAX_SHOWN]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _Ended:
    """An ended exchange as the ring keeps it: the few values the dashboard lists, made
    into a `summary` only when read (building it for every exchange was a measurable part
    of a small request's CPU). It holds no body, so the ring stays small."""

    __slots__ = (
        "detail",
        "duration_ms",
        "id",
        "method",
        "mode",
        "model",
        "outcome",
        "path",
        "requested_model",
        "role",
        "started_at",
        "status",
        "stream",
        "ttft_ms",
        "upstream",
        "usage",
    )

    def __init__(self, exchange: Exchange, started_at: float) -> None:
        self.id = exchange.id
        self.started_at = started_at
        self.role = exchange.role
        self.mode = exchange.mode
        self.upstream = exchange.upstream
        self.method = exchange.method
        self.path = exchange.path
        self.status = exchange.status
        self.outcome = exchange.outcome
        self.requested_model = exchange.requested_model
        self.model = exchange.model
        self.stream = exchange.stream
        self.ttft_ms = exchange.ttft_ms
        self.duration_ms = exchange.duration_ms
        self.usage = exchange.usage
        self.detail = exchange.detail

    def summary(self) -> dict[str, Any]:
        """No content, no headers."""
        usage = self.usage
        return {
            "id": self.id,
            "time": round(self.started_at, 3),
            "role": self.role.value,
            "mode": self.mode.value,
            "upstream": self.upstream,
            "method": self.method,
            "path": _cut(self.path),
            "status": self.status,
            "outcome": self.outcome.value if self.outcome else None,
            "requested_model": _cut(self.requested_model),
            "model": _cut(self.model),
            "stream": self.stream,
            "ttft_ms": _ms(self.ttft_ms),
            "duration_ms": _ms(self.duration_ms),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "tool_calls": usage.tool_calls,
            "stop_reason": usage.stop_reason,
            "error_type": usage.error_type,
            "detail": self.detail,
        }


@dataclass(slots=True)
class _Bucket:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0


class Activity(Observer):
    def __init__(self, upstreams: Iterable[str], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._recent: deque[_Ended] = deque(maxlen=RECENT_SIZE)
        # upstream -> bucket number (start time // SERIES_BUCKET_SECS) -> figures
        self._series: dict[str, dict[int, _Bucket]] = {name: {} for name in upstreams}
        self._in_flight: Counter[str] = Counter()

    def on_start(self, exchange: Exchange) -> None:
        self._in_flight[exchange.upstream] += 1

    def on_end(self, exchange: Exchange) -> None:
        now = self._clock()
        elapsed = exchange.duration_ms or 0.0
        self._recent.append(_Ended(exchange, now - elapsed / 1000))
        self._in_flight[exchange.upstream] -= 1
        if exchange.outcome is Outcome.DROPPED:
            return
        buckets = self._series.setdefault(exchange.upstream, {})
        number = int(now // SERIES_BUCKET_SECS)
        bucket = buckets.get(number)
        if bucket is None:
            bucket = buckets[number] = _Bucket()
            for old in [n for n in buckets if n <= number - SERIES_BUCKETS]:
                del buckets[old]
        bucket.requests += 1
        bucket.errors += int(exchange.failed and exchange.outcome is not Outcome.CLIENT_GONE)
        bucket.input_tokens += exchange.usage.input_tokens
        bucket.output_tokens += exchange.usage.output_tokens
        if exchange.ttft_ms is not None:
            bucket.ttft_ms_sum += exchange.ttft_ms
            bucket.ttft_count += 1

    def recent(self, limit: int = RECENT_SIZE) -> list[dict[str, Any]]:
        """The last `limit` ended exchanges, newest first."""
        return [self._recent[-i].summary() for i in range(1, min(limit, len(self._recent)) + 1)]

    def series(self) -> dict[str, Any]:
        """Per upstream, one value per bucket, oldest first; the last bucket is now's."""
        last = int(self._clock() // SERIES_BUCKET_SECS)
        numbers = range(last - SERIES_BUCKETS + 1, last + 1)
        upstreams: dict[str, Any] = {}
        for name, buckets in self._series.items():
            row = [buckets.get(n) or _Bucket() for n in numbers]
            upstreams[name] = {
                "in_flight": self._in_flight[name],
                "requests": [b.requests for b in row],
                "errors": [b.errors for b in row],
                "input_tokens": [b.input_tokens for b in row],
                "output_tokens": [b.output_tokens for b in row],
                "ttft_ms": [
                    round(b.ttft_ms_sum / b.ttft_count, 1) if b.ttft_count else None for b in row
                ],
            }
        return {
            "bucket_secs": SERIES_BUCKET_SECS,
            "end": (last + 1) * SERIES_BUCKET_SECS,
            "upstreams": upstreams,
        }
