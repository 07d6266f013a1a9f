"""Log observers: one access line per exchange, and per-request content when tracing is on.

Headers are never logged, so API keys and bearer tokens cannot reach a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cc_proxy.exchange import AnswerCopy, Exchange, Observer, shown

access_log = logging.getLogger("cc_proxy.access")
trace_log = logging.getLogger("cc_proxy.trace")

# Content logging keeps this much of each request and answer.
MAX_LOGGED_CONTENT = 64 * 1024


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class AccessLog(Observer):
    """`id=… role=… mode=… upstream=… POST /v1/messages status=… ttft_ms=… …`."""

    def on_end(self, exchange: Exchange) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        usage = exchange.usage
        target = exchange.path + (f"?{exchange.query}" if exchange.query else "")
        line = (
            f"id={exchange.id} role={exchange.role} mode={exchange.mode} "
            f"upstream={exchange.upstream} {exchange.method} {target} "
            f"status={exchange.status or '-'} outcome={exchange.outcome} "
            f"ttft_ms={_ms(exchange.ttft_ms)} duration_ms={_ms(exchange.duration_ms)}"
        )
        if exchange.is_messages:
            line += (
                f" model={exchange.model or '-'} stream={str(exchange.stream).lower()}"
                f" input_tokens={usage.input_tokens} output_tokens={usage.output_tokens}"
                f" cache_read_tokens={usage.cache_read_input_tokens}"
                f" tool_calls={usage.tool_calls} stop_reason={usage.stop_reason or '-'}"
            )
        if usage.error_type:
            line += f" error_type={usage.error_type}"
        if exchange.detail:
            line += f' detail="{exchange.detail}"'
        level = logging.WARNING if exchange.failed and exchange.role == "primary" else logging.INFO
        access_log.log(level, line)


class ContentLog(Observer):
    """Request and answer content of exchanges that started while tracing was on."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], AnswerCopy] = {}

    def on_start(self, exchange: Exchange) -> None:
        if exchange.trace_content:
            self._answers[exchange.id, exchange.role] = AnswerCopy(MAX_LOGGED_CONTENT)

    def body_watcher(self, exchange: Exchange) -> Callable[[bytes], None] | None:
        answer = self._answers.get((exchange.id, exchange.role))
        return None if answer is None else answer.keep

    def on_end(self, exchange: Exchange) -> None:
        answer = self._answers.pop((exchange.id, exchange.role), None)
        if answer is None:
            return
        trace_log.info(
            "id=%s role=%s request=%s",
            exchange.id,
            exchange.role,
            shown(exchange.request_body, MAX_LOGGED_CONTENT),
        )
        answer_text = shown(answer.data, MAX_LOGGED_CONTENT, answer.size)
        trace_log.info("id=%s role=%s answer=%s", exchange.id, exchange.role, answer_text)
