"""Figures out of the raw runs: totals, ratios to nginx and the minimal relay, the bars;
then a Markdown table and a PNG chart."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

REFERENCES = ("nginx", "minimal")
MEASURED = ("nginx", "minimal", "cc-proxy", "cc-proxy-compare")


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 3)


def _load_figures(rounds: list[dict[str, Any]], peak_rss_kb: int | None) -> dict[str, Any]:
    """Each figure is the median of the rounds: a round that other work on the box
    disturbed (the per-round values show it) weighs no more than any other."""
    requests = sum(r["requests"] for r in rounds)
    measured = peak_rss_kb is not None
    per_round = [r["cpu_seconds"] / r["requests"] * 1e6 for r in rounds if r["requests"]]
    busy = {
        key: [r[key] for r in rounds if r.get(key) is not None]
        for key in ("proxy_core_busy", "load_core_busy")
    }
    rates = [r["requests"] / r["seconds"] for r in rounds if r["seconds"]]
    return {
        "requests": requests,
        "rps": round(statistics.median(rates), 1) if rates else 0.0,
        "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 3),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 3),
        "errors": sum(r["socket_errors"] + r["status_errors"] for r in rounds),
        "cpu_us_per_request": (
            round(statistics.median(per_round), 1) if measured and per_round else None
        ),
        "cpu_us_per_request_rounds": [round(v, 1) for v in per_round] if measured else [],
        "peak_rss_mb": round(peak_rss_kb / 1024, 1) if peak_rss_kb else None,
        **{key: statistics.median(values) if values else None for key, values in busy.items()},
    }


def summarise(
    *,
    machine: dict[str, Any],
    settings: dict[str, Any],
    scenarios: list[tuple[str, str]],
    load: dict[str, dict[str, list[dict[str, Any]]]],
    ttfb: dict[str, dict[str, list[dict[str, Any]]]],
    peak_rss: dict[str, int],
    peak_rss_by_scenario: dict[str, dict[str, int]] | None = None,
    multicore: dict[str, list[dict[str, Any]]],
    hold: list[dict[str, Any]],
    compare: dict[str, Any],
) -> dict[str, Any]:
    figures: dict[str, dict[str, Any]] = {}
    for name, _ in scenarios:
        if name not in load:
            continue
        figures[name] = {}
        # A part with relays of its own (the paced one) measured their peak RSS itself.
        rss = (peak_rss_by_scenario or {}).get(name, peak_rss)
        for relay, rounds in load[name].items():
            figures[name][relay] = _load_figures(rounds, rss.get(relay) or None)
        for relay, row in figures[name].items():
            if relay == "direct":
                continue
            for reference in REFERENCES:
                base = figures[name].get(reference)
                if base is None:
                    continue
                row[f"vs_{reference}"] = {
                    key: _ratio(row[key], base[key])
                    for key in ("cpu_us_per_request", "rps", "p50_ms", "peak_rss_mb")
                }
    first_byte: dict[str, dict[str, Any]] = {}
    for key, by_relay in ttfb.items():
        first_byte[key] = {}
        direct = statistics.median(r["p50_ms"] for r in by_relay["direct"])
        for relay, rounds in by_relay.items():
            p50 = statistics.median(r["p50_ms"] for r in rounds)
            first_byte[key][relay] = {
                "p50_ms": round(p50, 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 3),
                "added_p50_ms": round(p50 - direct, 3),
                "samples": sum(r["samples"] for r in rounds),
            }
    workers = {name: _load_figures(rounds, 1) for name, rounds in multicore.items()}
    if len(workers) == 2:
        one, two = workers.values()
        gain = {"rps": _ratio(two["rps"], one["rps"])}
    else:
        gain = {}
    results = {
        "machine": machine,
        "settings": settings,
        "scenarios": dict(scenarios),
        "load": figures,
        "ttfb": first_byte,
        "multicore": {"runs": workers, "gain": gain},
        "hold": hold,
        "compare": _compare_figures(compare),
    }
    results["bars"] = bars(results)
    return results


COMPARE_LIMIT = 1.05
LATENCIES = ("first_p50_ms", "first_p90_ms", "end_p50_ms", "end_p90_ms")


def _compare_figures(compare: dict[str, Any]) -> dict[str, Any]:
    """Per pacing and concurrency: each mode's median over rounds, and compare's ratio to
    anthropic-only (the bar: end-to-end p50 and first-byte p50 within 5%)."""
    figures: dict[str, Any] = {}
    for key, runs in compare.items():
        row: dict[str, Any] = {"first_token_ms": runs["first_token_ms"], "gap_ms": runs["gap_ms"]}
        for mode in ("anthropic-only", "compare"):
            rounds = runs[mode]
            row[mode] = {
                name: round(statistics.median(r[name] for r in rounds), 3) for name in LATENCIES
            }
            row[mode]["samples"] = sum(r["samples"] for r in rounds)
        row["ratio"] = {
            name: _ratio(row["compare"][name], row["anthropic-only"][name]) for name in LATENCIES
        }
        row["within_5pct"] = all(
            (row["ratio"][name] or 0) <= COMPARE_LIMIT for name in ("first_p50_ms", "end_p50_ms")
        )
        figures[key] = row
    return figures


def bars(results: dict[str, Any]) -> list[dict[str, Any]]:
    load = results["load"]
    found: list[dict[str, Any]] = []

    def bar(name: str, measured: float | None, limit: float, unit: str, met: bool | None) -> None:
        found.append({"bar": name, "measured": measured, "limit": limit, "unit": unit, "met": met})

    for scenario in ("stream", "claude_code", "stream_paced"):
        cc = load.get(scenario, {}).get("cc-proxy", {})
        ratio = cc.get("vs_nginx", {}).get("cpu_us_per_request")
        bar(
            f"CPU per streamed response vs nginx ({scenario})",
            ratio,
            1.0,
            "x",
            None if ratio is None else ratio <= 1.0,
        )
    cc = load.get("json", {}).get("cc-proxy", {})
    ratio = cc.get("vs_minimal", {}).get("cpu_us_per_request")
    bar(
        "CPU per non-streamed request vs minimal relay",
        ratio,
        1.3,
        "x",
        None if ratio is None else ratio <= 1.3,
    )
    added: float | None = results["ttfb"].get("c1", {}).get("cc-proxy", {}).get("added_p50_ms")
    met = None if added is None else added < 1
    bar("added time to first byte, c=1, p50", added, 1.0, "ms", met)
    # The bar is for the largest count (10,000 by default); smaller ones are context.
    largest = max((entry["asked"] for entry in results["hold"]), default=0)
    for entry in results["hold"]:
        if entry["asked"] < largest:
            continue
        met = entry["failed"] == 0 and entry["kb_per_stream"] <= 30
        name = f"{entry['asked']} concurrent idle streams: RSS per stream, none failed"
        if entry["capped_by_fd_limit"]:
            name += f" (capped at {entry['opened'] + entry['failed']} by the fd limit)"
        bar(name, round(entry["kb_per_stream"], 1), 30, "KB", met)
    for key, row in results["compare"].items():
        for name, label in (("first_p50_ms", "first byte"), ("end_p50_ms", "end")):
            ratio = row["ratio"][name]
            bar(
                f"compare / anthropic-only, p50 to the {label}, {key}",
                ratio,
                COMPARE_LIMIT,
                "x",
                None if ratio is None else ratio <= COMPARE_LIMIT,
            )
    gain = results["multicore"]["gain"].get("rps")
    bar("two workers: throughput gain over one", gain, 1.0, "x", None if gain is None else gain > 1)
    return found


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _busy(row: dict[str, Any]) -> str:
    shares = [row.get(key) for key in ("proxy_core_busy", "load_core_busy")]
    return " / ".join("–" if share is None else f"{share * 100:.0f}" for share in shares)


def render_table(results: dict[str, Any]) -> str:
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, "
        f"Python {machine['python']}; load average at the end "
        f"{', '.join(f'{v:.2f}' for v in machine['load_average'])}.",
        f"Pinning: {machine['pinning']}.",
        f"Each figure: the median of {settings['rounds']} rounds of {settings['seconds']:g} s "
        f"per relay, relays taking turns; wrk -c{settings['connections']}. CPU is "
        "utime+stime of the relay's processes from /proc, divided by the responses "
        "completed; the per-round column shows each round's value (noise from other work "
        "on the box). Busy: the share of the round each core spent out of idle (/proc/stat), "
        "the whole core and not only the relay; a load core near 100% means the upstream "
        "and wrk set the pace.",
        "",
    ]
    for scenario, title in results["scenarios"].items():
        if scenario not in results["load"]:
            continue
        lines += [
            f"**{title}** (`{scenario}`)",
            "",
            "| relay | req/s | p50 ms | p99 ms | CPU µs/resp | per round | × nginx | × minimal "
            "| busy % proxy core / load core | peak RSS MB | errors |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for relay, row in results["load"][scenario].items():
            spread = " / ".join(f"{v:.0f}" for v in row["cpu_us_per_request_rounds"])
            lines.append(
                f"| {relay} | {_cell(row['rps'], 0)} | {_cell(row['p50_ms'], 2)} "
                f"| {_cell(row['p99_ms'], 2)} | {_cell(row['cpu_us_per_request'], 0)} "
                f"| {spread or '–'} "
                f"| {_cell(row.get('vs_nginx', {}).get('cpu_us_per_request'), 2)} "
                f"| {_cell(row.get('vs_minimal', {}).get('cpu_us_per_request'), 2)} "
                f"| {_busy(row)} | {_cell(row['peak_rss_mb'])} | {row['errors']} |"
            )
        lines.append("")
    ttfb = results["ttfb"]
    if ttfb:
        lines += [
            "**Time to first byte** (streaming, 5 KB body; added = relay p50 − direct p50; "
            "the cores kept from halting, see `bench.procs.awake`, except in the last "
            "column, where a vCPU woken from halt costs a relay slower than nginx about "
            "0.8 ms more)",
            "",
            "| relay | c=1 p50 ms | c=1 added ms | c=1 p99 ms | c=50 p50 ms | c=50 added ms "
            "| c=1 added ms, cores halting |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        halting = ttfb.get("c1-halting", {})
        for relay in ttfb["c1"]:
            one, fifty = ttfb["c1"][relay], ttfb["c50"][relay]
            idle = halting.get(relay, {}).get("added_p50_ms")
            lines.append(
                f"| {relay} | {one['p50_ms']:.3f} | {one['added_p50_ms']:.3f} "
                f"| {one['p99_ms']:.3f} | {fifty['p50_ms']:.3f} | {fifty['added_p50_ms']:.3f} "
                f"| {_cell(idle, 3)} |"
            )
        lines.append("")
    runs = results["multicore"]["runs"]
    if runs:
        lines += [
            "**Two cores** (streaming, 100 deltas; nothing pinned: the proxy, wrk and the "
            "upstream share every core; the upstream sends each stream in one write, so "
            "that the load side takes as little of them as it can)",
            "",
            "| cc-proxy | req/s | CPU µs/resp | errors |",
            "|---|---:|---:|---:|",
        ]
        for name, row in runs.items():
            lines.append(
                f"| {name} | {_cell(row['rps'], 0)} | {_cell(row['cpu_us_per_request'], 0)} "
                f"| {row['errors']} |"
            )
        lines.append("")
    if results["hold"]:
        lines += [
            "**Concurrent idle streams** through one cc-proxy process (one event a second)",
            "",
            "| asked | held | failed | RSS before MB | RSS held MB | KB per stream | note |",
            "|---:|---:|---:|---:|---:|---:|---|",
        ]
        for entry in results["hold"]:
            note = (
                f"capped by the fd limit ({entry['fd_limit']})"
                if entry["capped_by_fd_limit"]
                else ""
            )
            if entry["errors"]:
                note += ("; " if note else "") + "; ".join(entry["errors"])
            lines.append(
                f"| {entry['asked']} | {entry['alive']} | {entry['failed']} "
                f"| {entry['rss_before_kb'] / 1024:.1f} | {entry['rss_held_kb'] / 1024:.1f} "
                f"| {entry['kb_per_stream']:.1f} | {note} |"
            )
        lines.append("")
    if results["compare"]:
        lines += [
            "**Compare mode against anthropic-only** (streamed 5 KB requests, client-side; "
            "modes taking turns each round; ratio = compare / anthropic-only)",
            "",
            "| pacing, concurrency | mode | first byte p50 ms | p90 ms | end p50 ms | p90 ms "
            "| samples |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for key, row in results["compare"].items():
            pacing = f"{key} (TTFT {row['first_token_ms']:g} ms, gap {row['gap_ms']:g} ms)"
            for mode in ("anthropic-only", "compare"):
                m = row[mode]
                lines.append(
                    f"| {pacing} | {mode} | {m['first_p50_ms']:.2f} | {m['first_p90_ms']:.2f} "
                    f"| {m['end_p50_ms']:.2f} | {m['end_p90_ms']:.2f} | {m['samples']} |"
                )
            r = row["ratio"]
            within = "yes" if row["within_5pct"] else "**no**"
            lines.append(
                f"| {pacing} | ratio (within 5%: {within}) | {_cell(r['first_p50_ms'], 3)} "
                f"| {_cell(r['first_p90_ms'], 3)} | {_cell(r['end_p50_ms'], 3)} "
                f"| {_cell(r['end_p90_ms'], 3)} | |"
            )
        lines.append("")
    lines += ["**Bars**", "", "| bar | measured | limit | met |", "|---|---:|---:|---|"]
    for bar in results["bars"]:
        met = {True: "yes", False: "**no**", None: "–"}[bar["met"]]
        lines.append(
            f"| {bar['bar']} | {_cell(bar['measured'], 2)} {bar['unit']} "
            f"| {bar['limit']} {bar['unit']} | {met} |"
        )
    return "\n".join(lines) + "\n"


def render_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    scenarios = [s for s in results["scenarios"] if s in results["load"]]
    if not scenarios:
        return
    relays = [r for r in MEASURED if r in results["load"][scenarios[0]]]
    width = 0.8 / len(relays)
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    for index, relay in enumerate(relays):
        values = [
            results["load"][s].get(relay, {}).get("cpu_us_per_request") or 0 for s in scenarios
        ]
        positions = [i + (index - (len(relays) - 1) / 2) * width for i in range(len(scenarios))]
        bars = axes.bar(positions, values, width, label=relay)
        axes.bar_label(bars, fmt="%.0f", fontsize=7)
    axes.set_xticks(range(len(scenarios)), [results["scenarios"][s] for s in scenarios])
    axes.set_ylabel("proxy CPU µs per response")
    axes.set_title("CPU per response by relay (proxy pinned to one core; lower is better)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
