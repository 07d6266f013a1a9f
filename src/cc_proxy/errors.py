"""Errors the gateway answers itself, in the Anthropic shape so that Claude Code shows
and retries them like the API's own (SPEC.md §4)."""

from __future__ import annotations

from enum import StrEnum

import orjson


class ErrorType(StrEnum):
    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    PERMISSION = "permission_error"
    NOT_FOUND = "not_found_error"
    REQUEST_TOO_LARGE = "request_too_large"
    API = "api_error"
    TIMEOUT = "timeout_error"
    OVERLOADED = "overloaded_error"


def error_body(kind: ErrorType, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind.value, "message": message}})


def sse_error_event(kind: ErrorType, message: str) -> bytes:
    return b"event: error\ndata: " + error_body(kind, message) + b"\n\n"


class GatewayError(Exception):
    """Raised on the request path; answered as `status` with an Anthropic error body."""

    def __init__(self, status: int, kind: ErrorType, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    @property
    def body(self) -> bytes:
        return error_body(self.kind, self.message)
