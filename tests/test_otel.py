"""OTLP spans (SPEC.md §5): one span per request, read back from a real OTLP receiver.

The receivers are real servers on 127.0.0.1 (gRPC, and HTTP/protobuf), so the spans go
through the SDK's batching and the OTLP exporter exactly as they would to a collector.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cc_proxy.config import TracingSettings
from cc_proxy.exchange import Exchange, Outcome, Role
from cc_proxy.modes import Mode
from cc_proxy.standin import message_events
from conftest import CLIENT_KEY, PASSTHROUGH_KEY, TARGET_KEY, GatewayFactory
from harness import LoopThread, Reply, RunningGateway, ScriptedUpstream, load_fixture, wait_until

REQUEST_ID_HEADER = "x-cc-proxy-request-id"


class Received:
    """Every ExportTraceServiceRequest a receiver got, as objects and as raw bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[ExportTraceServiceRequest] = []

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests.append(request)

    @property
    def raw(self) -> bytes:
        with self._lock:
            return b"".join(request.SerializeToString() for request in self.requests)

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """(resource attributes, span) for every span received."""
        found: list[tuple[dict[str, Any], Span]] = []
        with self._lock:
            for request in self.requests:
                for resource_spans in request.resource_spans:
                    resource = attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        found.extend((resource, span) for span in scope_spans.spans)
        return found

    def wait_for(self, count: int) -> list[Span]:
        assert wait_until(lambda: len(self.spans()) >= count, timeout=10), (
            f"expected {count} spans, received {len(self.spans())}"
        )
        return [span for _, span in self.spans()]


def attributes(pairs: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        kind = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, kind) if kind else None
    return values


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
        self.received.add(request)
        return ExportTraceServiceResponse()


@pytest.fixture
def fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    # The BatchSpanProcessor reads its schedule from here: batches leave every 50 ms.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")


@pytest.fixture
def grpc_collector() -> Iterator[tuple[str, Received]]:
    """An OTLP/gRPC receiver on an ephemeral port: (endpoint, what it received)."""
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = GrpcReceiver(received)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", received
    server.stop(grace=None)


@pytest.fixture
def http_collector(loop_thread: LoopThread) -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP (protobuf) receiver: POST /v1/traces. Yields (endpoint, received)."""
    received = Received()

    async def export(request: web.Request) -> web.Response:
        received.add(ExportTraceServiceRequest.FromString(await request.read()))
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def start() -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/v1/traces", export)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        return runner, f"http://127.0.0.1:{sock.getsockname()[1]}/v1/traces"

    runner, endpoint = loop_thread.run(start())
    yield endpoint, received
    loop_thread.run(runner.cleanup())


@pytest.fixture
def traced(
    start_gateway: GatewayFactory, grpc_collector: tuple[str, Received], fast_export: None
) -> tuple[RunningGateway, Received]:
    endpoint, received = grpc_collector
    return start_gateway(tracing={"otlp_endpoint": endpoint}), received


def tool_call_message() -> dict[str, Any]:
    """An answer with a tool call and every usage figure set, as an upstream sends it."""
    return {
        "id": "msg_otel_1",
        "type": "message",
        "role": "assistant",
        "model": "glm-5-served",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1234,
            "output_tokens": 56,
            "cache_creation_input_tokens": 20,
            "cache_read_input_tokens": 100,
        },
    }


def messages_body(text: str = "hello", *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


def post_messages(
    gateway: RunningGateway, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        content=orjson.dumps(body),
        headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01", **(headers or {})},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def set_content_tracing(gateway: RunningGateway, enabled: bool) -> None:
    response = httpx.put(f"{gateway.url}/api/tracing", json={"enabled": enabled}, timeout=10)
    assert response.json() == {"enabled": enabled}


def test_streamed_request_yields_one_llm_span_with_timing_and_tokens(
    traced: tuple[RunningGateway, Received], target: ScriptedUpstream
) -> None:
    gateway, received = traced
    target.queue(Reply.sse(message_events(tool_call_message()), headers={"request-id": "req_up_1"}))
    before = time.time_ns()

    response = post_messages(gateway, messages_body())

    (span,) = received.wait_for(1)
    after = time.time_ns()
    resource, _ = received.spans()[0]
    values = attributes(span.attributes)
    assert resource["service.name"] == "cc-proxy"
    assert span.name == "POST /v1/messages"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.parent_span_id == b""
    assert values["cc_proxy.request_id"] == response.headers[REQUEST_ID_HEADER]
    assert values["cc_proxy.mode"] == "target"
    assert values["cc_proxy.upstream"] == "target"
    assert values["cc_proxy.outcome"] == "complete"
    assert values["http.response.status_code"] == 200
    assert values["cc_proxy.model"] == "glm-5"
    assert values["cc_proxy.requested_model"] == "claude-sonnet-4-5"
    assert values["cc_proxy.upstream_request_id"] == "req_up_1"
    assert values["cc_proxy.stop_reason"] == "tool_use"
    assert values["cc_proxy.tool_calls"] == 1
    assert values["cc_proxy.input_tokens"] == 1234
    assert values["cc_proxy.output_tokens"] == 56
    assert values["cc_proxy.cache_creation_input_tokens"] == 20
    assert values["cc_proxy.cache_read_input_tokens"] == 100
    assert 0 <= values["cc_proxy.ttft_ms"] <= values["cc_proxy.total_duration_ms"]
    assert "error.type" not in values
    # the span's times are the exchange's own, on the wall clock (1 s slack for clock skew)
    assert before - 10**9 <= span.start_time_unix_nano <= span.end_time_unix_nano
    assert span.end_time_unix_nano <= after + 10**9


def test_span_carries_openinference_attributes_for_phoenix(
    traced: tuple[RunningGateway, Received], target: ScriptedUpstream
) -> None:
    gateway, received = traced
    target.queue(Reply.sse(message_events(tool_call_message())))

    post_messages(gateway, messages_body())

    (span,) = received.wait_for(1)
    values = attributes(span.attributes)
    assert values["openinference.span.kind"] == "LLM"
    assert values["llm.provider"] == "self-hosted"
    assert values["llm.model_name"] == "glm-5"
    # OpenInference counts the whole prompt: Anthropic's input_tokens plus the cached parts
    assert values["llm.token_count.prompt"] == 1234 + 20 + 100
    assert values["llm.token_count.completion"] == 56
    assert values["llm.token_count.total"] == 1234 + 20 + 100 + 56
    assert values["llm.token_count.prompt_details.cache_read"] == 100
    assert values["llm.token_count.prompt_details.cache_write"] == 20


def test_content_is_recorded_only_while_content_tracing_is_on(
    traced: tuple[RunningGateway, Received],
) -> None:
    gateway, received = traced

    set_content_tracing(gateway, True)
    post_messages(gateway, messages_body("marker-on"))
    set_content_tracing(gateway, False)
    post_messages(gateway, messages_body("marker-off"))

    traced_span, untraced_span = received.wait_for(2)
    on = attributes(traced_span.attributes)
    assert "marker-on" in on["input.value"]
    assert on["input.mime_type"] == "application/json"
    # the stream is recorded as the message it carried, and its text
    answer = orjson.loads(on["output.value"])
    assert answer["role"] == "assistant"
    assert answer["content"][0]["text"].startswith("Hello from the cc-proxy stand-in model.")
    assert answer["stop_reason"] == "end_turn"
    assert on["output.mime_type"] == "application/json"
    assert on["llm.output_messages.0.message.role"] == "assistant"
    assert on["llm.output_messages.0.message.content"] == answer["content"][0]["text"]
    off = attributes(untraced_span.attributes)
    assert "input.value" not in off
    assert "output.value" not in off
    assert off["cc_proxy.output_tokens"] > 0
    assert "cc_proxy.ttft_ms" in off
    assert "marker-off" not in received.raw.decode("utf-8", "replace")


def test_span_records_invocation_parameters_tool_names_and_session_without_content(
    start_gateway: GatewayFactory,
    grpc_collector: tuple[str, Received],
    fast_export: None,
) -> None:
    endpoint, received = grpc_collector
    gateway = start_gateway(tracing={"otlp_endpoint": endpoint}, target={"temperature": 0.3})
    body = {
        **messages_body("secret-plan"),
        "top_k": 5,
        "metadata": {"user_id": "device-42"},
        "tools": [
            {"name": "Bash", "input_schema": {"type": "object"}},
            {"name": "Read", "input_schema": {"type": "object"}},
        ],
    }

    post_messages(gateway, body, headers={"X-Claude-Code-Session-Id": "session-7"})

    (span,) = received.wait_for(1)
    values = attributes(span.attributes)
    assert values["session.id"] == "session-7"
    # as the target got them: the [target] temperature was added; metadata is no parameter
    assert orjson.loads(values["llm.invocation_parameters"]) == {
        "max_tokens": 100,
        "stream": True,
        "top_k": 5,
        "temperature": 0.3,
    }
    assert [tool.string_value for tool in values["cc_proxy.tools"].values] == ["Bash", "Read"]
    assert not any(key.startswith(("llm.input_messages", "llm.tools.")) for key in values)
    raw = received.raw
    assert b"secret-plan" not in raw
    assert b"device-42" not in raw


def test_content_tracing_records_input_messages_tool_definitions_and_output_tool_calls(
    traced: tuple[RunningGateway, Received], target: ScriptedUpstream
) -> None:
    gateway, received = traced
    set_content_tracing(gateway, True)
    target.queue(Reply.sse(message_events(tool_call_message())))
    path, headers, body = load_fixture("tool_result")  # a real Claude Code turn
    request = orjson.loads(body)

    assert httpx.post(gateway.url + path, content=body, headers=headers, timeout=30).is_success

    (span,) = received.wait_for(1)
    values = attributes(span.attributes)
    assert values["session.id"] == headers["X-Claude-Code-Session-Id"]
    roles = [values[f"llm.input_messages.{i}.message.role"] for i in range(4)]
    assert roles == ["system", "user", "assistant", "user"]
    assert "Claude Agent SDK" in values["llm.input_messages.0.message.content"]
    # the assistant's earlier tool call, and the tool result that answers it
    (earlier,) = [b for b in request["messages"][1]["content"] if b["type"] == "tool_use"]
    call = "llm.input_messages.2.message.tool_calls.0.tool_call"
    assert values[f"{call}.function.name"] == earlier["name"]
    assert orjson.loads(values[f"{call}.function.arguments"]) == earlier["input"]
    assert values["llm.input_messages.3.message.content"] == "captured-tool-ok"
    tools = [orjson.loads(values[f"llm.tools.{i}.tool.json_schema"]) for i in range(24)]
    assert [tool["name"] for tool in tools] == [tool["name"] for tool in request["tools"]]
    # the answer's tool call
    answer = "llm.output_messages.0.message"
    assert values[f"{answer}.content"] == "Let me look."
    assert values[f"{answer}.tool_calls.0.tool_call.function.name"] == "Bash"
    assert orjson.loads(values[f"{answer}.tool_calls.0.tool_call.function.arguments"]) == {
        "command": "ls"
    }


def test_recorded_content_is_bounded(
    traced: tuple[RunningGateway, Received], target: ScriptedUpstream
) -> None:
    gateway, received = traced
    set_content_tracing(gateway, True)
    body = messages_body("x" * 100_000, stream=False)

    post_messages(gateway, body)

    (span,) = received.wait_for(1)
    recorded = attributes(span.attributes)["input.value"]
    assert len(recorded) < 33 * 1024
    # the request as the target got it, with its model rewritten
    assert recorded.endswith(f"({len(target.seen[0].body)} bytes in all)")


def test_compare_mode_shadow_span_is_a_child_with_the_same_request_id(
    start_gateway: GatewayFactory,
    grpc_collector: tuple[str, Received],
    fast_export: None,
    target: ScriptedUpstream,
) -> None:
    endpoint, received = grpc_collector
    gateway = start_gateway(default_mode="compare", tracing={"otlp_endpoint": endpoint})
    target.queue(Reply.sse(message_events(tool_call_message()), headers={"request-id": "req_t"}))

    response = post_messages(gateway, messages_body())
    assert wait_until(lambda: len(target.seen) == 1)

    spans = {attributes(span.attributes)["cc_proxy.role"]: span for span in received.wait_for(2)}
    primary, shadow = spans["primary"], spans["shadow"]
    request_id = response.headers[REQUEST_ID_HEADER]
    assert attributes(primary.attributes)["cc_proxy.request_id"] == request_id
    assert attributes(primary.attributes)["cc_proxy.upstream"] == "passthrough"
    assert attributes(primary.attributes)["llm.provider"] == "anthropic"
    assert primary.parent_span_id == b""
    assert attributes(shadow.attributes)["cc_proxy.request_id"] == request_id
    assert attributes(shadow.attributes)["cc_proxy.upstream"] == "target"
    assert attributes(shadow.attributes)["llm.model_name"] == "glm-5"
    assert shadow.trace_id == primary.trace_id
    assert shadow.parent_span_id == primary.span_id
    assert shadow.kind == Span.SPAN_KIND_CLIENT
    # the shadow's span says as much as a primary's: timing, tokens, the upstream's id
    values = attributes(shadow.attributes)
    assert values["openinference.span.kind"] == "LLM"
    assert values["llm.provider"] == "self-hosted"
    assert values["cc_proxy.upstream_request_id"] == "req_t"
    assert values["llm.token_count.completion"] == 56
    assert values["llm.token_count.prompt"] == 1234 + 20 + 100
    assert values["cc_proxy.stop_reason"] == "tool_use"
    assert 0 <= values["cc_proxy.ttft_ms"] <= values["cc_proxy.total_duration_ms"]
    assert orjson.loads(values["llm.invocation_parameters"]) == {"max_tokens": 100, "stream": True}


def test_spans_never_contain_api_keys(
    start_gateway: GatewayFactory,
    grpc_collector: tuple[str, Received],
    fast_export: None,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
) -> None:
    endpoint, received = grpc_collector
    # compare mode reaches both upstreams; content tracing records all it may
    gateway = start_gateway(
        default_mode="compare",
        target={"api_key": TARGET_KEY},
        passthrough={"api_key": PASSTHROUGH_KEY, "passthrough_auth": False},
        tracing={"otlp_endpoint": endpoint, "enabled": True},
    )

    post_messages(gateway, messages_body(), headers={"authorization": f"Bearer {CLIENT_KEY}"})

    received.wait_for(2)
    assert wait_until(lambda: len(target.seen) == 1)
    assert target.seen[0].headers["x-api-key"] == TARGET_KEY  # the keys were in play
    assert passthrough.seen[0].headers["x-api-key"] == PASSTHROUGH_KEY
    raw = received.raw
    assert b"input.value" in raw
    for secret in (CLIENT_KEY, TARGET_KEY, PASSTHROUGH_KEY):
        assert secret.encode() not in raw


def test_unreachable_collector_fails_no_request_and_is_reported_once(
    start_gateway: GatewayFactory,
    fast_export: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each export gives up after 2 s of retries (seconds, as this SDK reads it)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2")
    with socket.create_server(("127.0.0.1", 0)) as sock:
        closed_port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{closed_port}"
    gateway = start_gateway(tracing={"otlp_endpoint": endpoint})
    otel = gateway.gateway.otel
    assert otel is not None

    for turn in range(3):
        post_messages(gateway, messages_body(f"turn {turn}"))
    # the exporter has failed (and would have logged) more than once
    assert wait_until(lambda: otel.watch.suppressed >= 2, timeout=15)
    gateway.stop()

    warnings = [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING
        and (record.name.startswith("opentelemetry") or record.name == "cc_proxy.otel")
    ]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert endpoint in warnings[0].getMessage()
    assert gateway.stats["total_requests"] == 3


def test_spans_still_queued_are_flushed_at_shutdown(
    start_gateway: GatewayFactory,
    grpc_collector: tuple[str, Received],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # no batch leaves on its own
    endpoint, received = grpc_collector
    gateway = start_gateway(tracing={"otlp_endpoint": endpoint})
    response = post_messages(gateway, messages_body())

    gateway.stop()

    (span,) = received.wait_for(1)
    assert attributes(span.attributes)["cc_proxy.request_id"] == response.headers[REQUEST_ID_HEADER]


def test_http_endpoint_exports_over_otlp_http(
    start_gateway: GatewayFactory, http_collector: tuple[str, Received], fast_export: None
) -> None:
    endpoint, received = http_collector
    gateway = start_gateway(tracing={"otlp_endpoint": endpoint})

    response = post_messages(gateway, messages_body(stream=False))

    (span,) = received.wait_for(1)
    values = attributes(span.attributes)
    assert values["cc_proxy.request_id"] == response.headers[REQUEST_ID_HEADER]
    assert values["cc_proxy.stream"] is False
    assert values["cc_proxy.output_tokens"] > 0


@pytest.mark.parametrize(
    ("endpoint", "protocol", "sent_to"),
    [
        ("http://collector:4317", "grpc", "collector:4317"),
        ("http://collector:4318", "http", "http://collector:4318/v1/traces"),
        ("https://phoenix.example/v1/traces", "http", "https://phoenix.example/v1/traces"),
    ],
)
def test_exporter_protocol_follows_the_endpoint(endpoint: str, protocol: str, sent_to: str) -> None:
    from cc_proxy.otel import build_exporter

    exporter = build_exporter(endpoint)

    assert protocol in type(exporter).__module__
    assert exporter._endpoint == sent_to  # type: ignore[attr-defined]
    exporter.shutdown()


def observed(**fields: Any) -> Exchange:
    values: dict[str, Any] = {
        "id": "req-1",
        "role": Role.PRIMARY,
        "mode": Mode.COMPARE,
        "upstream": "passthrough",
        "method": "POST",
        "path": "/v1/messages",
        "query": "",
        "target": "/v1/messages",
        "is_messages": True,
        "outcome": Outcome.COMPLETE,
        "status": 200,
    }
    return Exchange(**{**values, **fields})


def test_shadow_starting_after_its_request_ended_is_a_root_span_with_the_request_id() -> None:
    from cc_proxy.otel import OtlpTracing

    exporter = InMemorySpanExporter()
    otel = OtlpTracing(TracingSettings(otlp_endpoint="http://127.0.0.1:9"), exporter=exporter)
    primary = observed()
    shadow = observed(role=Role.SHADOW, upstream="target")

    otel.on_start(primary)
    otel.on_end(primary)
    otel.on_start(shadow)
    otel.on_end(shadow)
    otel.shutdown()

    first, second = exporter.get_finished_spans()
    assert first.attributes is not None
    assert second.attributes is not None
    assert second.attributes["cc_proxy.role"] == "shadow"
    assert second.parent is None
    assert second.attributes["cc_proxy.request_id"] == first.attributes["cc_proxy.request_id"]


def test_a_streamed_answer_is_reassembled_into_the_message_it_carried() -> None:
    from cc_proxy.answers import reassemble_message

    message = tool_call_message()

    assert reassemble_message(b"".join(message_events(message))) == message


def test_no_secret_in_any_log_line_or_span_on_fault_paths(
    start_gateway: GatewayFactory,
    grpc_collector: tuple[str, Received],
    fast_export: None,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin_token = "admin-secret-0005"
    endpoint, received = grpc_collector
    caplog.set_level(logging.DEBUG)  # every logger, every level
    gateway = start_gateway(
        default_mode="compare",
        allow_anthropic_only=True,
        target={"api_key": TARGET_KEY, "timeout_secs": 0.5},
        passthrough={"api_key": PASSTHROUGH_KEY, "passthrough_auth": False},
        server={"admin_token": admin_token},
        tracing={"otlp_endpoint": endpoint, "enabled": True, "log_level": "debug"},
    )
    events = message_events(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [{"type": "text", "text": "partial answer"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 2},
        }
    )
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "later"}}
    target.queue(
        Reply.sse(events[:3], then="close"),  # compare mode's shadow breaks mid-stream
        Reply.hang(),  # times out
        Reply.json(error, status=429, headers={"retry-after": "3"}),
        Reply.sse(events[:3], then="hang"),  # stalls mid-stream
    )
    credentials = {"x-api-key": CLIENT_KEY, "authorization": f"Bearer {CLIENT_KEY}"}
    admin = {"authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        http.post("/v1/messages", content=orjson.dumps(messages_body()), headers=credentials)
        assert wait_until(lambda: gateway.stats["shadow"]["requests"] == 1)
        http.put("/api/mode", json={"mode": "target"}, headers=admin)
        for _ in range(3):
            http.post("/v1/messages", content=orjson.dumps(messages_body()), headers=credentials)
        http.post("/v1/messages/count_tokens", content=b"{}", headers=credentials)
        http.put("/api/mode", json={"mode": "compare"}, headers={"authorization": "Bearer no"})
        http.put("/api/mode", json={"mode": "anthropic-only"}, headers=admin)
        http.get("/v1/models", headers=credentials)
    assert gateway.stats["errors"] == 3
    received.wait_for(7)
    gateway.stop()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert "outcome=stream_broken" in logged  # the fault paths were logged
    assert "outcome=timeout" in logged
    raw = received.raw
    assert b"input.value" in raw
    for secret in (CLIENT_KEY, TARGET_KEY, PASSTHROUGH_KEY, admin_token):
        assert secret not in logged
        assert secret.encode() not in raw
