"""The gateway's own endpoints: `/health`, `/api/stats`, `/api/mode`, `/api/tracing`,
the compare records (`/api/compare`, `/api/compare/{id}`, `/api/compare/report`);
`/metrics`, `/api/recent`, `/api/series` and the `/ui` dashboard.

Changes (`PUT`) need `Authorization: Bearer <admin token>` when CC_SERVER__ADMIN_TOKEN is
set; reading stays open. Every error is Anthropic-shaped, like the proxied paths'.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from cc_proxy.activity import RECENT_SIZE
from cc_proxy.config import redact_url
from cc_proxy.dashboard import ui_routes
from cc_proxy.errors import ErrorType, error_body
from cc_proxy.modes import Mode, ModeRefused
from cc_proxy.records import MAX_PAGE, BadCursor
from cc_proxy.report import parse_since, report_of

if TYPE_CHECKING:
    from cc_proxy.app import Gateway

_ERROR_TYPES = {
    400: ErrorType.INVALID_REQUEST,
    401: ErrorType.AUTHENTICATION,
    403: ErrorType.PERMISSION,
    404: ErrorType.NOT_FOUND,
    405: ErrorType.INVALID_REQUEST,
    408: ErrorType.TIMEOUT,
    409: ErrorType.INVALID_REQUEST,
    413: ErrorType.REQUEST_TOO_LARGE,
}
ChangeT = TypeVar("ChangeT", bound=BaseModel)
# Admin bodies are a few bytes; nothing larger is read.
MAX_ADMIN_BODY = 4096
DEFAULT_PAGE = 50
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class BadQuery(ValueError):
    """A query parameter the endpoint cannot use; its message names it."""


def _limit(text: str | None, most: int = MAX_PAGE, default: int = DEFAULT_PAGE) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise BadQuery(f"limit must be a whole number from 1 to {most}, not {text!r}")
    return int(text)


def _flag(name: str, text: str | None) -> bool:
    if text is None:
        return False
    if text.lower() not in _BOOLEANS:
        raise BadQuery(f"{name} must be true or false, not {text!r}")
    return _BOOLEANS[text.lower()]


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, message: str) -> Response:
    kind = _ERROR_TYPES.get(status, ErrorType.API)
    return Response(error_body(kind, message), status, media_type="application/json")


class ModeChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Mode


class TracingChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: StrictBool


def build_admin(gateway: Gateway) -> Starlette:
    settings = gateway.settings
    token = settings.server.admin_token

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        return hmac.compare_digest(given.encode(), expected.encode())

    async def read_change(request: Request, model: type[ChangeT]) -> ChangeT | Response:
        if not authorized(request):
            return error_response(
                401, "this endpoint needs Authorization: Bearer <CC_SERVER__ADMIN_TOKEN>"
            )
        raw = b""
        timeout = settings.server.client_timeout_secs
        try:
            async with asyncio.timeout(timeout):  # a body that never comes, too
                async for chunk in request.stream():
                    raw += chunk
                    if len(raw) > MAX_ADMIN_BODY:
                        return error_response(413, f"body over {MAX_ADMIN_BODY} bytes")
        except TimeoutError:
            return error_response(
                408, f"the body did not arrive within {timeout:g}s (server.client_timeout_secs)"
            )
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            return error_response(400, f"invalid body: {problems}")

    async def health(request: Request) -> Response:
        target = gateway.upstreams.get("target")
        passthrough = gateway.upstreams["passthrough"]
        return JSONResponse(
            {
                "status": "ok",
                "mode": gateway.modes.current.value,
                "workers": settings.server.workers,
                "worker": gateway.worker,
                "allow_anthropic_only": settings.allow_anthropic_only,
                "target": {
                    "url": redact_url(target.url if target else None),
                    "model": settings.target.model,
                    "timeout_secs": settings.target.timeout_secs,
                    "max_concurrent": settings.target.max_concurrent,
                    "in_flight": target.limiter.in_flight if target and target.limiter else 0,
                },
                "passthrough": {
                    "url": redact_url(passthrough.url),
                    "timeout_secs": settings.passthrough.timeout_secs,
                    "passthrough_auth": settings.passthrough.passthrough_auth,
                },
                "tracing": {
                    "enabled": gateway.tracing.enabled,
                    "otlp": settings.tracing.otlp_endpoint is not None,
                },
            }
        )

    async def stats(request: Request) -> Response:
        return JSONResponse(gateway.stats.snapshot())

    async def mode(request: Request) -> Response:
        if request.method == "PUT":
            change = await read_change(request, ModeChange)
            if isinstance(change, Response):
                return change
            try:
                gateway.modes.switch(change.mode)
            except ModeRefused as refused:
                return error_response(refused.status, str(refused))
            gateway.log_mode_switch(change.mode)
        return JSONResponse({"mode": gateway.modes.current.value})

    async def tracing(request: Request) -> Response:
        if request.method == "PUT":
            change = await read_change(request, TracingChange)
            if isinstance(change, Response):
                return change
            gateway.tracing.enabled = change.enabled
        return JSONResponse({"enabled": gateway.tracing.enabled})

    store = gateway.records.store

    async def compare_list(request: Request) -> Response:
        query = request.query_params
        try:
            page = await asyncio.to_thread(
                store.page,
                session=query.get("session"),
                model=query.get("model"),
                only_disagreements=_flag("disagreements", query.get("disagreements")),
                limit=_limit(query.get("limit")),
                cursor=query.get("cursor"),
            )
        except (BadQuery, BadCursor) as exc:
            return error_response(400, str(exc))
        return JSONResponse({"records": page.records, "next_cursor": page.next_cursor})

    async def compare_record(request: Request) -> Response:
        record_id = request.path_params["record_id"]
        record = await asyncio.to_thread(store.get, record_id)
        if record is None:
            return error_response(404, f"no compare record with id {record_id!r}")
        return JSONResponse(record)

    async def compare_report(request: Request) -> Response:
        text = request.query_params.get("since")
        try:
            since = None if text is None else parse_since(text)
        except ValueError as exc:
            return error_response(400, str(exc))
        return JSONResponse(await asyncio.to_thread(report_of, store, since))

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def recent(request: Request) -> Response:
        try:
            limit = _limit(request.query_params.get("limit"), RECENT_SIZE, RECENT_SIZE)
        except BadQuery as exc:
            return error_response(400, str(exc))
        return JSONResponse({"exchanges": gateway.activity.recent(limit)})

    async def series(request: Request) -> Response:
        return JSONResponse(gateway.activity.series())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        messages = {404: f"no such endpoint: {request.url.path}", 405: "method not allowed"}
        response = error_response(exc.status_code, messages.get(exc.status_code, exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: http_error
    }
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/api/stats", stats, methods=["GET"]),
            Route("/api/mode", mode, methods=["GET", "PUT"]),
            Route("/api/tracing", tracing, methods=["GET", "PUT"]),
            Route("/api/compare", compare_list, methods=["GET"]),
            Route("/api/compare/report", compare_report, methods=["GET"]),
            Route("/api/compare/{record_id}", compare_record, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/recent", recent, methods=["GET"]),
            Route("/api/series", series, methods=["GET"]),
            *ui_routes(),
        ],
        exception_handlers=handlers,
    )
