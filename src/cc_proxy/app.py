"""Assembly: builds the gateway from its settings and serves it as one ASGI app.

`/health`, `/metrics`, `/api/*` and `/ui` are the gateway's own (Starlette); every other
path is proxied.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

import aiohttp
from starlette.types import Message, Receive, Scope, Send

from cc_proxy.activity import Activity
from cc_proxy.admin import build_admin
from cc_proxy.config import Settings
from cc_proxy.exchange import Observers
from cc_proxy.logs import AccessLog, ContentLog
from cc_proxy.metrics import Metrics
from cc_proxy.modes import Mode, ModeSwitch
from cc_proxy.proxy import REQUEST_ID_HEADER, ContentTracing, Proxy
from cc_proxy.records import CompareRecorder
from cc_proxy.shadow import Shadow
from cc_proxy.shaping import PassthroughShaping, TargetShaping
from cc_proxy.shared import SharedState
from cc_proxy.stats import Stats
from cc_proxy.thinking import TargetThinking, ThinkingSignatures
from cc_proxy.upstream import Limiter, Upstream
from cc_proxy.upstream_http import UpstreamClient

if TYPE_CHECKING:
    from cc_proxy.otel import OtlpTracing

log = logging.getLogger("cc_proxy")
# Paths the gateway answers itself; everything else is proxied.
OWN_PATHS = frozenset({"/health", "/metrics", "/ui"})
OWN_PREFIXES = ("/api/", "/ui/")


def _with_request_id(send: Send) -> Send:
    """The gateway's own answers carry a correlation id too (SPEC.md §3)."""
    request_id = uuid.uuid4().hex.encode()

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
        await send(message)

    return send_with_id


def _timeout(secs: float) -> aiohttp.ClientTimeout:
    # No total: a Claude Code stream may rightly last many minutes. `timeout_secs` bounds
    # the connect, the wait for the answer's headers and every silence within the body.
    return aiohttp.ClientTimeout(total=None, sock_connect=secs, sock_read=secs)


def build_upstreams(settings: Settings) -> dict[str, Upstream]:
    passthrough = settings.passthrough
    passthrough_key = passthrough.api_key.get_secret_value() if passthrough.api_key else None
    upstreams = {
        "passthrough": Upstream(
            name="passthrough",
            url=passthrough.url,
            timeout=_timeout(passthrough.timeout_secs),
            forwards_client_credentials=passthrough.passthrough_auth,
            credentials=[("x-api-key", passthrough_key)] if passthrough_key else [],
        )
    }
    target = settings.target
    if target.url is not None:
        key = target.api_key.get_secret_value() if target.api_key else None
        upstreams["target"] = Upstream(
            name="target",
            url=target.url,
            timeout=_timeout(target.timeout_secs),
            # The client's Anthropic credentials never reach the target (SPEC.md §3).
            forwards_client_credentials=False,
            # vLLM and SGLang check `Authorization: Bearer`; Anthropic-style servers
            # check `x-api-key`. The target's own key goes in both.
            credentials=[("x-api-key", key), ("authorization", f"Bearer {key}")] if key else [],
            # Each worker keeps its share, so that all of them together stay within it.
            limiter=Limiter(
                max(1, target.max_concurrent // settings.server.workers), target.queue_wait_secs
            ),
        )
    return upstreams


class Gateway:
    def __init__(
        self, settings: Settings, shared: SharedState | None = None, worker: int = 0
    ) -> None:
        """`shared` holds the mode, tracing switch and counters of all workers (see
        `cc_proxy.workers`); without it they are this process's own."""
        self.settings = settings
        self.worker = worker
        self.modes = ModeSwitch(
            settings.default_mode,
            allow_anthropic_only=settings.allow_anthropic_only,
            has_target=settings.target.url is not None,
            cell=shared.mode() if shared else None,
        )
        self.upstreams = build_upstreams(settings)
        self.tracing = ContentTracing(
            settings.tracing.enabled, shared.tracing() if shared else None
        )
        self.stats = Stats(shared.counters(worker) if shared else None)
        self.records = CompareRecorder(settings.compare)
        self.observers = Observers([self.stats, AccessLog(), ContentLog(), self.records])
        self.metrics = Metrics(
            self.upstreams,
            self.modes,
            [settings.target.model],
            shared_dir=shared.metrics_dir if shared else None,
        )
        self.observers.add(self.metrics)
        self.activity = Activity(self.upstreams)
        self.observers.add(self.activity)
        self.otel: OtlpTracing | None = None
        if settings.tracing.otlp_endpoint is not None:
            # imported here: the OpenTelemetry SDK and gRPC load only when they are used
            from cc_proxy.otel import OtlpTracing  # noqa: PLC0415

            self.otel = OtlpTracing(settings.tracing)
            self.observers.add(self.otel)
        signatures = ThinkingSignatures(settings.target.thinking_signatures)
        self.observers.add(TargetThinking(signatures))
        shaping = TargetShaping.from_settings(settings.target, signatures)
        self.shadow = Shadow(
            self.upstreams.get("target"), shaping, self.observers, lambda: self.proxy.client
        )
        self.proxy = Proxy(
            upstreams=self.upstreams,
            modes=self.modes,
            shaping=shaping,
            passthrough_shaping=PassthroughShaping(signatures),
            observers=self.observers,
            shadow=self.shadow,
            tracing=self.tracing,
            max_body_bytes=settings.server.max_body_bytes,
            client_timeout=settings.server.client_timeout_secs,
        )
        self.admin = build_admin(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path in OWN_PATHS or path.startswith(OWN_PREFIXES):
                await self.admin(scope, receive, _with_request_id(send))
            else:
                await self.proxy(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        self.proxy.client = UpstreamClient()

    async def shutdown(self) -> None:
        await self.shadow.drain(self.settings.server.shutdown_grace_secs)
        if self.proxy.client is not None:
            await self.proxy.client.close()
        # Every shadow has ended: the last compare records are whole and get written.
        await asyncio.to_thread(self.records.close)
        if self.otel is not None:
            # Flushing the last spans may wait on the collector: not on the event loop.
            await asyncio.to_thread(self.otel.shutdown)

    def log_mode_switch(self, mode: Mode) -> None:
        log.info("mode switched to %s; requests that start from now on use it", mode.value)
