"""`GET /metrics`: Prometheus figures checked against the traffic that was sent."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from cc_proxy.metrics import LATENCY_BUCKETS, _Observed
from cc_proxy.standin import answer, message_events
from conftest import GatewayFactory, post_messages
from harness import Gate, LoopThread, Reply, RunningGateway, ScriptedUpstream, wait_until

TOOLS = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "list the files"}],
}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gateway: RunningGateway) -> Samples:
    resp = httpx.get(gateway.url + "/metrics", timeout=30)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(resp.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(found)[label] for (n, found), _ in samples.items() if n == name}


def test_requests_tokens_and_tool_calls_match_what_was_sent(gateway: RunningGateway) -> None:
    streamed = {**ASK, "stream": True, "tools": TOOLS}
    plain = {**ASK, "messages": [{"role": "user", "content": "say something longer, please"}]}
    assert post_messages(gateway.url, streamed).status_code == 200
    assert post_messages(gateway.url, plain).status_code == 200
    sent = [answer({**streamed, "model": "glm-5"}), answer({**plain, "model": "glm-5"})]
    samples = scrape(gateway)
    assert (
        value(
            samples,
            "cc_proxy_requests_total",
            mode="target",
            role="primary",
            upstream="target",
            model="glm-5",
            status="200",
            outcome="complete",
        )
        == 2
    )
    for kind in ("input", "output"):
        expected = sum(message["usage"][f"{kind}_tokens"] for message in sent)
        assert value(samples, "cc_proxy_tokens_total", kind=kind, model="glm-5") == expected
    assert value(samples, "cc_proxy_tool_calls_total", upstream="target") == 1
    assert value(samples, "cc_proxy_time_to_first_token_seconds_count", upstream="target") == 2
    assert value(samples, "cc_proxy_duration_seconds_count", upstream="target") == 2
    assert value(samples, "cc_proxy_time_to_first_token_seconds_sum", upstream="target") > 0
    assert value(samples, "cc_proxy_in_flight_requests", upstream="target") == 0
    assert value(samples, "cc_proxy_errors_total") == 0


def test_client_model_names_become_a_bounded_set_of_labels(
    start_gateway: GatewayFactory,
) -> None:
    gateway = start_gateway(default_mode="anthropic-only", allow_anthropic_only=True)
    for model in ("claude-sonnet-4-5-20250929", "claude-3-5-haiku-latest", "gpt-<script>"):
        assert post_messages(gateway.url, {**ASK, "model": model}).status_code == 200
    samples = scrape(gateway)
    models = label_values(samples, "cc_proxy_requests_total", "model")
    assert models == {"claude-sonnet", "claude-haiku", "other"}
    assert value(samples, "cc_proxy_requests_total", upstream="passthrough") == 3
    assert "<script>" not in httpx.get(gateway.url + "/metrics").text


def test_errors_are_counted_by_type(gateway: RunningGateway, target: ScriptedUpstream) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    target.queue(Reply.json(overloaded, status=529))
    assert post_messages(gateway.url, ASK).status_code == 529
    assert post_messages(gateway.url, b"not json").status_code == 400
    samples = scrape(gateway)
    assert value(samples, "cc_proxy_errors_total", type="overloaded_error") == 1
    assert value(samples, "cc_proxy_errors_total", type="invalid_request_error") == 1
    assert value(samples, "cc_proxy_errors_total") == 2
    assert value(samples, "cc_proxy_requests_total", status="529", outcome="complete") == 1
    assert value(samples, "cc_proxy_requests_total", status="400", outcome="rejected") == 1


def test_an_unreachable_upstream_is_counted_as_its_outcome(start_gateway: GatewayFactory) -> None:
    gateway = start_gateway(target={"url": "http://127.0.0.1:9"})
    assert post_messages(gateway.url, ASK).status_code == 502
    samples = scrape(gateway)
    assert value(samples, "cc_proxy_errors_total", upstream="target", type="unreachable") == 1


def test_shadow_drops_and_limiter_saturation_are_shown(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare", target={"max_concurrent": 1})
    target.queue(Reply.hang())  # the first shadow holds the only slot
    assert post_messages(gateway.url, ASK).status_code == 200
    assert wait_until(lambda: len(target.seen) == 1)
    assert post_messages(gateway.url, ASK).status_code == 200
    samples = scrape(gateway)
    assert value(samples, "cc_proxy_shadow_dropped_total") == 1
    assert value(samples, "cc_proxy_limiter_capacity", upstream="target") == 1
    assert value(samples, "cc_proxy_limiter_in_use", upstream="target") == 1
    assert value(samples, "cc_proxy_limiter_saturation", upstream="target") == 1.0
    assert value(samples, "cc_proxy_in_flight_requests", upstream="target") == 1
    assert value(samples, "cc_proxy_requests_total", role="primary", upstream="passthrough") == 2
    assert value(samples, "cc_proxy_requests_total", role="shadow") == 0


def test_a_request_waiting_for_a_target_slot_is_shown(
    start_gateway: GatewayFactory, target: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    gateway = start_gateway(target={"max_concurrent": 1, "queue_wait_secs": 60})
    gate = Gate(loop_thread)
    streamed = {**ASK, "stream": True}
    target.queue(Reply.sse(message_events(answer(streamed)), gate=gate, hold_at=1))

    def waiting() -> float:
        return value(scrape(gateway), "cc_proxy_limiter_waiting", upstream="target")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post_messages, gateway.url, streamed)
        assert wait_until(lambda: len(target.seen) == 1)
        second = pool.submit(post_messages, gateway.url, ASK)
        assert wait_until(lambda: waiting() == 1, timeout=30)
        samples = scrape(gateway)
        assert value(samples, "cc_proxy_limiter_in_use", upstream="target") == 1
        assert value(samples, "cc_proxy_limiter_saturation", upstream="target") == 1.0
        gate.open()
        assert first.result(30).status_code == 200
        assert second.result(30).status_code == 200
    samples = scrape(gateway)
    assert value(samples, "cc_proxy_limiter_waiting", upstream="target") == 0
    assert value(samples, "cc_proxy_limiter_in_use", upstream="target") == 0


def test_the_current_mode_is_a_gauge(gateway: RunningGateway) -> None:
    assert value(scrape(gateway), "cc_proxy_mode", mode="target") == 1
    httpx.put(gateway.url + "/api/mode", json={"mode": "compare"}).raise_for_status()
    samples = scrape(gateway)
    assert value(samples, "cc_proxy_mode", mode="compare") == 1
    assert value(samples, "cc_proxy_mode", mode="target") == 0


def test_two_gateways_in_one_process_keep_their_own_figures(
    start_gateway: GatewayFactory,
) -> None:
    first, second = start_gateway(), start_gateway()
    assert post_messages(first.url, ASK).status_code == 200
    assert value(scrape(first), "cc_proxy_requests_total") == 1
    assert value(scrape(second), "cc_proxy_requests_total") == 0


@given(
    st.lists(
        st.one_of(
            st.sampled_from(LATENCY_BUCKETS),  # on a bound: that bucket, as observe() has it
            st.floats(min_value=0, max_value=1000, allow_nan=False),
        ),
        max_size=50,
    )
)
def test_observations_folded_as_a_batch_read_as_if_observed_one_by_one(
    seconds: list[float],
) -> None:
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    observing = Histogram("latency", "", buckets=LATENCY_BUCKETS, registry=one_by_one)
    folded = Histogram("latency", "", buckets=LATENCY_BUCKETS, registry=batched)
    for each in seconds:
        observing.observe(each)
    observed = _Observed()
    for each in seconds:
        observed.add(each)
    observed.fold_into(folded)

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        return {
            f"{sample.name}{sorted(sample.labels.items())}": sample.value
            for family in registry.collect()
            for sample in family.samples
        }

    assert samples(batched) == pytest.approx(samples(one_by_one))
