"""SPEC.md §4: logs never contain API keys or bearer tokens, at any level."""

from __future__ import annotations

import logging

import httpx
import pytest

from conftest import CLIENT_KEY, PASSTHROUGH_KEY, TARGET_KEY, GatewayFactory
from harness import Reply, ScriptedUpstream, load_fixture, wait_until

ADMIN_TOKEN = "admin-secret-0004"
SECRETS = (CLIENT_KEY, TARGET_KEY, PASSTHROUGH_KEY, ADMIN_TOKEN)


def test_no_secret_reaches_any_log_line_in_any_mode(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = start_gateway(
        allow_anthropic_only=True,
        target={"api_key": TARGET_KEY},
        passthrough={"api_key": PASSTHROUGH_KEY, "passthrough_auth": False},
        server={"admin_token": ADMIN_TOKEN},
        tracing={"enabled": True, "log_level": "debug"},
    )
    path, headers, body = load_fixture("authtok")
    headers = {**headers, "Authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY}
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    target.queue(Reply.json({"type": "error", "error": {"type": "api_error"}}, status=500))
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for mode in ("target", "compare", "anthropic-only"):
            http.put("/api/mode", json={"mode": mode}, headers=admin)
            http.post(path, content=body, headers=headers)
            http.post("/v1/messages/count_tokens", content=body, headers=headers)
            http.get("/v1/models", headers=headers)
        http.put("/api/mode", json={"mode": "target"}, headers={"authorization": "Bearer wrong"})
    assert wait_until(lambda: gateway.stats["shadow"]["requests"] == 1)
    gateway.stop()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert "role=shadow" in logged  # the capture did see the gateway's lines
    assert "cc_proxy.trace" in {r.name for r in caplog.records}
    for secret in SECRETS:
        assert secret not in logged
