"""Compare mode's shadow copy: the target-shaped request, sent fire-and-forget.

The shadow shares the target's `max_concurrent` slots but never waits for one: when the
target is saturated the copy is dropped and counted. Nothing on this path can delay or
fail the client's request: it runs in its own task and its answer goes nowhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import Scope

from cc_proxy.exchange import Exchange, Observers, Outcome, Role
from cc_proxy.relay import Sink, relay
from cc_proxy.shaping import TargetShaping
from cc_proxy.upstream import Upstream
from cc_proxy.upstream_http import UpstreamClient

log = logging.getLogger("cc_proxy.shadow")


class Shadow:
    def __init__(
        self,
        target: Upstream | None,
        shaping: TargetShaping,
        observers: Observers,
        client: Callable[[], UpstreamClient | None],
    ) -> None:
        self._target = target
        self._shaping = shaping
        self._observers = observers
        self._client = client
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, scope: Scope, primary: Exchange, body: Mapping[str, Any]) -> None:
        target = self._target
        client = self._client()
        if target is None or client is None:
            return
        shadow = Exchange(
            id=primary.id,
            role=Role.SHADOW,
            mode=primary.mode,
            upstream=target.name,
            method=primary.method,
            path=primary.path,
            query=primary.query,
            target=primary.target,
            is_messages=primary.is_messages,
            requested_model=primary.requested_model,
            model=self._shaping.model or primary.requested_model,
            stream=primary.stream,
            trace_content=primary.trace_content,
            request_body=primary.request_body,
            request=primary.request,
            session_id=primary.session_id,
        )
        # Started here, before the primary is relayed: observers see the shadow begin
        # while its primary is still open (the shadow's span is the primary's child, and
        # the compare record knows to wait for it).
        self._observers.on_start(shadow)
        limiter = target.limiter
        if limiter is not None and not limiter.try_acquire():
            shadow.outcome = Outcome.DROPPED
            shadow.detail = "target saturated (target.max_concurrent)"
            shadow.finished = shadow.started
            self._observers.on_end(shadow)
            return
        task = asyncio.create_task(self._run(client, target, scope["headers"], shadow, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        client: UpstreamClient,
        target: Upstream,
        client_headers: list[tuple[bytes, bytes]],
        shadow: Exchange,
        body: Mapping[str, Any],
    ) -> None:
        try:
            shaped = self._shaping.shaped(body, sampling=True)
            if shaped is not None:
                shadow.request = shaped
                shadow.request_body = shaped.encode()
            raw = shadow.request_body
            headers = self._shaping.shape_headers(
                target.request_headers(client_headers, identity=True)
            )
            watchers = self._observers.watchers(shadow)
            await relay(client, target, shadow, headers, raw, Sink(), self._observers, watchers)
        except asyncio.CancelledError:
            shadow.outcome = Outcome.CANCELLED
            shadow.detail = "cancelled at shutdown"
            raise
        except Exception:  # a shadow must never take anything else down with it
            log.exception("shadow request %s failed", shadow.id)
        finally:
            if target.limiter is not None:
                target.limiter.release()
            self._observers.on_end(shadow)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, grace_secs: float) -> None:
        """Let shadow copies finish for up to `grace_secs`, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_secs)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
