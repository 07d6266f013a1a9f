"""Traces as Arize Phoenix shows them: a real `phoenix serve` on loopback receives cc-proxy's
spans over OTLP (gRPC and HTTP), and its REST API gives them back as LLM spans.

Phoenix lives in a venv of its own (`.ci/phoenix`, made by `.ci/run`): it pins its own
dependency versions. Without it the tests are skipped, except in CI, where they fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cc_proxy.standin import message_events
from conftest import GatewayFactory
from harness import Reply, ScriptedUpstream, wait_until
from test_otel import messages_body, post_messages, tool_call_message

PHOENIX = Path(__file__).resolve().parent.parent / ".ci" / "phoenix" / "bin" / "phoenix"
STARTUP_SECS = 180.0  # migrations and a cold import on a busy 2-core machine
SESSION = "phoenix-session-1"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


class Phoenix:
    def __init__(self, workdir: Path) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log = workdir / "phoenix.log"
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("CC_", "OTEL_"))}
        env.update(
            PHOENIX_WORKING_DIR=str(workdir),
            PHOENIX_HOST="127.0.0.1",
            PHOENIX_PORT=str(self.http_port),
            PHOENIX_GRPC_PORT=str(self.grpc_port),
            PHOENIX_TELEMETRY_ENABLED="false",
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(PHOENIX), "serve"], env=env, cwd=workdir, stdout=log, stderr=log
            )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def spans(self, project: str = "cc-proxy") -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/v1/projects/{project}/spans", params={"limit": 100}, timeout=10
        )
        if response.status_code == 404:  # no span has named the project yet
            return []
        response.raise_for_status()
        spans: list[dict[str, Any]] = response.json()["data"]
        return spans

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    if not PHOENIX.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PHOENIX} is missing: .ci/run installs Arize Phoenix there")
        pytest.skip(f"Arize Phoenix is not installed in {PHOENIX.parent.parent} (.ci/run does)")
    server = Phoenix(tmp_path_factory.mktemp("phoenix"))
    try:
        started = wait_until(
            lambda: server.healthy() or server.proc.poll() is not None, timeout=STARTUP_SECS
        )
        if not started or server.proc.poll() is not None:
            tail = server.log.read_text(errors="replace")[-3000:]
            pytest.fail(f"phoenix serve did not come up:\n{tail}")
        yield server
    finally:
        server.stop()


@pytest.fixture
def fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")


def spans_of(phoenix: Phoenix, request_id: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        found[:] = [
            span
            for span in phoenix.spans()
            if span["attributes"].get("cc_proxy.request_id") == request_id
        ]
        return len(found) >= count

    assert wait_until(arrived, timeout=60), f"Phoenix holds {len(found)} spans of {request_id}"
    return found


def test_phoenix_shows_the_request_as_an_llm_span_and_the_shadow_as_its_child(
    phoenix: Phoenix,
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    fast_export: None,
) -> None:
    gateway = start_gateway(
        default_mode="compare",
        tracing={"otlp_endpoint": f"http://127.0.0.1:{phoenix.grpc_port}", "enabled": True},
    )
    target.queue(Reply.sse(message_events(tool_call_message()), headers={"request-id": "req_phx"}))

    response = post_messages(
        gateway, messages_body("phoenix, are you there?"), {"X-Claude-Code-Session-Id": SESSION}
    )
    assert wait_until(lambda: target.completed == 1)

    request_id = response.headers["x-cc-proxy-request-id"]
    spans = {s["attributes"]["cc_proxy.role"]: s for s in spans_of(phoenix, request_id, 2)}
    primary, shadow = spans["primary"], spans["shadow"]
    assert primary["span_kind"] == "LLM"
    assert primary["parent_id"] is None
    assert shadow["span_kind"] == "LLM"
    assert shadow["parent_id"] == primary["context"]["span_id"]
    assert shadow["context"]["trace_id"] == primary["context"]["trace_id"]
    values = shadow["attributes"]
    assert values["llm.model_name"] == "glm-5"
    assert values["llm.provider"] == "self-hosted"
    assert values["session.id"] == SESSION
    assert values["cc_proxy.upstream_request_id"] == "req_phx"
    assert values["llm.token_count.prompt"] == 1234 + 20 + 100
    assert values["llm.token_count.completion"] == 56
    assert orjson.loads(values["llm.invocation_parameters"]) == {"max_tokens": 100, "stream": True}
    assert values["cc_proxy.ttft_ms"] <= values["cc_proxy.total_duration_ms"]
    assert "phoenix, are you there?" in str(values["input.value"])
    assert "Let me look." in str(values["output.value"])
    assert primary["attributes"]["llm.provider"] == "anthropic"
    assert primary["attributes"]["cc_proxy.upstream"] == "passthrough"


def test_phoenix_receives_spans_over_otlp_http_without_content_when_tracing_is_off(
    phoenix: Phoenix,
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    fast_export: None,
) -> None:
    gateway = start_gateway(tracing={"otlp_endpoint": f"{phoenix.url}/v1/traces"})
    target.queue(Reply.sse(message_events(tool_call_message())))

    response = post_messages(gateway, messages_body("keep this out of phoenix"))

    (span,) = spans_of(phoenix, response.headers["x-cc-proxy-request-id"], 1)
    values = span["attributes"]
    assert span["span_kind"] == "LLM"
    assert values["llm.model_name"] == "glm-5"
    assert values["llm.token_count.completion"] == 56
    assert values["cc_proxy.mode"] == "target"
    assert "input.value" not in values
    # (Phoenix makes an output.value of its own from gen_ai.response.model)
    assert not any(key.startswith(("llm.input_messages", "llm.output_messages")) for key in values)
    assert "keep this out of phoenix" not in orjson.dumps(phoenix.spans()).decode()
    assert "Let me look." not in orjson.dumps(span).decode()
