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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from cc_proxy.config import TracingSettings, redact_url
from cc_proxy.exchange import AnswerCopy, Exchange, Observer, Outcome, Role, shown

log = logging.getLogger("cc_proxy.otel")

# Each of the request body and the answer is recorded up to this size.
MAX_SPAN_CONTENT = 32 * 1024
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
            resource=Resource.create({SERVICE_NAME: settings.service_name}),
            shutdown_on_exit=False,  # `shutdown` is called by the gateway, bounded
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
            if opened.answer is not None:
                span.set_attributes(_output_attributes(exchange, opened))
        if exchange.failed:
            span.set_status(Status(StatusCode.ERROR, exchange.detail or _error_type(exchange)))
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
    if exchange.failed:
        attributes["error.type"] = _error_type(exchange)
    if not exchange.is_messages:
        return attributes

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


def _output_attributes(exchange: Exchange, opened: _Open) -> dict[str, Any]:
    """The answer as Phoenix shows it best: the whole message as JSON, and its text."""
    assert opened.answer is not None
    raw = bytes(opened.answer.data)
    message = reassemble_message(raw) if exchange.stream else _json_object(raw)
    if message is None:  # not a Messages answer (or cut short): recorded as it came
        return {
            "output.value": shown(raw, MAX_SPAN_CONTENT, opened.answer.size),
            "output.mime_type": "text/plain",
        }
    text = "".join(
        block["text"]
        for block in message.get("content") or ()
        if isinstance(block, dict) and isinstance(block.get("text"), str)
    )
    as_json = orjson.dumps(message)
    as_text = text.encode()
    return {
        "output.value": shown(as_json, MAX_SPAN_CONTENT),
        "output.mime_type": "application/json",
        "llm.output_messages.0.message.role": str(message.get("role") or "assistant"),
        "llm.output_messages.0.message.content": shown(as_text, MAX_SPAN_CONTENT),
    }


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def reassemble_message(sse: bytes) -> dict[str, Any] | None:
    """The Messages answer an SSE stream carried, as the non-streaming API would give it.

    None when the stream has no `message_start`. Only for traced content: this decodes
    every event, which the relay itself never does.
    """
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    tool_inputs: dict[int, list[str]] = {}
    for event in sse.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"".join(
            line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
        payload = _json_object(data) if data else None
        if payload is None:
            continue
        kind = payload.get("type")
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            message = dict(payload["message"])
        elif kind == "content_block_start" and isinstance(payload.get("content_block"), dict):
            blocks[_index(payload)] = dict(payload["content_block"])
        elif kind == "content_block_delta" and isinstance(payload.get("delta"), dict):
            block = blocks.setdefault(_index(payload), {})
            delta = payload["delta"]
            for key in ("text", "thinking", "signature"):
                if isinstance(delta.get(key), str):
                    block[key] = str(block.get(key, "")) + delta[key]
            if isinstance(delta.get("partial_json"), str):
                tool_inputs.setdefault(_index(payload), []).append(delta["partial_json"])
        elif kind == "message_delta" and message is not None:
            if isinstance(payload.get("delta"), dict):
                message.update(payload["delta"])
            usage = message.get("usage")
            if isinstance(payload.get("usage"), dict):
                message["usage"] = {
                    **(usage if isinstance(usage, dict) else {}),
                    **payload["usage"],
                }
    if message is None:
        return None
    for index, parts in tool_inputs.items():
        try:
            blocks[index]["input"] = orjson.loads("".join(parts) or "{}")
        except orjson.JSONDecodeError:
            blocks[index]["input"] = "".join(parts)
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return message


def _index(payload: dict[str, Any]) -> int:
    index = payload.get("index")
    return index if isinstance(index, int) else 0


def _error_type(exchange: Exchange) -> str:
    """The Anthropic error type when the answer gave one, else how the exchange failed."""
    if exchange.usage.error_type:
        return exchange.usage.error_type
    if exchange.outcome is not None and exchange.outcome is not Outcome.COMPLETE:
        return exchange.outcome.value
    return str(exchange.status)
