"""`GET /api/recent` and `GET /api/series`: the dashboard's view of recent traffic."""

from __future__ import annotations

from typing import Any

import httpx

from cc_proxy.activity import RECENT_SIZE, SERIES_BUCKET_SECS, SERIES_BUCKETS, Activity
from cc_proxy.exchange import Exchange, Outcome, Role
from cc_proxy.modes import Mode
from cc_proxy.standin import answer
from conftest import GatewayFactory, post_messages
from harness import RunningGateway, ScriptedUpstream, wait_until

ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
}


def get(gateway: RunningGateway, path: str) -> Any:
    resp = httpx.get(gateway.url + path, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_recent_lists_ended_exchanges_newest_first(gateway: RunningGateway) -> None:
    first = post_messages(gateway.url, ASK)
    second = post_messages(gateway.url, {**ASK, "stream": False})
    listed = get(gateway, "/api/recent")["exchanges"]
    assert [x["id"] for x in listed] == [
        second.headers["x-cc-proxy-request-id"],
        first.headers["x-cc-proxy-request-id"],
    ]
    newest = listed[0]
    usage = answer({**ASK, "model": "glm-5", "stream": False})["usage"]
    assert newest["requested_model"] == "claude-sonnet-4-5"
    assert newest["model"] == "glm-5"
    assert (newest["status"], newest["outcome"], newest["stream"]) == (200, "complete", False)
    assert newest["input_tokens"] == usage["input_tokens"]
    assert newest["output_tokens"] == usage["output_tokens"]
    assert listed[1]["ttft_ms"] is not None
    assert get(gateway, "/api/recent?limit=1")["exchanges"] == listed[:1]


def test_recent_shows_the_shadow_copy_with_the_same_id(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare")
    request_id = post_messages(gateway.url, ASK).headers["x-cc-proxy-request-id"]
    assert wait_until(lambda: target.completed == 1)
    assert wait_until(lambda: len(get(gateway, "/api/recent")["exchanges"]) == 2)
    listed = get(gateway, "/api/recent")["exchanges"]
    assert {(x["id"], x["role"], x["upstream"]) for x in listed} == {
        (request_id, "primary", "passthrough"),
        (request_id, "shadow", "target"),
    }


def test_recent_refuses_a_limit_out_of_range(gateway: RunningGateway) -> None:
    for limit in ("0", "abc", str(RECENT_SIZE + 1)):
        resp = httpx.get(f"{gateway.url}/api/recent?limit={limit}")
        assert resp.status_code == 400
        assert "limit" in resp.json()["error"]["message"]


def test_series_count_requests_and_tokens_per_upstream(gateway: RunningGateway) -> None:
    for _ in range(3):
        assert post_messages(gateway.url, ASK).status_code == 200
    assert post_messages(gateway.url, b"not json").status_code == 400
    series = get(gateway, "/api/series")
    assert series["bucket_secs"] == SERIES_BUCKET_SECS
    assert set(series["upstreams"]) == {"target", "passthrough"}
    target = series["upstreams"]["target"]
    assert len(target["requests"]) == SERIES_BUCKETS
    assert (sum(target["requests"]), sum(target["errors"])) == (4, 1)
    usage = answer({**ASK, "model": "glm-5"})["usage"]
    assert sum(target["output_tokens"]) == 3 * usage["output_tokens"]
    assert any(ms is not None for ms in target["ttft_ms"])
    assert target["in_flight"] == 0
    assert sum(series["upstreams"]["passthrough"]["requests"]) == 0


def exchange(upstream: str = "target", outcome: Outcome = Outcome.COMPLETE) -> Exchange:
    ended = Exchange(
        id="x",
        role=Role.PRIMARY,
        mode=Mode.TARGET,
        upstream=upstream,
        method="POST",
        path="/v1/messages",
        query="",
        target="/v1/messages",
        is_messages=True,
        status=200,
        outcome=outcome,
    )
    ended.finished = ended.started
    return ended


def test_the_recent_ring_and_the_series_stay_bounded() -> None:
    now = [1_000_000.0]
    activity = Activity(["target"], clock=lambda: now[0])
    for _ in range(RECENT_SIZE + 5):
        activity.on_start(one := exchange())
        activity.on_end(one)
        now[0] += SERIES_BUCKET_SECS
    assert len(activity.recent()) == RECENT_SIZE
    requests = activity.series()["upstreams"]["target"]["requests"]
    # the newest bucket is now's, still empty; every older one saw one exchange
    assert requests == [1] * (SERIES_BUCKETS - 1) + [0]
    assert len(activity._series["target"]) <= SERIES_BUCKETS


def test_a_dropped_shadow_is_listed_but_not_counted_in_the_series() -> None:
    activity = Activity(["target"], clock=lambda: 1_000_000.0)
    dropped = exchange(outcome=Outcome.DROPPED)
    activity.on_start(dropped)
    activity.on_end(dropped)
    assert activity.recent()[0]["outcome"] == "dropped"
    target = activity.series()["upstreams"]["target"]
    assert (sum(target["requests"]), target["in_flight"]) == (0, 0)
