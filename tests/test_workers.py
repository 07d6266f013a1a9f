"""`server.workers = 2`: two processes on one port, one mode, one set of stats.

Real subprocesses and real sockets: each request goes on a fresh connection, which the
kernel hands to either worker; `/health` names the worker that answered, so every test
first makes sure both of them took part.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import ScriptedUpstream, wait_until
from test_process import WAIT, GatewayProcess, assert_no_secrets, gateway_env

WORKERS = 2
# Fresh connections land on a worker by a hash of their ports: this many make it all but
# certain that each worker gets some, and the tests check that it did.
ATTEMPTS = 200
REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "which worker are you"}],
}


@pytest.fixture
def workers(
    tmp_path: Path, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> Iterator[GatewayProcess]:
    env = gateway_env(
        CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0",
        CC_SERVER__WORKERS=str(WORKERS),
        CC_PASSTHROUGH__URL=passthrough.url,
    )
    process = GatewayProcess(
        ["--target-url", target.url, "--model", "glm-5", "--allow-anthropic-only"], env, tmp_path
    )
    process.listening()
    yield process
    if process.proc.poll() is None:
        process.stop(signal.SIGTERM)
    assert_no_secrets(process.output())


def on_each_worker(url: str, call: Any) -> dict[int, list[Any]]:
    """`call(client)` on fresh connections until every worker has answered one, grouped by
    the worker that `/health`, asked first on the same connection, names."""
    answered: dict[int, list[Any]] = {}
    for _ in range(ATTEMPTS):
        with httpx.Client(base_url=url, timeout=WAIT) as client:
            health = client.get("/health").json()
            answered.setdefault(health["worker"], []).append(call(client))
        if len(answered) == WORKERS:
            break
    assert sorted(answered) == list(range(WORKERS)), f"only workers {sorted(answered)} answered"
    return answered


def ask_for_tokens(client: httpx.Client) -> int:
    """One /v1/messages request; the output tokens its answer reports."""
    answer = client.post("/v1/messages", json=REQUEST)
    assert answer.status_code == 200
    output_tokens: int = answer.json()["usage"]["output_tokens"]
    return output_tokens


def test_workers_share_the_port(workers: GatewayProcess) -> None:
    answered = on_each_worker(workers.local_url(), lambda client: client.get("/health").json())

    for index, healths in answered.items():
        assert all(h["worker"] == index and h["workers"] == WORKERS for h in healths)


def test_a_mode_switch_reaches_every_worker(
    workers: GatewayProcess, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    url = workers.local_url()
    switched = httpx.put(f"{url}/api/mode", json={"mode": "anthropic-only"}, timeout=WAIT)
    assert switched.status_code == 200

    def ask(client: httpx.Client) -> tuple[str, int]:
        mode = client.get("/api/mode").json()["mode"]
        return mode, client.post("/v1/messages", json=REQUEST).status_code

    answered = on_each_worker(url, ask)

    for answers in answered.values():
        assert all(answer == ("anthropic-only", 200) for answer in answers)
    sent = sum(len(answers) for answers in answered.values())
    assert len(passthrough.seen) == sent
    assert target.seen == []


def test_stats_count_what_every_worker_served(workers: GatewayProcess) -> None:
    url = workers.local_url()

    answered = on_each_worker(url, ask_for_tokens)
    sent = sum(len(answers) for answers in answered.values())
    tokens = sum(sum(answers) for answers in answered.values())

    # Read through each worker: both must report the sum of both.
    stats = on_each_worker(url, lambda client: client.get("/api/stats").json())
    for reports in stats.values():
        for report in reports:
            assert report["total_requests"] == sent
            assert report["output_tokens"] == tokens
            assert report["requests_by_mode"] == {"target": sent}


def _scraped(client: httpx.Client) -> dict[str, float]:
    """`/metrics` as sample name and labels -> value, with the worker that answered."""
    text = client.get("/metrics").text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_count_what_every_worker_served(workers: GatewayProcess) -> None:
    url = workers.local_url()

    answered = on_each_worker(url, ask_for_tokens)
    sent = sum(len(answers) for answers in answered.values())
    tokens = sum(sum(answers) for answers in answered.values())
    labels = "mode=target,model=glm-5,outcome=complete,role=primary,status=200,upstream=target"

    tokens_key = "cc_proxy_tokens_total{kind=output,model=glm-5,role=primary,upstream=target}"
    expected = {
        f"cc_proxy_requests_total{{{labels}}}": sent,
        tokens_key: tokens,
        "cc_proxy_duration_seconds_count{role=primary,upstream=target}": sent,
        # Nothing is in flight but the scrape itself, which is not a proxied request.
        "cc_proxy_in_flight_requests{upstream=target}": 0,
    }

    # Scraped through each worker: both must show what both served (each worker's own
    # figures reach the shared files within FOLD_SECS), so that a counter never seems to
    # go back when the next scrape reaches the other worker.
    def both_show_all() -> bool:
        scrapes = on_each_worker(url, _scraped)
        return all(
            {key: samples.get(key) for key in expected} == expected
            for samples in (sample for each in scrapes.values() for sample in each)
        )

    assert wait_until(both_show_all, WAIT)


def test_sigterm_stops_every_worker_and_exits_0(workers: GatewayProcess) -> None:
    url = workers.local_url()
    on_each_worker(url, lambda client: client.get("/health").status_code)

    assert workers.stop(signal.SIGTERM) == 0
    assert wait_until(lambda: "cc-proxy stopped" in workers.output(), WAIT)
