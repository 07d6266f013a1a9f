"""OpenTelemetry spans over OTLP: one span per exchange, seen by Arize Phoenix as an LLM call.

An observer like the others: it reads the finished `Exchange` and never touches the relay.
Spans are batched and exported from the SDK's background thread, so a slow or absent
collector costs a request nothing; an unreachable collector is reported once in the log.

Headers are never recorded, so API keys and bearer tokens cannot reach a span. Content
(request body, relayed answer) is recorded only for exchanges that started while content
tracing was on (`PUT /api/tracing`).

The standard `OTEL_*` variables still apply where cc-proxy passes no value, e.g.
`OTEL_EXPORTER_OTLP_TRACES_HEADERS` for a collector that wants a key, and
`OTEL_BSP_SCHEDULE_DELAY` for how often batches are sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from cc_proxy.answers import answer_message, message_text
from cc_proxy.config import TracingSettings, redact_url
from cc_proxy.exchange import AnswerCopy, Exchange, Observer, Role, shown

log = logging.getLogger("cc_proxy.otel")

# Each of the request body and the answer is recorded up to this size.
MAX_SPAN_CONTENT = 32 * 1024
# Input messages: the system prompt and the last this many turns, each up to this size.
# A long Claude Code session has hundreds of turns; the latest are the ones that matter.
MAX_SPAN_MESSAGES = 32
MAX_SPAN_MESSAGE = 8 * 1024
# Tool definitions recorded as OpenInference `llm.tools.*` (Claude Code offers ~25).
MAX_SPAN_TOOLS = 64
# The SDK keeps 128 attributes per span by default: too few for the messages and tools.
MAX_SPAN_ATTRIBUTES = 1024
# Request fields that are invocation parameters (OpenInference `llm.invocation_parameters`);
# `metadata` is left out: it carries a device and account id.
INVOCATION_PARAMETERS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "thinking",
    "tool_choice",
    "service_tier",
)
# A streamed answer is collected up to this size and put back together as one message:
# its SSE framing is many times the size of the text it carries.
MAX_COLLECTED_ANSWER = 256 * 1024
# At shutdown, queued spans get this long to reach the collector before the export is
# abandoned (an unreachable collector would otherwise hold the exit for its retries).
FLUSH_GRACE_SECS = 5.0
# Where the OTLP exporters log their retries and failures.
EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
)
# OTLP/HTTP's default port; 4317 is OTLP/gRPC's.
OTLP_HTTP_PORT = 4318
OTLP_HTTP_PATH = "/v1/traces"

# The upstream's name -> OpenInference `llm.provider`.
PROVIDERS = {"passthrough": "anthropic", "target": "self-hosted"}


def build_exporter(endpoint: str) -> SpanExporter:
    """OTLP/gRPC, unless the endpoint is OTLP/HTTP's: a `/v1/traces` path or port 4318."""
    # The exporter is imported only once chosen: gRPC alone takes a quarter second to load.
    url = urlsplit(endpoint)
    if url.path.endswith(OTLP_HTTP_PATH) or url.port == OTLP_HTTP_PORT:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HttpSpanExporter,
        )

        if not url.path.endswith(OTLP_HTTP_PATH):
            endpoint = endpoint.rstrip("/") + OTLP_HTTP_PATH
        return HttpSpanExporter(endpoint=endpoint)

    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as GrpcSpanExporter,
    )

    return GrpcSpanExporter(endpoint=endpoint, insecure=url.scheme == "http")


class CollectorWatch(logging.Filter):
    """Says once that the collector cannot be reached, instead of a line per retry.

    The OTLP exporters log every failed attempt (and retry up to six times per batch).
    As a filter on their loggers it swallows the warnings and errors logged while one of
    our exports runs, and logs a single warning of its own; after an export succeeds
    again it says so, and would warn again on the next failure.
    """

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.reported = False
        self.suppressed = 0  # exporter lines swallowed (the tests watch this)
        self._exporting: int | None = None  # the thread inside `export`, if any

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self._exporting or record.levelno < logging.WARNING:
            return True
        self.suppressed += 1
        self.report(record.getMessage())
        return False

    def report(self, reason: str) -> None:
        if not self.reported:
            self.reported = True
            log.warning(
                "cannot export spans to the OTLP collector at %s (%s); the gateway keeps "
                "serving and drops spans until the collector answers (said once)",
                self.endpoint,
                reason[:300],
            )

    def exporting(self) -> None:
        self._exporting = threading.get_ident()

    def exported(self, result: SpanExportResult) -> None:
        self._exporting = None
        if result is SpanExportResult.SUCCESS:
            if self.reported:
                self.reported = False
                log.info("the OTLP collector at %s accepts spans again", self.endpoint)
        else:
            self.report("export failed")


class WatchedExporter(SpanExporter):
    """Passes batches to the OTLP exporter and tells the `CollectorWatch` how it went."""

    def __init__(self, exporter: SpanExporter, watch: CollectorWatch) -> None:
        self._exporter = exporter
        self._watch = watch
        self._shut = False
        self._shutting = threading.Lock()  # the abandon timer and the SDK may race

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._watch.exporting()
        result = SpanExportResult.FAILURE
        try:
            result = self._exporter.export(spans)
        except Exception as exc:  # an exporter bug must not end the export thread
            self._watch.report(f"{type(exc).__name__}: {exc}")
        finally:
            self._watch.exported(result)
        return result

    def shutdown(self) -> None:
        """Idempotent: also called early, to abandon an export that is retrying."""
        with self._shutting:
            if self._shut:
                return
            self._shut = True
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


@dataclass(slots=True)
class _Open:
    span: Span
    answer: AnswerCopy | None = None  # the relayed answer, when content is traced


class OtlpTracing(Observer):
    """One span per exchange: a root span per request, its shadow copy as a child."""

    def __init__(
        self,
        settings: TracingSettings,
        *,
        exporter: SpanExporter | None = None,
        schedule_delay_millis: float | None = None,
    ) -> None:
        assert settings.otlp_endpoint is not None
        endpoint = settings.otlp_endpoint
        self.watch = CollectorWatch(redact_url(endpoint) or endpoint)
        self._exporter = WatchedExporter(exporter or build_exporter(endpoint), self.watch)
        for name in EXPORTER_LOGGERS:
            logging.getLogger(name).addFilter(self.watch)
        self._provider = TracerProvider(
            # Phoenix files the spans under a project of the service's name.
            resource=Resource.create(
                {
                    SERVICE_NAME: settings.service_name,
                    "openinference.project.name": settings.service_name,
                }
            ),
            shutdown_on_exit=False,  # `shutdown` is called by the gateway, bounded
            span_limits=SpanLimits(max_span_attributes=MAX_SPAN_ATTRIBUTES),
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(self._exporter, schedule_delay_millis=schedule_delay_millis)
        )
        self._tracer = self._provider.get_tracer("cc_proxy")
        # Exchange timestamps are `time.perf_counter()`; spans want epoch nanoseconds.
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
        self._open: dict[tuple[str, Role], _Open] = {}

    def _ns(self, perf: float) -> int:
        return int(perf * 1e9) + self._epoch_offset_ns

    def on_start(self, exchange: Exchange) -> None:
        parent = None
        kind = SpanKind.SERVER
        if exchange.role is Role.SHADOW:
            kind = SpanKind.CLIENT  # the gateway's own call, made on the client's behalf
            primary = self._open.get((exchange.id, Role.PRIMARY))
            # A shadow that starts after its request has ended becomes a root span of its
            # own, found by its cc_proxy.request_id.
            if primary is not None:
                parent = trace.set_span_in_context(primary.span)
        span = self._tracer.start_span(
            f"{exchange.method} {exchange.path}",
            context=parent,
            kind=kind,
            start_time=self._ns(exchange.started),
            attributes=_start_attributes(exchange),
        )
        self._open[exchange.id, exchange.role] = _Open(
            span, AnswerCopy(MAX_COLLECTED_ANSWER) if exchange.trace_content else None
        )

    def body_watcher(self, exchange: Exchange) -> Callable[[bytes], None] | None:
        opened = self._open.get((exchange.id, exchange.role))
        return None if opened is None or opened.answer is None else opened.answer.keep

    def on_end(self, exchange: Exchange) -> None:
        opened = self._open.pop((exchange.id, exchange.role), None)
        if opened is None:
            return
        span = opened.span
        span.set_attributes(_end_attributes(exchange))
        if exchange.trace_content:
            span.set_attributes(
                {
                    "input.value": shown(exchange.request_body, MAX_SPAN_CONTENT),
                    "input.mime_type": "application/json",
                }
            )
            if exchange.request is not None and exchange.is_messages:
                span.set_attributes(_input_attributes(exchange.request))
            if opened.answer is not None:
                span.set_attributes(_output_attributes(exchange, opened))
        error = exchange.error_kind
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, exchange.detail or error))
        finished = exchange.finished if exchange.finished is not None else time.perf_counter()
        span.end(end_time=self._ns(finished))

    def shutdown(self) -> None:
        """Flush the queued spans, for at most `FLUSH_GRACE_SECS`. Blocks: run it in a thread."""
        if self.watch.reported:
            self._exporter.shutdown()  # no collector to wait for: abandon at once
        abandon = threading.Timer(FLUSH_GRACE_SECS, self._exporter.shutdown)
        abandon.daemon = True
        abandon.start()
        try:
            self._provider.shutdown()
        finally:
            abandon.cancel()
            for name in EXPORTER_LOGGERS:
                logging.getLogger(name).removeFilter(self.watch)


def _start_attributes(exchange: Exchange) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "cc_proxy.request_id": exchange.id,
        "cc_proxy.role": exchange.role.value,
        "cc_proxy.mode": exchange.mode.value,
        "cc_proxy.upstream": exchange.upstream,
        "http.request.method": exchange.method,
        "url.path": exchange.path,
    }
    if exchange.is_messages:
        attributes["openinference.span.kind"] = "LLM"
        attributes["llm.provider"] = PROVIDERS.get(exchange.upstream, exchange.upstream)
        if exchange.upstream == "passthrough":
            attributes["llm.system"] = "anthropic"
    return attributes


def _end_attributes(exchange: Exchange) -> dict[str, Any]:
    usage = exchange.usage
    attributes: dict[str, Any] = {}
    if exchange.outcome is not None:
        attributes["cc_proxy.outcome"] = exchange.outcome.value
    if exchange.status is not None:
        attributes["http.response.status_code"] = exchange.status
    if exchange.ttft_ms is not None:
        attributes["cc_proxy.ttft_ms"] = exchange.ttft_ms
    if exchange.duration_ms is not None:
        attributes["cc_proxy.total_duration_ms"] = exchange.duration_ms
    if exchange.upstream_request_id:
        attributes["cc_proxy.upstream_request_id"] = exchange.upstream_request_id
    if exchange.error_kind is not None:
        attributes["error.type"] = exchange.error_kind
    if exchange.session_id is not None:
        attributes["session.id"] = exchange.session_id  # Phoenix groups a session's calls
    if not exchange.is_messages:
        return attributes
    if exchange.request is not None:
        attributes.update(_request_attributes(exchange.request))

    attributes["cc_proxy.stream"] = exchange.stream
    if exchange.model is not None:
        attributes["cc_proxy.model"] = exchange.model
        attributes["llm.model_name"] = exchange.model
        attributes["gen_ai.request.model"] = exchange.model
    if exchange.requested_model is not None:
        attributes["cc_proxy.requested_model"] = exchange.requested_model
    if usage.model is not None:
        attributes["gen_ai.response.model"] = usage.model
    if usage.stop_reason is not None:
        attributes["cc_proxy.stop_reason"] = usage.stop_reason
    # Anthropic's input_tokens leaves out the cached part of the prompt; OpenInference's
    # prompt count is the whole prompt, with the cached parts as details.
    prompt = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    attributes.update(
        {
            "cc_proxy.input_tokens": usage.input_tokens,
            "cc_proxy.output_tokens": usage.output_tokens,
            "cc_proxy.cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cc_proxy.cache_read_input_tokens": usage.cache_read_input_tokens,
            "cc_proxy.tool_calls": usage.tool_calls,
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "llm.token_count.prompt": prompt,
            "llm.token_count.completion": usage.output_tokens,
            "llm.token_count.total": prompt + usage.output_tokens,
            "llm.token_count.prompt_details.cache_read": usage.cache_read_input_tokens,
            "llm.token_count.prompt_details.cache_write": usage.cache_creation_input_tokens,
        }
    )
    return attributes


def _request_attributes(request: Mapping[str, Any]) -> dict[str, Any]:
    """What the request asked for, without its content: kept with content tracing off."""
    parameters = {key: request[key] for key in INVOCATION_PARAMETERS if key in request}
    attributes: dict[str, Any] = {"llm.invocation_parameters": orjson.dumps(parameters).decode()}
    names = [str(tool.get("name")) for tool in _tools(request)]
    if names:
        attributes["cc_proxy.tools"] = names
    return attributes


def _tools(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tools = request.get("tools")
    if not isinstance(tools, list):
        return []
    return [tool for tool in tools if isinstance(tool, Mapping)]


def _input_attributes(request: Mapping[str, Any]) -> dict[str, Any]:
    """OpenInference input messages and tool definitions (content: traced only when on)."""
    attributes: dict[str, Any] = {}
    for index, tool in enumerate(_tools(request)[:MAX_SPAN_TOOLS]):
        # Claude Code's longest tool definition is 21 KB: a message's bound would cut it.
        attributes[f"llm.tools.{index}.tool.json_schema"] = shown(
            orjson.dumps(tool), MAX_SPAN_CONTENT
        )
    turns: list[tuple[str, Any]] = []
    system = request.get("system")
    if system:
        turns.append(("system", system))
    messages = request.get("messages")
    if isinstance(messages, list):
        kept = messages[-MAX_SPAN_MESSAGES:]
        if len(kept) < len(messages):
            attributes["cc_proxy.input_messages_omitted"] = len(messages) - len(kept)
        turns.extend(
            (str(message.get("role")), message.get("content"))
            for message in kept
            if isinstance(message, Mapping)
        )
    for index, (role, content) in enumerate(turns):
        prefix = f"llm.input_messages.{index}.message"
        attributes[f"{prefix}.role"] = role
        attributes[f"{prefix}.content"] = shown(_content_text(content).encode(), MAX_SPAN_MESSAGE)
        calls = [block for block in _content_blocks(content) if block.get("type") == "tool_use"]
        attributes.update(_tool_call_attributes(prefix, calls))
    return attributes


def _content_blocks(content: Any) -> list[Mapping[str, Any]]:
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, Mapping)]


def _content_text(content: Any) -> str:
    """A turn's text as a person reads it: text blocks, and what tool results returned."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in _content_blocks(content):
        if isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_content_text(block.get("content")))
    return "\n".join(part for part in parts if part)


def _tool_call_attributes(prefix: str, calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for index, call in enumerate(calls):
        at = f"{prefix}.tool_calls.{index}.tool_call"
        attributes[f"{at}.function.name"] = str(call.get("name"))
        arguments = orjson.dumps(call.get("input"))
        attributes[f"{at}.function.arguments"] = shown(arguments, MAX_SPAN_MESSAGE)
        if isinstance(call.get("id"), str):
            attributes[f"{at}.id"] = call["id"]
    return attributes


def _output_attributes(exchange: Exchange, opened: _Open) -> dict[str, Any]:
    """The answer as Phoenix shows it best: the whole message as JSON, its text and its
    tool calls."""
    assert opened.answer is not None
    raw = bytes(opened.answer.data)
    message = answer_message(raw, stream=exchange.stream)
    if message is None:  # not a Messages answer (or cut short): recorded as it came
        return {
            "output.value": shown(raw, MAX_SPAN_CONTENT, opened.answer.size),
            "output.mime_type": "text/plain",
        }
    prefix = "llm.output_messages.0.message"
    content = _content_blocks(message.get("content"))
    calls = [block for block in content if block.get("type") == "tool_use"]
    return {
        "output.value": shown(orjson.dumps(message), MAX_SPAN_CONTENT),
        "output.mime_type": "application/json",
        f"{prefix}.role": str(message.get("role") or "assistant"),
        f"{prefix}.content": shown(message_text(message).encode(), MAX_SPAN_CONTENT),
        **_tool_call_attributes(prefix, calls),
    }
