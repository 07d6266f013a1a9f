"""SPEC.md §3 credentials: the client's keys never reach the target; they reach the
passthrough only with `passthrough_auth = true`."""

from __future__ import annotations

import httpx
import pytest

from conftest import CLIENT_KEY, PASSTHROUGH_KEY, TARGET_KEY, GatewayFactory
from harness import ScriptedUpstream, load_fixture, wait_until


def replay(url: str, fixture: str, path: str | None = None) -> httpx.Response:
    recorded_path, headers, body = load_fixture(fixture)
    with httpx.Client(timeout=30) as http:
        return http.post(url + (path or recorded_path), content=body, headers=headers)


def client_credentials(upstream: ScriptedUpstream) -> list[str]:
    return [
        value
        for seen in upstream.seen
        for name in ("x-api-key", "authorization")
        for value in seen.headers.getall(name, [])
        if "sk-ant-test" in value or CLIENT_KEY in value
    ]


@pytest.mark.parametrize("fixture", ["basic", "authtok"])
@pytest.mark.parametrize(
    "path", [None, "/v1/messages/count_tokens", "/v1/models"], ids=["messages", "count", "other"]
)
def test_target_never_sees_the_clients_credentials(
    start_gateway: GatewayFactory, target: ScriptedUpstream, fixture: str, path: str | None
) -> None:
    gateway = start_gateway()
    replay(gateway.url, fixture, path)
    assert len(target.seen) == 1
    assert "x-api-key" not in target.seen[0].headers
    assert "authorization" not in target.seen[0].headers


@pytest.mark.parametrize("fixture", ["basic", "authtok"])
def test_target_gets_its_own_key_when_one_is_set(
    start_gateway: GatewayFactory, target: ScriptedUpstream, fixture: str
) -> None:
    gateway = start_gateway(target={"api_key": TARGET_KEY})
    replay(gateway.url, fixture)
    seen = target.seen[0].headers
    assert seen.getall("x-api-key") == [TARGET_KEY]
    assert seen.getall("authorization") == [f"Bearer {TARGET_KEY}"]


@pytest.mark.parametrize("fixture", ["basic", "authtok"])
def test_shadow_copies_carry_no_client_credentials(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    fixture: str,
) -> None:
    gateway = start_gateway(default_mode="compare", target={"api_key": TARGET_KEY})
    replay(gateway.url, fixture)
    assert wait_until(lambda: len(target.seen) == 1)
    assert client_credentials(target) == []
    assert target.seen[0].headers["x-api-key"] == TARGET_KEY
    assert client_credentials(passthrough) != []


@pytest.mark.parametrize(
    ("fixture", "header", "value"),
    [("basic", "x-api-key", "sk-ant-test"), ("authtok", "authorization", "Bearer sk-ant-test")],
)
def test_passthrough_gets_the_clients_credentials_with_passthrough_auth(
    start_gateway: GatewayFactory,
    passthrough: ScriptedUpstream,
    fixture: str,
    header: str,
    value: str,
) -> None:
    gateway = start_gateway(
        default_mode="anthropic-only",
        allow_anthropic_only=True,
        passthrough={"api_key": PASSTHROUGH_KEY},
    )
    replay(gateway.url, fixture)
    assert passthrough.seen[0].headers.getall(header) == [value]
    assert PASSTHROUGH_KEY not in str(passthrough.seen[0].headers)


@pytest.mark.parametrize("fixture", ["basic", "authtok"])
def test_passthrough_gets_the_configured_key_instead_without_passthrough_auth(
    start_gateway: GatewayFactory, passthrough: ScriptedUpstream, fixture: str
) -> None:
    gateway = start_gateway(
        default_mode="anthropic-only",
        allow_anthropic_only=True,
        passthrough={"passthrough_auth": False, "api_key": PASSTHROUGH_KEY},
    )
    replay(gateway.url, fixture)
    assert client_credentials(passthrough) == []
    assert passthrough.seen[0].headers.getall("x-api-key") == [PASSTHROUGH_KEY]
    assert "authorization" not in passthrough.seen[0].headers


def test_passthrough_gets_no_credentials_without_passthrough_auth_or_key(
    start_gateway: GatewayFactory, passthrough: ScriptedUpstream
) -> None:
    gateway = start_gateway(
        default_mode="anthropic-only",
        allow_anthropic_only=True,
        passthrough={"passthrough_auth": False},
    )
    replay(gateway.url, "authtok", "/v1/models")
    assert "x-api-key" not in passthrough.seen[0].headers
    assert "authorization" not in passthrough.seen[0].headers


@pytest.mark.parametrize("mode", ["target", "compare", "anthropic-only"])
@pytest.mark.parametrize(
    "path",
    ["/v1/messages?beta=true", "/v1/messages/count_tokens", "/v1/models", "/v1/files/f1"],
    ids=["messages", "count_tokens", "fallback", "fallback-deeper"],
)
def test_the_target_never_sees_client_credentials_in_any_mode_or_path(
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
    mode: str,
    path: str,
) -> None:
    gateway = start_gateway(default_mode=mode, allow_anthropic_only=True)
    _, headers, body = load_fixture("basic")
    both = {**headers, "x-api-key": CLIENT_KEY, "Authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(timeout=30) as http:
        http.post(gateway.url + path, content=body, headers=both)
    shadowed = mode == "compare" and path.startswith("/v1/messages?")
    # The request went where its mode sends it (and its shadow copy to the target).
    assert wait_until(lambda: len(passthrough.seen) + len(target.seen) == 1 + shadowed)
    for seen in target.seen:  # the target's own request, or compare mode's shadow copy
        assert "x-api-key" not in seen.headers
        assert "authorization" not in seen.headers
        assert CLIENT_KEY not in str(seen.headers)
