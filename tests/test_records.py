"""Compare records (SPEC.md §1 compare mode): every compare-mode request yields one record
pairing the passthrough's answer with the target's, kept in SQLite and served by
`GET /api/compare` and `GET /api/compare/{id}`.

Both sides are real stand-in upstreams scripted to agree, to disagree, to fail, to hang
or to be saturated; the records are read back over the admin API.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cc_proxy.records import RecordStore
from cc_proxy.standin import message_events
from conftest import CLIENT_KEY, GatewayFactory
from harness import Reply, RunningGateway, ScriptedUpstream, wait_until
from test_process import GatewayProcess, gateway_env, run_to_end

SESSION = "0f8fad5b-d9cb-469f-a165-70867728950e"
ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "stream": True,
    "messages": [{"role": "user", "content": "list the files"}],
    # offered a tool, the stand-in model calls it
    "tools": [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}}],
}
# Records are written in batches this often here; the default is a second.
FAST = {"batch_secs": 0.05}


def message(
    *,
    text: str = "Let me look.",
    tool: tuple[str, dict[str, Any]] | None = ("Bash", {"command": "ls"}),
    stop_reason: str | None = None,
    output_tokens: int = 30,
    input_tokens: int = 1200,
) -> dict[str, Any]:
    """A Messages answer: text, then (unless `tool` is None) one tool call."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if tool is not None:
        name, tool_input = tool
        content.append({"type": "tool_use", "id": "toolu_r1", "name": name, "input": tool_input})
    return {
        "id": "msg_r1",
        "type": "message",
        "role": "assistant",
        "model": "served-model",
        "content": content,
        "stop_reason": stop_reason or ("tool_use" if tool else "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 7,
            "cache_read_input_tokens": 900,
        },
    }


def streamed(answer: dict[str, Any], **options: Any) -> Reply:
    return Reply.sse(message_events(answer), **options)


def ask(
    gateway: RunningGateway | str, body: dict[str, Any] | None = None, session: str = SESSION
) -> str:
    """Send one request in the session; the correlation id of its answer."""
    url = gateway if isinstance(gateway, str) else gateway.url
    response = httpx.post(
        f"{url}/v1/messages",
        content=orjson.dumps(body or ASK),
        headers={
            "x-api-key": CLIENT_KEY,
            "anthropic-version": "2023-06-01",
            "X-Claude-Code-Session-Id": session,
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-cc-proxy-request-id"]


def api(gateway: RunningGateway, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{gateway.url}{path}", params=params, timeout=30)


def record_of(gateway: RunningGateway, request_id: str) -> dict[str, Any]:
    """The full record once written (waits for the writer's batch)."""
    found: dict[str, Any] = {}

    def written() -> bool:
        response = api(gateway, f"/api/compare/{request_id}")
        if response.status_code == 200:
            found.update(response.json())
        return bool(found)

    assert wait_until(written, timeout=15), f"no record {request_id}"
    return found


@pytest.fixture
def comparing(start_gateway: GatewayFactory) -> RunningGateway:
    return start_gateway(default_mode="compare", compare=FAST)


def test_agreeing_answers_yield_a_record_pairing_both_sides(
    comparing: RunningGateway, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    passthrough.queue(streamed(message(output_tokens=30), headers={"request-id": "req_pt"}))
    target.queue(streamed(message(output_tokens=45, input_tokens=1100)))

    request_id = ask(comparing)

    record = record_of(comparing, request_id)
    assert record["id"] == request_id
    assert record["session_id"] == SESSION
    assert record["requested_model"] == "claude-sonnet-4-5"
    assert record["rewritten_model"] == "glm-5"
    assert record["agreement"] == {"stop_reason": True, "first_tool": True, "first_tool_args": True}
    primary, shadow = record["primary"], record["shadow"]
    assert primary["upstream"] == "passthrough"
    assert shadow["upstream"] == "target"
    for side, output, prompt in ((primary, 30, 1200), (shadow, 45, 1100)):
        assert side["status"] == 200
        assert side["error_type"] is None
        assert side["dropped"] is False
        assert side["input_tokens"] == prompt
        assert side["output_tokens"] == output
        assert side["cache_creation_input_tokens"] == 7
        assert side["cache_read_input_tokens"] == 900
        assert side["stop_reason"] == "tool_use"
        assert side["tool_calls"] == [{"name": "Bash", "input": {"command": "ls"}}]
        assert side["text"] == "Let me look."
        assert side["text_truncated"] is False
        assert 0 <= side["ttft_ms"] <= side["duration_ms"]
    # the record's time is when the request came, in UTC
    recorded = time.mktime(time.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")) - time.timezone
    assert abs(recorded - time.time()) < 300
    # the target's tokens are in the record, never in the stats
    assert wait_until(lambda: comparing.stats["shadow"]["requests"] == 1)
    assert comparing.stats["output_tokens"] == 30
    assert comparing.stats["input_tokens"] == 1200


def test_a_different_tool_is_a_disagreement_on_tool_and_arguments(
    comparing: RunningGateway, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    passthrough.queue(streamed(message(tool=("Bash", {"command": "ls"}))))
    target.queue(streamed(message(tool=("Read", {"file_path": "/etc/hosts"}))))

    record = record_of(comparing, ask(comparing))

    assert record["agreement"] == {
        "stop_reason": True,
        "first_tool": False,
        "first_tool_args": False,
    }
    assert record["shadow"]["tool_calls"] == [
        {"name": "Read", "input": {"file_path": "/etc/hosts"}}
    ]


def test_the_same_tool_with_other_arguments_disagrees_on_arguments_only(
    comparing: RunningGateway, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    passthrough.queue(streamed(message(tool=("Bash", {"command": "ls"}))))
    target.queue(streamed(message(tool=("Bash", {"command": "ls -la"}))))

    record = record_of(comparing, ask(comparing))

    assert record["agreement"] == {
        "stop_reason": True,
        "first_tool": True,
        "first_tool_args": False,
    }


def test_text_answers_compare_stop_reasons_and_no_tool(
    comparing: RunningGateway, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    passthrough.queue(Reply.json(message(tool=None, text="Done.")))
    target.queue(Reply.json(message(tool=None, text="Stopped", stop_reason="max_tokens")))

    record = record_of(comparing, ask(comparing, {**ASK, "stream": False}))

    assert record["agreement"] == {
        "stop_reason": False,
        "first_tool": None,
        "first_tool_args": None,
    }
    assert record["primary"]["text"] == "Done."
    assert record["shadow"]["text"] == "Stopped"
    assert record["shadow"]["tool_calls"] == []


def test_a_target_error_is_recorded_on_the_shadow_side_and_compares_nothing(
    comparing: RunningGateway, target: ScriptedUpstream
) -> None:
    error = {"type": "error", "error": {"type": "api_error", "message": "GPU fell over"}}
    target.queue(Reply.json(error, status=500))

    record = record_of(comparing, ask(comparing))

    assert record["shadow"]["status"] == 500
    assert record["shadow"]["error_type"] == "api_error"
    assert record["shadow"]["tool_calls"] == []
    assert record["primary"]["error_type"] is None
    assert record["agreement"] == {
        "stop_reason": None,
        "first_tool": None,
        "first_tool_args": None,
    }


def test_a_target_that_times_out_is_recorded_as_a_timeout(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare", compare=FAST, target={"timeout_secs": 0.5})
    target.queue(Reply.hang())

    record = record_of(gateway, ask(gateway))

    assert record["shadow"]["error_type"] == "timeout"
    assert record["shadow"]["status"] is None
    assert record["shadow"]["dropped"] is False
    assert record["primary"]["status"] == 200


def test_a_shadow_dropped_for_saturation_still_yields_a_record_marked_dropped(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare", compare=FAST, target={"max_concurrent": 1})
    target.queue(Reply.hang())  # the first shadow holds the only slot
    ask(gateway)
    assert wait_until(lambda: len(target.seen) == 1)

    record = record_of(gateway, ask(gateway))

    assert record["shadow"]["dropped"] is True
    assert record["shadow"]["status"] is None
    assert record["shadow"]["error_type"] is None
    assert record["shadow"]["upstream"] == "target"
    assert record["primary"]["status"] == 200
    assert record["agreement"]["first_tool"] is None
    assert len(target.seen) == 1


def test_text_is_kept_up_to_the_bound_and_marked_truncated(
    start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="compare", compare={**FAST, "max_text_bytes": 10})
    passthrough.queue(streamed(message(text="naïve café au lait")))
    target.queue(streamed(message(text="short")))

    record = record_of(gateway, ask(gateway))

    # 10 bytes of UTF-8, cut before a character that would not fit whole
    assert record["primary"]["text"] == "naïve caf"
    assert record["primary"]["text_truncated"] is True
    assert record["shadow"]["text"] == "short"
    assert record["shadow"]["text_truncated"] is False
    assert record["primary"]["tool_calls"] == [{"name": "Bash", "input": {"command": "ls"}}]


def test_requests_outside_compare_mode_yield_no_record(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(default_mode="target", compare=FAST)
    ask(gateway)
    httpx.put(f"{gateway.url}/api/mode", json={"mode": "compare"}, timeout=10)
    compared = ask(gateway)

    record_of(gateway, compared)
    listed = api(gateway, "/api/compare").json()
    assert [record["id"] for record in listed["records"]] == [compared]


# --- the API -------------------------------------------------------------------------------


def test_list_is_newest_first_in_pages_of_summaries(
    comparing: RunningGateway, target: ScriptedUpstream
) -> None:
    ids = [ask(comparing) for _ in range(5)]
    record_of(comparing, ids[-1])
    assert wait_until(lambda: len(api(comparing, "/api/compare").json()["records"]) == 5)

    first = api(comparing, "/api/compare", limit=2).json()
    second = api(comparing, "/api/compare", limit=2, cursor=first["next_cursor"]).json()
    third = api(comparing, "/api/compare", limit=2, cursor=second["next_cursor"]).json()

    pages = [first, second, third]
    assert [r["id"] for page in pages for r in page["records"]] == ids[::-1]
    assert third["next_cursor"] is None
    summary = first["records"][0]
    assert set(summary) == {
        "id",
        "time",
        "session_id",
        "requested_model",
        "rewritten_model",
        "primary",
        "shadow",
        "agreement",
    }
    for side in (summary["primary"], summary["shadow"]):
        assert "text" not in side
        assert side["tool_calls"] == [{"name": "Bash"}]  # the stand-in's call, no input
        assert side["text_truncated"] is False


def test_list_filters_by_session_model_and_disagreement(
    comparing: RunningGateway, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    passthrough.queue(streamed(message()), streamed(message()), streamed(message()))
    target.queue(
        streamed(message()),
        streamed(message(tool=("Read", {"file_path": "a"}))),
        streamed(message()),
    )
    # each waits for its record: the target's scripted answers go out in order
    agreed = record_of(comparing, ask(comparing, session="session-a"))["id"]
    disagreed = record_of(comparing, ask(comparing, session="session-b"))["id"]
    haiku_ask = {**ASK, "model": "claude-haiku-4-5"}
    haiku = record_of(comparing, ask(comparing, haiku_ask, session="session-a"))["id"]

    def ids(**params: Any) -> list[str]:
        return [r["id"] for r in api(comparing, "/api/compare", **params).json()["records"]]

    assert ids(session="session-a") == [haiku, agreed]
    assert ids(model="claude-haiku-4-5") == [haiku]
    assert ids(model="glm-5") == [haiku, disagreed, agreed]  # the rewritten model matches too
    assert ids(disagreements="true") == [disagreed]
    assert ids(disagreements="false") == [haiku, disagreed, agreed]
    assert ids(session="session-a", disagreements="true") == []


def test_unknown_record_is_an_anthropic_shaped_404(comparing: RunningGateway) -> None:
    response = api(comparing, "/api/compare/0123456789abcdef")

    assert response.status_code == 404
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "not_found_error"
    assert "0123456789abcdef" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"cursor": "yesterday"}, "cursor"),
        ({"disagreements": "maybe"}, "disagreements"),
    ],
)
def test_bad_query_parameters_are_an_anthropic_shaped_400(
    comparing: RunningGateway, params: dict[str, str], named: str
) -> None:
    response = api(comparing, "/api/compare", **params)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert named in response.json()["error"]["message"]


def test_list_before_any_record_is_empty(comparing: RunningGateway) -> None:
    assert api(comparing, "/api/compare").json() == {"records": [], "next_cursor": None}


# --- storage -------------------------------------------------------------------------------


def test_the_database_is_in_wal_mode_and_keeps_the_newest_max_records(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "records" / "compare.db"
    gateway = start_gateway(
        default_mode="compare", compare={**FAST, "db_path": str(path), "max_records": 3}
    )
    ids = [ask(gateway) for _ in range(5)]
    record_of(gateway, ids[-1])

    assert wait_until(lambda: len(api(gateway, "/api/compare").json()["records"]) == 3)
    assert [r["id"] for r in api(gateway, "/api/compare").json()["records"]] == ids[:1:-1]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_records_older_than_max_age_are_removed_on_the_next_write(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "compare.db")
    connection = store.open_for_writing()
    day = 86400.0
    now = time.time()

    def written(record_id: str, at: float) -> dict[str, Any]:
        side = {
            "upstream": "target",
            "status": 200,
            "error_type": None,
            "dropped": False,
            "tool_calls": [],
            "text": "",
        }
        moment = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at))
        return {
            "id": record_id,
            "time": moment,
            "session_id": None,
            "requested_model": None,
            "rewritten_model": None,
            "primary": side,
            "shadow": side,
            "agreement": {"stop_reason": None, "first_tool": None, "first_tool_args": None},
        }

    RecordStore.write(
        connection,
        [written("old", now - 3 * day), written("recent", now - day)],
        max_records=10,
        max_age_secs=7 * day,
    )
    assert [r["id"] for r in store.page().records] == ["recent", "old"]
    RecordStore.write(connection, [written("new", now)], max_records=10, max_age_secs=2 * day)
    connection.close()

    assert [r["id"] for r in store.page().records] == ["new", "recent"]
    assert store.get("old") is None


def test_records_still_queued_are_written_when_the_gateway_stops(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "compare.db"
    # no batch is written on its own before the gateway stops
    gateway = start_gateway(
        default_mode="compare", compare={"db_path": str(path), "batch_secs": 600}
    )
    ids = [ask(gateway) for _ in range(3)]
    assert wait_until(lambda: gateway.stats["shadow"]["requests"] == 3)
    assert api(gateway, "/api/compare").json()["records"] == []

    gateway.stop()

    assert [r["id"] for r in RecordStore(path).page().records] == ids[::-1]


def test_records_survive_a_sigterm(
    tmp_path: Path, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    env = gateway_env(
        CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0",
        CC_DEFAULT_MODE="compare",
        CC_PASSTHROUGH__URL=passthrough.url,
        CC_COMPARE__BATCH_SECS="600",  # only the shutdown can write them
    )
    gateway = GatewayProcess(["--target-url", target.url], env, tmp_path)
    try:
        url = gateway.local_url()
        ids = [ask(url) for _ in range(3)]
        assert gateway.stop(signal.SIGTERM) == 0
    finally:
        gateway.kill()

    # the default database is in the working directory, where compare-report finds it
    written = RecordStore(tmp_path / "cc-proxy-compare.db").page().records
    assert [record["id"] for record in written] == ids[::-1]
    done = run_to_end(["compare-report", "--format", "json"], gateway_env(), tmp_path)
    assert json.loads(done.stdout)["count"] == 3
