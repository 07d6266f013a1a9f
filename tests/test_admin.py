"""SPEC.md §1 mode gating and runtime switching, §4 admin token, §5 health and tracing."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import orjson
import pytest

from cc_proxy.standin import answer, message_events
from conftest import CLIENT_KEY, TARGET_KEY, GatewayFactory
from harness import Reply, RunningGateway, ScriptedUpstream, wait_until

ADMIN_TOKEN = "admin-secret-0004"
ASK: dict[str, Any] = {
    "model": "claude-test-model",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "which mode?"}],
}


def put(gateway: RunningGateway, path: str, body: Any, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    with httpx.Client() as http:
        return http.put(gateway.url + path, content=content, headers=headers)


def get(gateway: RunningGateway, path: str) -> httpx.Response:
    with httpx.Client() as http:
        return http.get(gateway.url + path)


def assert_anthropic_error(resp: httpx.Response, status: int, kind: str) -> str:
    assert resp.status_code == status
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    message: str = body["error"]["message"]
    assert message
    return message


def ask(gateway: RunningGateway) -> httpx.Response:
    with httpx.Client() as http:
        return http.post(gateway.url + "/v1/messages", json=ASK, headers={"x-api-key": CLIENT_KEY})


class TestModeSwitch:
    def test_the_default_mode_is_target(self, gateway: RunningGateway) -> None:
        assert get(gateway, "/api/mode").json() == {"mode": "target"}

    def test_a_switch_applies_to_the_requests_that_follow(
        self, gateway: RunningGateway, target: ScriptedUpstream, passthrough: ScriptedUpstream
    ) -> None:
        ask(gateway)
        assert put(gateway, "/api/mode", {"mode": "compare"}).json() == {"mode": "compare"}
        assert get(gateway, "/api/mode").json() == {"mode": "compare"}
        ask(gateway)
        assert len(passthrough.seen) == 1
        assert wait_until(lambda: len(target.seen) == 2)  # the first, and the shadow

    def test_anthropic_only_is_refused_without_the_launch_flag(
        self, gateway: RunningGateway, passthrough: ScriptedUpstream
    ) -> None:
        resp = put(gateway, "/api/mode", {"mode": "anthropic-only"})
        assert "--allow-anthropic-only" in assert_anthropic_error(resp, 403, "permission_error")
        assert get(gateway, "/api/mode").json() == {"mode": "target"}
        ask(gateway)
        assert passthrough.seen == []

    def test_anthropic_only_is_allowed_with_the_launch_flag(
        self,
        start_gateway: GatewayFactory,
        target: ScriptedUpstream,
        passthrough: ScriptedUpstream,
    ) -> None:
        gateway = start_gateway(allow_anthropic_only=True)
        assert put(gateway, "/api/mode", {"mode": "anthropic-only"}).status_code == 200
        ask(gateway)
        with httpx.Client() as http:
            http.get(gateway.url + "/v1/models")
        assert [s.path for s in passthrough.seen] == ["/v1/messages", "/v1/models"]
        assert target.seen == []

    def test_a_mode_needing_the_target_is_refused_without_a_target_url(
        self, loop_thread: Any, passthrough: ScriptedUpstream
    ) -> None:
        from harness import settings_for

        gateway = RunningGateway(
            settings_for(
                None, passthrough, default_mode="anthropic-only", allow_anthropic_only=True
            )
        )
        try:
            resp = put(gateway, "/api/mode", {"mode": "target"})
            assert "--target-url" in assert_anthropic_error(resp, 409, "invalid_request_error")
        finally:
            gateway.stop()

    @pytest.mark.parametrize(
        ("body", "problem"),
        [
            ({"mode": "turbo"}, "mode"),
            ({"mode": 3}, "mode"),
            ({"mode": "compare", "extra": 1}, "extra"),
            ({}, "mode"),
            (b"not json", "body"),
            ([], "body"),
        ],
    )
    def test_a_bad_mode_change_is_refused_naming_the_problem(
        self, gateway: RunningGateway, body: Any, problem: str
    ) -> None:
        message = assert_anthropic_error(
            put(gateway, "/api/mode", body), 400, "invalid_request_error"
        )
        assert problem in message
        assert get(gateway, "/api/mode").json() == {"mode": "target"}

    def test_a_stream_in_flight_finishes_on_the_upstream_it_started_on(
        self, gateway: RunningGateway, target: ScriptedUpstream, passthrough: ScriptedUpstream
    ) -> None:
        events = message_events(answer(ASK))
        target.queue(Reply.sse(events, delay=0.02))
        received: list[bytes] = []

        def stream() -> None:
            with (
                httpx.Client(timeout=30) as http,
                http.stream(
                    "POST", gateway.url + "/v1/messages", json={**ASK, "stream": True}
                ) as r,
            ):
                received.extend(r.iter_raw())

        reader = threading.Thread(target=stream)
        reader.start()
        assert wait_until(lambda: len(target.seen) == 1)
        put(gateway, "/api/mode", {"mode": "compare"})
        ask(gateway)  # starts after the switch
        reader.join(30)
        assert b"".join(received) == b"".join(events)
        assert [s.path for s in passthrough.seen] == ["/v1/messages"]
        assert gateway.stats["requests_by_mode"] == {"target": 1, "compare": 1}


class TestAdminToken:
    @pytest.fixture
    def guarded(self, start_gateway: GatewayFactory) -> RunningGateway:
        return start_gateway(server={"admin_token": ADMIN_TOKEN})

    @pytest.mark.parametrize("path", ["/api/mode", "/api/tracing"])
    @pytest.mark.parametrize("token", [None, "wrong", ADMIN_TOKEN + "x"])
    def test_changes_without_the_right_token_are_refused(
        self, guarded: RunningGateway, path: str, token: str | None
    ) -> None:
        body = {"mode": "compare"} if path == "/api/mode" else {"enabled": True}
        resp = put(guarded, path, body, token)
        assert_anthropic_error(resp, 401, "authentication_error")
        assert get(guarded, "/api/mode").json() == {"mode": "target"}
        assert get(guarded, "/api/tracing").json() == {"enabled": False}

    def test_changes_with_the_token_are_accepted(self, guarded: RunningGateway) -> None:
        assert put(guarded, "/api/mode", {"mode": "compare"}, ADMIN_TOKEN).status_code == 200
        assert put(guarded, "/api/tracing", {"enabled": True}, ADMIN_TOKEN).status_code == 200
        assert get(guarded, "/api/mode").json() == {"mode": "compare"}

    @pytest.mark.parametrize("path", ["/health", "/api/stats", "/api/mode", "/api/tracing"])
    def test_reading_needs_no_token(self, guarded: RunningGateway, path: str) -> None:
        assert get(guarded, path).status_code == 200


class TestAdminErrors:
    def test_unknown_method_on_an_admin_path_is_405_in_the_anthropic_shape(
        self, gateway: RunningGateway
    ) -> None:
        with httpx.Client() as http:
            resp = http.post(gateway.url + "/api/mode", json={"mode": "compare"})
        assert_anthropic_error(resp, 405, "invalid_request_error")

    def test_unknown_admin_path_is_404_in_the_anthropic_shape(
        self, gateway: RunningGateway, target: ScriptedUpstream
    ) -> None:
        assert_anthropic_error(get(gateway, "/api/nothing"), 404, "not_found_error")
        assert target.seen == []


class TestHealth:
    def test_health_reports_mode_and_upstreams_without_secrets(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway(target={"api_key": TARGET_KEY}, server={"admin_token": ADMIN_TOKEN})
        resp = get(gateway, "/health")
        health = resp.json()
        assert health["status"] == "ok"
        assert health["mode"] == "target"
        assert health["target"]["url"] == target.url
        assert health["target"]["model"] == "glm-5"
        assert TARGET_KEY not in resp.text
        assert ADMIN_TOKEN not in resp.text

    def test_health_hides_credentials_written_into_an_upstream_url(
        self, start_gateway: GatewayFactory
    ) -> None:
        gateway = start_gateway(passthrough={"url": "https://user:hunter2@example.invalid:8443"})
        health = get(gateway, "/health").json()
        assert health["passthrough"]["url"] == "https://example.invalid:8443"


class TestContentTracing:
    def test_tracing_is_off_by_default_and_switches_at_runtime(
        self, gateway: RunningGateway
    ) -> None:
        assert get(gateway, "/api/tracing").json() == {"enabled": False}
        assert put(gateway, "/api/tracing", {"enabled": True}).json() == {"enabled": True}
        assert get(gateway, "/api/tracing").json() == {"enabled": True}

    def test_content_is_logged_only_while_tracing_is_on(
        self, gateway: RunningGateway, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="cc_proxy.trace")
        ask(gateway)
        assert not [r for r in caplog.records if r.name == "cc_proxy.trace"]
        put(gateway, "/api/tracing", {"enabled": True})
        ask(gateway)

        def logged_lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "cc_proxy.trace"]

        # logged as the exchange ends, in the gateway's thread, just after the answer
        assert wait_until(lambda: len(logged_lines()) == 2)
        logged = "\n".join(logged_lines())
        assert "which mode?" in logged  # the request
        assert "stand-in model" in logged  # the answer
        assert CLIENT_KEY not in logged
        put(gateway, "/api/tracing", {"enabled": False})
        caplog.clear()
        ask(gateway)
        assert not [r for r in caplog.records if r.name == "cc_proxy.trace"]

    @pytest.mark.parametrize("body", [{"enabled": "yes"}, {"enabled": 1}, {"on": True}])
    def test_a_bad_tracing_change_is_refused(
        self, gateway: RunningGateway, body: dict[str, Any]
    ) -> None:
        assert_anthropic_error(put(gateway, "/api/tracing", body), 400, "invalid_request_error")
