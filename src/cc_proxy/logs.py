"""Log observers: one access line per exchange, and per-request content when tracing is on.

Headers are never logged, so API keys and bearer tokens cannot reach a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable

from cc_proxy.exchange import AnswerCopy, Exchange, Observer, shown

# How cc-proxy's own logging setup prints a record (`server.configure_logging`).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

access_log = logging.getLogger("cc_proxy.access")
trace_log = logging.getLogger("cc_proxy.trace")

# Content logging keeps this much of each request and answer.
MAX_LOGGED_CONTENT = 64 * 1024


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# Access lines are held at most this long, or until this many are held, and then written
# in one go (as nginx's `access_log ... buffer= flush=`): a write of its own for every
# exchange, or every turn of the event loop, was a system call on each one's path.
FLUSH_SECS = 0.05
MAX_HELD_LINES = 256


class StderrLines:
    """Access lines printed to stderr as the handler of `server.configure_logging` prints a
    record, LOG_FORMAT and all, without the logging machinery: making, filtering and
    formatting a record cost 40 µs of a 5 KB request's 450 in the gateway under load,
    this 9. Lines are held for up to FLUSH_SECS and written together."""

    __slots__ = ("_pending", "_second", "_stamp", "_timer")

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""
        self._timer: asyncio.TimerHandle | None = None

    def print(self, level: int, line: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # `logging.Formatter.formatTime`, made once a second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        millis = int((now - second) * 1000)
        name = logging.getLevelName(level)
        text = f"{self._stamp},{millis:03d} {name} {access_log.name} {line}\n"
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECS, self.flush)
            except RuntimeError:  # no loop to come back: out now
                self._write(text)
                return
        self._pending.append(text)
        if len(self._pending) >= MAX_HELD_LINES:
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._write(text)

    @staticmethod
    def _write(text: str) -> None:
        # As a logging handler does, a stderr that cannot be written breaks nothing else.
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(text)
            sys.stderr.flush()


# Set by `server.configure_logging`, which knows that stderr is where records go and how.
stderr_lines: StderrLines | None = None


class AccessLog(Observer):
    """`id=… role=… mode=… upstream=… POST /v1/messages status=… ttft_ms=… …`, through
    `logging`, or printed straight to stderr where cc-proxy set logging up itself."""

    def on_end(self, exchange: Exchange) -> None:
        level = logging.WARNING if exchange.failed and exchange.role == "primary" else logging.INFO
        if not access_log.isEnabledFor(level):
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
        if stderr_lines is not None:
            stderr_lines.print(level, line)
        else:
            access_log.log(level, line)


class ContentLog(Observer):
    """Request and answer content of exchanges that started while tracing was on."""

    only_traced = True

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
