"""`GET /ui` in a real browser: Debian's Chromium, headless, driven by Playwright.

The browser is the system's (`apt-get install chromium`, done by .ci/run); Playwright's
own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from cc_proxy.standin import answer, message_events
from conftest import GatewayFactory, post_messages
from harness import Reply, RunningGateway, ScriptedUpstream, wait_until

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking switches Chromium reaches out at start-up (updates,
# sync, field trials), which a closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS = 20_000  # an upper bound for the page to catch up, never a timing expectation
ADMIN_TOKEN = "ui-admin-token-7d2a"
TOOLS = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "stream": True,
    "tools": TOOLS,
    "messages": [{"role": "user", "content": "list the files"}],
}

expect.set_options(timeout=WAIT_MS)


# Module scope: while Playwright's sync API is open, its event loop counts as running in
# this thread, and later tests that call asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    script_errors: list[str] = []
    opened.on("pageerror", lambda error: script_errors.append(str(error)))
    yield opened
    context.close()
    assert script_errors == []


def mode_of(gateway: RunningGateway) -> str:
    mode: str = httpx.get(gateway.url + "/api/mode", timeout=30).json()["mode"]
    return mode


def open_dashboard(page: Page, gateway: RunningGateway) -> None:
    page.goto(gateway.url + "/ui")
    expect(page.locator("#connection")).to_have_text("live")


def test_the_page_is_the_gateways_own_and_runs_only_its_own_script(
    gateway: RunningGateway, target: ScriptedUpstream
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for path in ("/ui", "/ui/", "/ui/dashboard.js", "/ui/dashboard.css", "/metrics"):
            assert http.get(path).status_code == 200, path
        page = http.get("/ui")
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        missing = http.get("/ui/secrets.txt")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found_error"
    assert target.seen == []  # none of it was proxied


def test_a_click_switches_the_mode(page: Page, gateway: RunningGateway) -> None:
    open_dashboard(page, gateway)
    expect(page.locator("#mode")).to_have_text("target")
    page.click("#mode-switch button[data-mode=compare]")
    assert wait_until(lambda: mode_of(gateway) == "compare", timeout=WAIT_MS / 1000)
    expect(page.locator("#mode")).to_have_text("compare")
    expect(page.locator("#notice")).to_contain_text("Mode switched to compare")
    expect(page.locator("#mode-switch button.current")).to_have_text("compare")


def test_the_page_follows_a_switch_made_elsewhere(page: Page, gateway: RunningGateway) -> None:
    open_dashboard(page, gateway)
    httpx.put(gateway.url + "/api/mode", json={"mode": "compare"}).raise_for_status()
    expect(page.locator("#mode")).to_have_text("compare")


def test_counters_sparklines_and_recent_requests_move_after_a_request(
    page: Page, gateway: RunningGateway
) -> None:
    open_dashboard(page, gateway)
    expect(page.locator("[data-counter=total_requests]")).to_have_text("0")
    resp = post_messages(gateway.url, ASK)
    assert resp.status_code == 200
    usage = answer({**ASK, "model": "glm-5"})["usage"]
    expect(page.locator("[data-counter=total_requests]")).to_have_text("1")
    expect(page.locator("[data-counter=tool_calls]")).to_have_text("1")
    expect(page.locator("[data-counter=output_tokens]")).to_have_text(str(usage["output_tokens"]))
    request_id = resp.headers["x-cc-proxy-request-id"]
    row = page.locator(f"#recent tr[data-id='{request_id}']")
    expect(row).to_contain_text("claude-sonnet-4-5 → glm-5")
    expect(row).to_contain_text("tool_use")
    target = page.locator("article.upstream[data-upstream=target]")
    expect(target.locator(".spark .figure").first).to_have_text("1")
    expect(target.locator("svg.sparkline polyline").first).to_be_attached()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)


def test_a_refused_switch_is_explained(page: Page, gateway: RunningGateway) -> None:
    open_dashboard(page, gateway)
    page.click("#mode-switch button[data-mode=anthropic-only]")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("refused (403)")
    expect(notice).to_contain_text("--allow-anthropic-only")
    assert mode_of(gateway) == "target"
    expect(page.locator("#mode")).to_have_text("target")


def test_the_admin_token_is_asked_for_and_sent(page: Page, start_gateway: GatewayFactory) -> None:
    gateway = start_gateway(server={"admin_token": ADMIN_TOKEN})
    open_dashboard(page, gateway)
    page.click("#mode-switch button[data-mode=compare]")
    expect(page.locator("#notice")).to_contain_text("refused (401)")
    expect(page.locator("#notice")).to_contain_text("CC_SERVER__ADMIN_TOKEN")
    assert mode_of(gateway) == "target"
    page.fill("#admin-token", ADMIN_TOKEN)
    page.click("#mode-switch button[data-mode=compare]")
    expect(page.locator("#notice")).to_contain_text("Mode switched to compare")
    assert mode_of(gateway) == "compare"


def test_the_compare_view_says_how_to_get_records_while_there_are_none(
    page: Page, gateway: RunningGateway
) -> None:
    open_dashboard(page, gateway)
    expect(page.locator("#compare-status")).to_contain_text("switch to compare mode")
    expect(page.locator("#compare-list")).to_be_hidden()


def test_the_compare_view_shows_both_answers_side_by_side(
    page: Page,
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
) -> None:
    gateway = start_gateway(default_mode="compare")
    agreed = post_messages(gateway.url, ASK).headers["x-cc-proxy-request-id"]
    assert wait_until(lambda: len(target.seen) == 1)  # its shadow took no scripted reply
    tool_turn = answer(ASK)
    text_turn = answer({**ASK, "tools": []})
    passthrough.queue(Reply.sse(message_events(tool_turn)))
    target.queue(Reply.sse(message_events(text_turn)))
    differed = post_messages(gateway.url, ASK).headers["x-cc-proxy-request-id"]

    def recorded() -> int:
        found: int = len(httpx.get(gateway.url + "/api/compare", timeout=30).json()["records"])
        return found

    assert wait_until(lambda: recorded() == 2, timeout=WAIT_MS / 1000)
    open_dashboard(page, gateway)
    expect(page.locator("#compare-status")).to_contain_text("2 records")
    expect(page.locator(f"#compare-list tr[data-id='{agreed}']")).not_to_contain_text("differ")
    expect(page.locator(f"#compare-list tr[data-id='{differed}']")).to_contain_text("differ")
    page.check("#compare-filters input[name=disagreements]")
    page.click("#compare-filters button[type=submit]")
    expect(page.locator("#compare-list tr.record")).to_have_count(1)
    page.click(f"#compare-list tr[data-id='{differed}']")
    primary = page.locator("#compare-detail [data-side=primary]")
    shadow = page.locator("#compare-detail [data-side=shadow]")
    expect(primary).to_contain_text("tool_use")
    expect(primary.locator(".tool-call")).to_contain_text("Bash")
    expect(shadow).to_contain_text("end_turn")
    expect(shadow.locator("pre.text")).to_have_text(text_turn["content"][0]["text"])
    expect(page.locator("#compare-detail .agreement-summary")).to_contain_text("differ")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-compare.png", full_page=True)
