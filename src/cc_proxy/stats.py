"""Token counters of the answers the client got (SPEC.md §5, `GET /api/stats`).

Shadow answers are never counted here: compare mode's target tokens belong to the
shadow's log line and trace, not to what the client was served.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cc_proxy.exchange import Exchange, Observer, Outcome, Role


class Stats(Observer):
    def __init__(self) -> None:
        self.total_requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.tool_calls = 0
        self.cache_creation_input_tokens = 0
        self.cache_read_input_tokens = 0
        self.errors = 0
        self.client_disconnects = 0
        self.requests_by_mode: Counter[str] = Counter()
        self.shadow_requests = 0
        self.shadow_dropped = 0
        self.shadow_errors = 0

    def on_end(self, exchange: Exchange) -> None:
        if not exchange.is_messages:
            return
        if exchange.role is Role.SHADOW:
            self._count_shadow(exchange)
            return
        usage = exchange.usage
        self.total_requests += 1
        self.requests_by_mode[exchange.mode.value] += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.tool_calls += usage.tool_calls
        self.cache_creation_input_tokens += usage.cache_creation_input_tokens
        self.cache_read_input_tokens += usage.cache_read_input_tokens
        if exchange.outcome is Outcome.CLIENT_GONE:
            self.client_disconnects += 1
        elif exchange.failed:
            self.errors += 1

    def _count_shadow(self, exchange: Exchange) -> None:
        if exchange.outcome is Outcome.DROPPED:
            self.shadow_dropped += 1
            return
        self.shadow_requests += 1
        if exchange.failed:
            self.shadow_errors += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "total_requests": self.total_requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tool_calls": self.tool_calls,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "errors": self.errors,
            "client_disconnects": self.client_disconnects,
            "requests_by_mode": dict(self.requests_by_mode),
            "shadow": {
                "requests": self.shadow_requests,
                "dropped": self.shadow_dropped,
                "errors": self.shadow_errors,
            },
        }
