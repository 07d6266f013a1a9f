"""A few-second run of the benchmark harness (`python -m bench --smoke`), so that it
cannot rot: nginx, wrk, the minimal relay and cc-proxy for real, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the harness is not part of the installed package

from bench.procs import awake, children  # noqa: E402
from bench.report import _load_figures  # noqa: E402

RELAYS = {"direct", "nginx", "minimal", "cc-proxy", "cc-proxy-compare"}
SCENARIOS = {"json", "stream", "claude_code", "stream_paced"}
# the model-paced streams: the relays that matter, and no compare mode (a shadow needs a
# second paced stand-in, and compare's cost is the unpaced scenarios' business)
PACED_RELAYS = {"direct", "nginx", "minimal", "cc-proxy"}


def run_harness(*argv: str, timeout: float) -> None:
    """`python -m ARGV...` from the repository, which must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run_harness("bench", "--smoke", "--out", str(out), timeout=300)
    return out


@pytest.mark.slow
def test_every_relay_answers_every_scenario_without_errors(smoke: Path) -> None:
    results = json.loads((smoke / "results.json").read_text())

    assert set(results["load"]) == SCENARIOS
    for scenario, relays in results["load"].items():
        assert set(relays) == (PACED_RELAYS if scenario == "stream_paced" else RELAYS), scenario
        for relay, row in relays.items():
            assert row["requests"] > 0, (scenario, relay)
            assert row["errors"] == 0, (scenario, relay)
            # how busy each core was: a share of the round, never more than all of it
            assert 0 < row["load_core_busy"] <= 1, (scenario, relay)
            assert 0 <= row["proxy_core_busy"] <= 1, (scenario, relay)
            if relay != "direct":
                assert row["cpu_us_per_request"] > 0, (scenario, relay)
                assert row["vs_nginx"]["cpu_us_per_request"] > 0, (scenario, relay)
                assert row["proxy_core_busy"] > 0, (scenario, relay)
    bars = {bar["bar"]: bar for bar in results["bars"]}
    paced = bars["CPU per streamed response vs nginx (stream_paced)"]
    assert (
        paced["measured"]
        == results["load"]["stream_paced"]["cc-proxy"]["vs_nginx"]["cpu_us_per_request"]
    )


@pytest.mark.slow
def test_first_byte_two_workers_and_held_streams_are_measured(smoke: Path) -> None:
    results = json.loads((smoke / "results.json").read_text())

    assert set(results["ttfb"]) == {"c1", "c50", "c1-halting"}
    assert set(results["ttfb"]["c1"]) == RELAYS
    assert all(row["samples"] > 0 for row in results["ttfb"]["c50"].values())
    runs = results["multicore"]["runs"]
    assert [run["requests"] > 0 and run["errors"] == 0 for run in runs.values()] == [True, True]
    (held,) = results["hold"]
    assert held["failed"] == 0
    assert held["alive"] == held["asked"]
    assert held["rss_held_kb"] > 0


@pytest.mark.slow
def test_compare_mode_is_timed_against_anthropic_only(smoke: Path) -> None:
    results = json.loads((smoke / "results.json").read_text())

    assert set(results["compare"]) == {"instant-c1", "instant-c8", "model-c1", "model-c8"}
    for key, row in results["compare"].items():
        for mode in ("anthropic-only", "compare"):
            assert row[mode]["samples"] > 0, (key, mode)
            assert 0 < row[mode]["first_p50_ms"] <= row[mode]["end_p50_ms"], (key, mode)
        assert row["ratio"]["end_p50_ms"] > 0, key
        assert isinstance(row["within_5pct"], bool), key
    # the model-like stand-ins wait before the first token: the timings must show it
    assert results["compare"]["model-c1"]["anthropic-only"]["first_p50_ms"] >= 300


@pytest.mark.slow
def test_writes_the_table_and_the_chart(smoke: Path) -> None:
    table = (smoke / "results.md").read_text()

    assert "Pinning: proxy under test on core" in table
    assert "| cc-proxy |" in table
    assert "**Bars**" in table
    assert "**Compare mode against anthropic-only**" in table
    assert (smoke / "cpu_per_request.png").read_bytes().startswith(b"\x89PNG")


def test_cores_are_kept_awake_by_idle_priority_spinners_that_stop_with_the_block() -> None:
    core = min(os.sched_getaffinity(0))
    with awake([core, core]):
        spinners = children(os.getpid())
        assert len(spinners) == 1  # one per core, however often it is named
        (spinner,) = spinners
        deadline = time.monotonic() + 10
        # set by the spinner itself once it runs
        while os.sched_getscheduler(spinner) != os.SCHED_IDLE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.sched_getscheduler(spinner) == os.SCHED_IDLE
        assert os.sched_getaffinity(spinner) == {core}
    assert spinner not in children(os.getpid())
    assert not Path(f"/proc/{spinner}").exists()


def test_a_load_figure_is_the_median_of_its_rounds_so_a_disturbed_round_weighs_no_more() -> None:
    def round_of(requests: int, cpu_seconds: float) -> dict[str, float]:
        return {
            "requests": requests,
            "seconds": 1.0,
            "cpu_seconds": cpu_seconds,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "socket_errors": 0,
            "status_errors": 0,
        }

    # 500, 300 and (a round the box was busy in) 1,800 µs per request
    figures = _load_figures([round_of(100, 0.05), round_of(100, 0.03), round_of(50, 0.09)], 1024)

    assert figures["cpu_us_per_request"] == 500.0
    assert figures["cpu_us_per_request_rounds"] == [500.0, 300.0, 1800.0]
    assert figures["rps"] == 100.0


@pytest.mark.slow
def test_instructions_per_response_are_counted_for_both_relays(tmp_path: Path) -> None:
    """`python -m bench.instructions` at its smallest: both relays under callgrind."""
    scenarios = ["--scenarios", "json", "stream"]
    size = ["--requests", "4", "--concurrency", "2"]
    run_harness("bench.instructions", *scenarios, *size, "--out", str(tmp_path), timeout=600)
    found = json.loads((tmp_path / "instructions.json").read_text())["found"]
    assert set(found) == {"json", "stream"}
    for scenario, relays in found.items():
        assert set(relays) == {"cc-proxy", "minimal"}, scenario
        # a response takes hundreds of thousands of instructions, under a billion
        assert all(1e5 < count < 1e9 for count in relays.values()), (scenario, relays)
    assert "| stream | cc-proxy |" in (tmp_path / "instructions.md").read_text()
