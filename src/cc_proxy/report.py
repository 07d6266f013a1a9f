"""The compare report: over the compare records, how the target's answers measure up to
the passthrough's. `cc-proxy compare-report` prints it; `GET /api/compare/report` serves
the same figures as JSON.

Ratios are shadow / primary per request (2.0 = the target took twice as long), over the
requests both sides answered; quantiles interpolate linearly between the nearest values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cc_proxy.records import AGREEMENT_KEYS, RecordStore, answered

WORST_SHOWN = 10
# How much each kind of disagreement weighs when ranking the worst: another tool chosen
# sends the agent elsewhere; other arguments to the same tool less so; a different stop
# reason alone least.
WEIGHTS = {"first_tool": 4, "first_tool_args": 2, "stop_reason": 1}
RATIOS = {"ttft": "ttft_ms", "duration": "duration_ms", "output_tokens": "output_tokens"}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`24h`, `30m`, `7d`, `2w`, `90s` ago, or an ISO 8601 date or time (UTC unless it
    says otherwise)."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a duration (30m, 24h, 7d, 2w) or an ISO 8601 time "
            "(2026-11-24 or 2026-11-24T09:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _share(part: int, whole: int) -> dict[str, Any]:
    return {"count": part, "of": whole, "rate": part / whole if whole else None}


def _ratio(records: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    ratios = [
        record["shadow"][key] / record["primary"][key]
        for record in records
        if answered(record["primary"])
        and answered(record["shadow"])
        and record["primary"][key]
        and record["shadow"][key] is not None
    ]
    return {"median": quantile(ratios, 0.5), "p90": quantile(ratios, 0.9), "n": len(ratios)}


def _first_tool(side: Mapping[str, Any]) -> str | None:
    calls = side["tool_calls"]
    return str(calls[0]["name"]) if calls else None


def _disagreement(record: Mapping[str, Any]) -> dict[str, Any]:
    on = [key for key in AGREEMENT_KEYS if record["agreement"][key] is False]
    return {
        "id": record["id"],
        "time": record["time"],
        "session_id": record["session_id"],
        "requested_model": record["requested_model"],
        "on": on,
        "score": sum(WEIGHTS[key] for key in on),
        "primary": {
            "stop_reason": record["primary"]["stop_reason"],
            "first_tool": _first_tool(record["primary"]),
        },
        "shadow": {
            "stop_reason": record["shadow"]["stop_reason"],
            "first_tool": _first_tool(record["shadow"]),
        },
    }


def compute(
    summaries: Sequence[Mapping[str, Any]], since: datetime | None = None
) -> dict[str, Any]:
    """The report over record summaries (as `RecordStore.summaries` gives them)."""
    count = len(summaries)
    dropped = sum(1 for record in summaries if record["shadow"]["dropped"])
    agreement = {}
    for key in AGREEMENT_KEYS:
        compared = [record["agreement"][key] for record in summaries]
        agreement[key] = _share(
            sum(1 for value in compared if value is True),
            sum(1 for value in compared if value is not None),
        )
    primary_errors = sum(1 for record in summaries if not answered(record["primary"]))
    shadow_errors = sum(
        1
        for record in summaries
        if not record["shadow"]["dropped"] and record["shadow"]["error_type"] is not None
    )
    disagreements = [
        _disagreement(record) for record in summaries if False in record["agreement"].values()
    ]
    # newest first already; a stable sort keeps that order among equal scores
    disagreements.sort(key=lambda found: found["score"], reverse=True)
    return {
        "since": None if since is None else since.astimezone(UTC).isoformat(),
        "count": count,
        "shadow_dropped": dropped,
        "agreement": agreement,
        "errors": {
            "primary": _share(primary_errors, count),
            "shadow": _share(shadow_errors, count - dropped),
        },
        "ratios": {name: _ratio(summaries, key) for name, key in RATIOS.items()},
        "disagreements": len(disagreements),
        "worst_disagreements": disagreements[:WORST_SHOWN],
    }


def report_of(store: RecordStore, since: datetime | None = None) -> dict[str, Any]:
    """The report over the records in `store` since `since`. Reads the database: blocks."""
    return compute(store.summaries(since), since)


# --- the terminal table --------------------------------------------------------------------

_AGREEMENT_LABELS = {
    "stop_reason": "stop reason",
    "first_tool": "first tool",
    "first_tool_args": "first tool + arguments",
}
_RATIO_LABELS = {
    "ttft": "time to first token",
    "duration": "duration",
    "output_tokens": "output tokens",
}


def _percent(share: Mapping[str, Any]) -> str:
    return "-" if share["rate"] is None else f"{share['rate'] * 100:.1f}%"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_table(report: Mapping[str, Any]) -> str:
    since = f" since {report['since']}" if report["since"] else ""
    lines = [
        f"compare report: {report['count']} requests{since}, "
        f"{report['shadow_dropped']} shadow copies dropped (target saturated)",
        "",
        f"{'agreement':<28}{'agreed':>8}{'of':>8}{'rate':>9}",
    ]
    for key, label in _AGREEMENT_LABELS.items():
        share = report["agreement"][key]
        lines.append(f"  {label:<26}{share['count']:>8}{share['of']:>8}{_percent(share):>9}")
    lines += ["", f"{'errors':<28}{'errors':>8}{'of':>8}{'rate':>9}"]
    for side, label in (("primary", "primary (passthrough)"), ("shadow", "shadow (target)")):
        share = report["errors"][side]
        lines.append(f"  {label:<26}{share['count']:>8}{share['of']:>8}{_percent(share):>9}")
    lines += ["", f"{'target / passthrough':<28}{'median':>8}{'p90':>8}{'n':>9}"]
    for key, label in _RATIO_LABELS.items():
        ratio = report["ratios"][key]
        lines.append(
            f"  {label:<26}{_times(ratio['median']):>8}{_times(ratio['p90']):>8}{ratio['n']:>9}"
        )
    worst = report["worst_disagreements"]
    lines += ["", f"worst disagreements ({len(worst)} of {report['disagreements']})"]
    if not worst:
        lines.append("  none")
    for found in worst:
        primary = _choice(found["primary"])
        shadow = _choice(found["shadow"])
        moment = found["time"][:19] + "Z"  # to the second: enough to find it in a log
        lines.append(
            f"  {found['id']}  {moment}  {', '.join(found['on']):<34}"
            f"passthrough {primary} | target {shadow}"
        )
    return "\n".join(lines)


def _choice(side: Mapping[str, Any]) -> str:
    return f"{side['first_tool'] or '(no tool)'}/{side['stop_reason'] or '-'}"
