"""The benchmark harness: nginx, a minimal Python relay and cc-proxy, side by side in one
run against the same fast stand-in upstream. `bench/run` installs what it needs and runs
this; `python -m bench --smoke` is the few-second version the test suite runs.

The proxy under test is pinned to one core, the load (wrk, the TTFB client) and the
upstreams to the other, and the relays take turns within each scenario, round after
round, so that a noisy neighbour weighs on all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from bench.hold import hold_streams
from bench.load import Scenario, measure_latency, measure_ttfb, run_wrk
from bench.procs import (
    REPO,
    awake,
    busy_fraction,
    core_ticks,
    cores,
    cpu_seconds,
    fd_hard_limit,
    memory_kb,
    pinned,
    raise_fd_limit,
    wait_for_port,
)
from bench.relays import Relay, start_cc_proxy, start_minimal, start_nginx, start_upstream
from bench.report import render_chart, render_table, summarise

FIXTURE = REPO / "tests" / "fixtures" / "claude-code-2.1.197" / "basic.json"
# What a held stream costs the proxy besides its memory: two sockets (client, upstream).
FDS_PER_STREAM = 2
PARTS = ("relays", "paced", "multicore", "hold", "compare")
PACED = "stream_paced"
COMPARE_CONCURRENCY = (1, 8)
FD_RESERVE = 100


def _request_body(streaming: bool) -> bytes:
    """A Messages request of about 5 KB, like a short Claude Code turn."""
    text = "Summarise the following notes. " + " ".join(f"note-{i:04d}" for i in range(480))
    return orjson.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "stream": streaming,
            "system": "You are a helpful assistant.",
            "messages": [{"role": "user", "content": text}],
        }
    )


def scenarios(workdir: Path) -> list[Scenario]:
    plain = workdir / "body-5k.json"
    plain.write_bytes(_request_body(streaming=False))
    streamed = workdir / "body-5k-stream.json"
    streamed.write_bytes(_request_body(streaming=True))
    recorded = json.loads(FIXTURE.read_text())
    fixture = workdir / "claude-code-basic.json"
    # The bytes Claude Code sent: compact, non-ASCII characters as UTF-8, as Node's
    # JSON.stringify writes them (they come to the recorded Content-Length, 76,179).
    fixture.write_bytes(orjson.dumps(recorded["body"]))
    return [
        Scenario("json", "non-streaming, 5 KB body", "/v1/messages", plain, streaming=False),
        Scenario("stream", "streaming, 100 text deltas", "/v1/messages", streamed, streaming=True),
        Scenario(
            "claude_code",
            "Claude Code request (76 KB), streaming",
            recorded["path"],
            fixture,
            streaming=True,
        ),
    ]


def _measure(
    relay: Relay, scenario: Scenario, args: argparse.Namespace, load_core: int | None
) -> dict[str, Any]:
    """One wrk run against `relay`, with the CPU its processes used meanwhile, and how busy
    the proxy's core and the load's core were: a load core near 100% means the upstream
    and wrk, not the relay, set the pace of the run."""
    pids = relay.pids()
    watched = (args.proxy_core, args.load_core)
    ticks = core_ticks(watched)
    before = cpu_seconds(pids)
    result = run_wrk(
        relay.url,
        scenario,
        connections=args.connections,
        seconds=args.seconds,
        core=load_core,
        workdir=args.workdir,
    )
    cpu = cpu_seconds(pids) - before
    after = core_ticks(watched)
    return {
        **asdict(result),
        "rps": result.rps,
        "cpu_seconds": cpu,
        "proxy_core_busy": busy_fraction(ticks, after, args.proxy_core),
        "load_core_busy": busy_fraction(ticks, after, args.load_core),
    }


def _warm_up(
    relays: list[Relay], scenarios: list[Scenario], args: argparse.Namespace, core: int | None
) -> None:
    """A second of each scenario, not recorded: imports, pools, caches. Not in a smoke run,
    nor for the upstream alone (`direct`), which has nothing to warm."""
    if args.smoke:
        return
    for relay in relays:
        if relay.process is None:
            continue
        for scenario in scenarios:
            run_wrk(
                relay.url,
                scenario,
                connections=args.connections,
                seconds=1,
                core=core,
                workdir=args.workdir,
            )


def run_load(
    relays: list[Relay],
    scenario_list: list[Scenario],
    args: argparse.Namespace,
    load_core: int,
    rounds: int | None = None,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each scenario: every relay in turn, `rounds` times (`--rounds` unless told), the
    order rotated each round."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for scenario in scenario_list:
        runs[scenario.name] = {relay.name: [] for relay in relays}
        for round_ in range(args.rounds if rounds is None else rounds):
            shift = round_ % len(relays)
            for relay in relays[shift:] + relays[:shift]:
                profiling = args.profile and round_ == 0 and relay.name == "cc-proxy"
                profile = _profile(relay, scenario, args, load_core) if profiling else None
                measured = _measure(relay, scenario, args, load_core)
                if profile is not None:
                    profile.wait(args.seconds + 30)
                    measured["profiled"] = True  # py-spy's sampling weighs on this round
                runs[scenario.name][relay.name].append(measured)
                _progress(f"{scenario.name} round {round_ + 1}: {relay.name}", measured)
    return runs


def _profile(
    relay: Relay, scenario: Scenario, args: argparse.Namespace, load_core: int
) -> subprocess.Popen[bytes]:
    """py-spy samples cc-proxy for the length of one wrk run; a flame graph (SVG) goes
    next to the results."""
    assert relay.process is not None
    args.out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(relay.process.popen.pid),
            "--duration",
            str(max(1, round(args.seconds))),
            "--rate",
            "250",
            "--nonblocking",
            "--output",
            str(args.out / f"profile-{scenario.name}.svg"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pinned(load_core),  # noqa: PLW1509 - only sets the CPU affinity
    )


def run_ttfb(
    relays: list[Relay], scenario: Scenario, args: argparse.Namespace
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """p50 and p99 to the first byte at c=1 and c=50, with the cores kept awake (see
    `procs.awake`); and at c=1 once more with the cores left to halt, as this machine
    would have them between requests, for what that costs."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key, concurrency, kept_awake in (
        ("c1", 1, True),
        ("c50", 50, True),
        ("c1-halting", 1, False),
    ):
        found[key] = {relay.name: [] for relay in relays}
        requests = args.ttfb_requests if concurrency == 1 else args.ttfb_requests * 3
        with awake((args.proxy_core, args.load_core)) if kept_awake else contextlib.nullcontext():
            for _ in range(args.rounds):
                for relay in relays:
                    result = measure_ttfb(relay.url, scenario, concurrency, requests)
                    found[key][relay.name].append(asdict(result))
        _progress(f"ttfb {key}", {r: v[-1]["p50_ms"] for r, v in found[key].items()})
    return found


def run_multicore(scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    """One cc-proxy process against two workers, nothing pinned: the gain from the second
    core. The load and the upstream share the cores too, so the upstream here sends each
    stream in one write (the cheapest it can be) to leave the relay as much room as a box
    of two cores has."""
    found: dict[str, Any] = {}
    upstream, upstream_url = start_upstream("burst-upstream", None, args.workdir, "--mode", "burst")
    relays = [
        start_cc_proxy("cc-proxy-1-worker", upstream_url, None, args.workdir),
        start_cc_proxy("cc-proxy-2-workers", upstream_url, None, args.workdir, workers=2),
    ]
    try:
        found = {relay.name: [] for relay in relays}
        _warm_up(relays, [scenario], args, None)
        for _ in range(args.rounds):
            for relay in relays:
                measured = _measure(relay, scenario, args, None)
                found[relay.name].append(measured)
                _progress(f"multicore: {relay.name}", measured)
    finally:
        for relay in relays:
            relay.stop()
        upstream.stop()
    return found


def run_hold(args: argparse.Namespace, proxy_core: int, load_core: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    if not args.hold:
        return results
    limit = raise_fd_limit(max(args.hold) * FDS_PER_STREAM + FD_RESERVE)
    for asked in args.hold:
        count = min(asked, (limit - FD_RESERVE) // FDS_PER_STREAM)
        upstream, upstream_url = start_upstream(
            f"slow-upstream-{asked}", load_core, args.workdir, "--mode", "slow"
        )
        relay = start_cc_proxy(f"cc-proxy-hold-{asked}", upstream_url, proxy_core, args.workdir)
        try:
            port = int(relay.url.rsplit(":", 1)[1])
            process = relay.process
            assert process is not None
            wait_for_port(port, process)
            rss = functools.partial(lambda p: memory_kb(p.pids()), process)
            result = hold_streams(port, count, args.hold_secs, rss)
        finally:
            relay.stop()
            upstream.stop()
        entry = {
            **asdict(result),
            "kb_per_stream": result.kb_per_stream,
            "fd_limit": limit,
            "capped_by_fd_limit": count < asked,
        }
        results.append(entry)
        _progress(f"hold {asked}", entry)
    return results


def run_relays(
    args: argparse.Namespace,
    scenario_list: list[Scenario],
    upstream_url: str,
    passthrough_url: str,
) -> tuple[
    dict[str, dict[str, list[dict[str, Any]]]],
    dict[str, dict[str, list[dict[str, Any]]]],
    dict[str, int],
]:
    """The relays side by side: load scenarios, then time to first byte, then peak RSS."""
    proxy_core, load_core = args.proxy_core, args.load_core
    relays = [Relay("direct", upstream_url, None)]
    with contextlib.ExitStack() as running:
        starters: list[Callable[[], Relay]] = [
            lambda: start_nginx(upstream_url, proxy_core, args.workdir),
            lambda: start_minimal(upstream_url, proxy_core, args.workdir),
            lambda: start_cc_proxy("cc-proxy", upstream_url, proxy_core, args.workdir),
            lambda: start_cc_proxy(
                "cc-proxy-compare",
                upstream_url,
                proxy_core,
                args.workdir,
                mode="compare",
                passthrough_url=passthrough_url,
            ),
        ]
        for start in starters:
            relays.append(start())
            running.callback(relays[-1].stop)
        _warm_up(relays, scenario_list, args, load_core)
        load = run_load(relays, scenario_list, args, load_core)
        ttfb = run_ttfb(relays, scenario_list[1], args)
        peak_rss = {relay.name: memory_kb(relay.pids(), "VmHWM") for relay in relays}
    return load, ttfb, peak_rss


def run_paced(
    args: argparse.Namespace, scenario: Scenario
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The streaming scenario with the upstream pacing its events as a model paces tokens
    (`--paced-gap-ms` apart), so that neither core is saturated: what a streamed answer
    costs each relay when every event is a read of its own, as Claude Code's traffic is.
    At the fast upstream's pace the load's core is the busy one (see `_measure`), and a
    relay's CPU per answer there follows how many events each of its reads gathers."""
    proxy_core, load_core = args.proxy_core, args.load_core
    paced = ("--gap-ms", f"{args.paced_gap_ms:g}")
    with contextlib.ExitStack() as running:
        upstream, upstream_url = start_upstream("paced-upstream", load_core, args.workdir, *paced)
        running.callback(upstream.stop)
        relays = [Relay("direct", upstream_url, None)]
        starters: list[Callable[[], Relay]] = [
            lambda: start_nginx(upstream_url, proxy_core, args.workdir, name="nginx-paced"),
            lambda: start_minimal(upstream_url, proxy_core, args.workdir, name="minimal-paced"),
            lambda: start_cc_proxy("cc-proxy-paced", upstream_url, proxy_core, args.workdir),
        ]
        for start in starters:
            relays.append(start())
            running.callback(relays[-1].stop)
        _warm_up(relays, [scenario], args, load_core)
        runs = run_load(relays, [scenario], args, load_core, rounds=args.paced_rounds)
        # named apart from the unpaced part's relays for their logs; reported as they are
        found = {
            name.removesuffix("-paced"): rounds for name, rounds in runs[scenario.name].items()
        }
        peak_rss = {
            relay.name.removesuffix("-paced"): memory_kb(relay.pids(), "VmHWM") for relay in relays
        }
    return found, peak_rss


def run_compare(args: argparse.Namespace, scenario: Scenario) -> dict[str, Any]:
    """The bar of issue 3: client-side latency of streamed requests through cc-proxy in
    anthropic-only mode against compare mode (same passthrough stand-in, plus a target
    stand-in for the shadow), the two modes taking turns round by round, for each pacing
    of the stand-ins and each concurrency."""
    proxy_core, load_core = args.proxy_core, args.load_core
    pacings = {
        "instant": (0.0, 0.0),
        "model": (args.first_token_ms, args.gap_ms),
    }
    found: dict[str, Any] = {}
    for pacing, (first_token_ms, gap_ms) in pacings.items():
        paced = ("--first-token-ms", f"{first_token_ms:g}", "--gap-ms", f"{gap_ms:g}")
        with contextlib.ExitStack() as running:
            ends: dict[str, str] = {}
            for side in ("passthrough", "target"):
                process, url = start_upstream(f"{pacing}-{side}", load_core, args.workdir, *paced)
                running.callback(process.stop)
                ends[side] = url
            relays: list[Relay] = []
            for mode in ("anthropic-only", "compare"):
                relay = start_cc_proxy(
                    f"cc-proxy-{mode}-{pacing}",
                    ends["target"],
                    proxy_core,
                    args.workdir,
                    mode=mode,
                    passthrough_url=ends["passthrough"],
                    extra_args=("--allow-anthropic-only",),
                )
                running.callback(relay.stop)
                relays.append(relay)
            # A model-paced request lasts over a second and varies by a few ms at most,
            # so a fifth of the samples measure it as well in a fifth of the time (and two
            # warm the pools as well as five).
            model_paced = bool(first_token_ms or gap_ms)
            if not args.smoke:
                for relay in relays:
                    measure_latency(relay.url, scenario, 1, 2 if model_paced else 5)
            per_connection = args.compare_requests // (5 if model_paced else 1)
            for concurrency in COMPARE_CONCURRENCY:
                requests = max(1, per_connection) * concurrency
                key = f"{pacing}-c{concurrency}"
                found[key] = {"first_token_ms": first_token_ms, "gap_ms": gap_ms}
                rounds: dict[str, list[dict[str, Any]]] = {r.name: [] for r in relays}
                with awake((proxy_core, load_core)):
                    for round_ in range(args.compare_rounds):
                        shift = round_ % len(relays)
                        for relay in relays[shift:] + relays[:shift]:
                            measured = measure_latency(relay.url, scenario, concurrency, requests)
                            rounds[relay.name].append(asdict(measured))
                for relay, mode in zip(relays, ("anthropic-only", "compare"), strict=True):
                    found[key][mode] = rounds[relay.name]
                _progress(
                    f"compare {key}",
                    {m: found[key][m][-1]["first_p50_ms"] for m in ("anthropic-only", "compare")},
                )
    return found


def _progress(what: str, figures: Any) -> None:
    print(f"bench: {what}: {figures}", file=sys.stderr, flush=True)


def machine(proxy_core: int, load_core: int) -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "pinning": (
            f"proxy under test on core {proxy_core}; wrk, the TTFB client and the "
            f"upstreams on core {load_core}; while latency is measured, SCHED_IDLE "
            "spinners keep both cores from halting (bench.procs.awake)"
        ),
        "fd_hard_limit": fd_hard_limit(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, every path once")
    # Six short turns rather than three long ones, in the same time: other work on the box
    # comes in bursts of seconds, and a median of six shrugs off two disturbed turns.
    parser.add_argument("--seconds", type=float, default=2, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=6, help="turns of every relay")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--ttfb-requests", type=int, default=200, help="TTFB samples at c=1")
    parser.add_argument(
        "--hold", type=int, nargs="*", default=[1000, 10000], help="concurrent slow streams"
    )
    parser.add_argument("--hold-secs", type=float, default=5, help="how long they are held")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help=(
            "what to run: the relays side by side, one against two workers, idle streams, "
            "anthropic-only against compare mode (latency)"
        ),
    )
    parser.add_argument(
        "--paced-rounds",
        type=int,
        default=3,
        help="paced part: turns of every relay (a paced answer's CPU varies little)",
    )
    parser.add_argument(
        "--paced-gap-ms",
        type=float,
        default=5,
        help="paced part: the upstream's gap between SSE events",
    )
    parser.add_argument(
        "--compare-rounds",
        type=int,
        default=3,
        help="compare part: turns of each mode (a model-paced request lasts over a second)",
    )
    parser.add_argument(
        "--compare-requests",
        type=int,
        default=20,
        help="compare part: requests per connection per mode per round (a fifth, model-paced)",
    )
    parser.add_argument(
        "--first-token-ms",
        type=float,
        default=300,
        help="compare part, model-like pacing: the stand-ins' time to first token",
    )
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=10,
        help="compare part, model-like pacing: the stand-ins' gap between SSE events",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graph of cc-proxy per scenario (profile-*.svg; needs the bench extra)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.rounds, args.compare_rounds, args.ttfb_requests = 1, 1, 1, 10
        args.paced_rounds = 1
        args.hold, args.hold_secs = [50], 1.5
        args.compare_requests = 2

    proxy_core, load_core = args.proxy_core, args.load_core = cores()
    os.sched_setaffinity(0, {load_core})
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="cc-proxy-bench-") as workdir,
        contextlib.ExitStack() as upstreams,
    ):
        args.workdir = Path(workdir)
        scenario_list = scenarios(args.workdir)
        upstream, upstream_url = start_upstream("upstream", load_core, args.workdir)
        upstreams.callback(upstream.stop)
        passthrough, passthrough_url = start_upstream("passthrough", load_core, args.workdir)
        upstreams.callback(passthrough.stop)
        peak_rss_by_scenario: dict[str, dict[str, int]] = {}
        load, ttfb, peak_rss = (
            run_relays(args, scenario_list, upstream_url, passthrough_url)
            if "relays" in args.parts
            else ({}, {}, {})
        )
        if "paced" in args.parts:
            load[PACED], peak_rss_by_scenario[PACED] = run_paced(args, scenario_list[1])
        multicore = run_multicore(scenario_list[1], args) if "multicore" in args.parts else {}
        upstreams.close()
        compare = run_compare(args, scenario_list[1]) if "compare" in args.parts else {}
        hold = run_hold(args, proxy_core, load_core) if "hold" in args.parts else []

    results = summarise(
        machine=machine(proxy_core, load_core),
        settings={
            "seconds": args.seconds,
            "rounds": args.rounds,
            "connections": args.connections,
            "ttfb_requests": args.ttfb_requests,
            "hold": args.hold,
            "hold_secs": args.hold_secs,
            "compare_rounds": args.compare_rounds,
            "compare_requests": args.compare_requests,
            "smoke": args.smoke,
            "elapsed_secs": round(time.monotonic() - started, 1),
        },
        scenarios=[(s.name, s.title) for s in scenario_list]
        + [(PACED, f"streaming, 100 text deltas {args.paced_gap_ms:g} ms apart (a model's pace)")],
        load=load,
        ttfb=ttfb,
        peak_rss=peak_rss,
        peak_rss_by_scenario=peak_rss_by_scenario,
        multicore=multicore,
        hold=hold,
        compare=compare,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = render_table(results)
    (args.out / "results.md").write_text(table)
    render_chart(results, args.out / "cpu_per_request.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
