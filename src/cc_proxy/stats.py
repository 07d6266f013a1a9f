"""Token counters of the answers the client got (SPEC.md §5, `GET /api/stats`).

Shadow answers are never counted here: compare mode's target tokens belong to the
shadow's log line and trace, not to what the client was served. The counters are a row
of `Counters`, so that with several workers `/api/stats` sums what each one served.
"""

from __future__ import annotations

from typing import Any

from cc_proxy.exchange import Exchange, Observer, Outcome, Role
from cc_proxy.modes import Mode
from cc_proxy.shared import Counters

FIELDS = (
    "total_requests",
    "input_tokens",
    "output_tokens",
    "tool_calls",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "errors",
    "client_disconnects",
    "shadow_requests",
    "shadow_dropped",
    "shadow_errors",
)
_MODES = tuple(Mode)
# One counter per field, then one per mode.
WIDTH = len(FIELDS) + len(_MODES)
(
    TOTAL,
    INPUT,
    OUTPUT,
    TOOLS,
    CACHE_CREATION,
    CACHE_READ,
    ERRORS,
    DISCONNECTS,
    SHADOW,
    SHADOW_DROPPED,
    SHADOW_ERRORS,
) = range(len(FIELDS))
_BY_MODE = {mode: len(FIELDS) + index for index, mode in enumerate(_MODES)}


class Stats(Observer):
    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters or Counters(WIDTH)
        self._row = self.counters.row

    def on_end(self, exchange: Exchange) -> None:
        if not exchange.is_messages:
            return
        row = self._row
        if exchange.role is Role.SHADOW:
            if exchange.outcome is Outcome.DROPPED:
                row[SHADOW_DROPPED] += 1
                return
            row[SHADOW] += 1
            if exchange.failed:
                row[SHADOW_ERRORS] += 1
            return
        usage = exchange.usage
        row[TOTAL] += 1
        row[_BY_MODE[exchange.mode]] += 1
        row[INPUT] += usage.input_tokens
        row[OUTPUT] += usage.output_tokens
        row[TOOLS] += usage.tool_calls
        row[CACHE_CREATION] += usage.cache_creation_input_tokens
        row[CACHE_READ] += usage.cache_read_input_tokens
        if exchange.outcome is Outcome.CLIENT_GONE:
            row[DISCONNECTS] += 1
        elif exchange.failed:
            row[ERRORS] += 1

    def snapshot(self) -> dict[str, Any]:
        totals = self.counters.totals()
        return {
            **{name: totals[index] for index, name in enumerate(FIELDS[:SHADOW])},
            "requests_by_mode": {
                mode.value: totals[index] for mode, index in _BY_MODE.items() if totals[index]
            },
            "shadow": {
                "requests": totals[SHADOW],
                "dropped": totals[SHADOW_DROPPED],
                "errors": totals[SHADOW_ERRORS],
            },
        }
