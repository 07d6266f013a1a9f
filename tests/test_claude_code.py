"""Claude Code itself as the client: the real CLI (npm, pinned in .ci/install-claude-code)
runs `claude -p` through cc-proxy against stand-in upstreams that answer like a model: a
Bash `tool_use` first, then text once the `tool_result` is back.

These tests skip only when npm cannot install the CLI, and then say so with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cc_proxy.errors import ErrorType, sse_error_event
from cc_proxy.standin import answer, message_events
from conftest import GatewayFactory
from harness import (
    CLAUDE_CODE_KEY,
    ClaudeCode,
    ClaudeRun,
    Reply,
    RunningGateway,
    ScriptedUpstream,
    Seen,
    install_claude_code,
    wait_until,
)

pytestmark = pytest.mark.slow

MAIN_MODEL = "claude-sonnet-4-5"
BASH = ("--allowedTools", "Bash")


@pytest.fixture(scope="module")
def claude_code_installed() -> None:
    problem = install_claude_code()
    if problem is not None:
        warnings.warn(f"Claude Code tests SKIPPED: {problem}", stacklevel=1)
        pytest.skip(f"Claude Code tests skipped: {problem}")


@dataclass
class Rig:
    """Claude Code, the two stand-in upstreams, and cc-proxy between them."""

    claude: ClaudeCode
    start_gateway: GatewayFactory
    target: ScriptedUpstream
    passthrough: ScriptedUpstream

    def run(self, gateway: RunningGateway, prompt: str, *args: str) -> ClaudeRun:
        return self.claude.run(gateway.url, prompt, "--model", MAIN_MODEL, *args)


@pytest.fixture
def rig(
    claude_code_installed: None,
    tmp_path: Path,
    start_gateway: GatewayFactory,
    target: ScriptedUpstream,
    passthrough: ScriptedUpstream,
) -> Rig:
    # Claude Code also sends `HEAD /` at start: the scripted answers are for the model.
    target.script_for = passthrough.script_for = "/v1/messages"
    return Rig(ClaudeCode(tmp_path / "home"), start_gateway, target, passthrough)


def succeeded(done: ClaudeRun) -> dict[str, Any]:
    assert done.returncode == 0, (done.stdout, done.stderr)
    result = done.result
    assert result["is_error"] is False, result
    return result


def messages_seen(upstream: ScriptedUpstream) -> list[Seen]:
    return [s for s in upstream.seen if s.method == "POST" and s.path == "/v1/messages"]


def tool_results(seen: Seen) -> list[dict[str, Any]]:
    content = seen.json()["messages"][-1]["content"]
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def result_text(result: dict[str, Any]) -> str:
    content = result["content"]
    if isinstance(content, str):
        return content
    return " ".join(str(block.get("text", "")) for block in content)


def expected_stats(answers: list[dict[str, Any]]) -> dict[str, int]:
    """The four counters as the answers the client got add up."""
    return {
        "input_tokens": sum(a["usage"]["input_tokens"] for a in answers),
        "output_tokens": sum(a["usage"]["output_tokens"] for a in answers),
        "tool_calls": sum(1 for a in answers for b in a["content"] if b["type"] == "tool_use"),
    }


def counted(gateway: RunningGateway) -> dict[str, int]:
    stats = gateway.stats
    return {k: stats[k] for k in ("input_tokens", "output_tokens", "tool_calls")}


class TestTargetMode:
    def test_a_bash_tool_round_trip_completes_on_the_target(self, rig: Rig) -> None:
        gateway = rig.start_gateway()
        result = succeeded(rig.run(gateway, "say hello with echo", *BASH))
        assert result["num_turns"] == 2
        assert result["result"].startswith("The command ran")
        first, second = messages_seen(rig.target)
        # Bash really ran: its output came back in the second request
        assert "hello from the stand-in" in result_text(tool_results(second)[0])
        assert {s.json()["model"] for s in (first, second)} == {"glm-5"}
        assert rig.passthrough.seen == []

    def test_stats_equal_what_the_target_sent(self, rig: Rig) -> None:
        gateway = rig.start_gateway()
        succeeded(rig.run(gateway, "say hello with echo", *BASH))
        assert wait_until(lambda: gateway.stats["total_requests"] == 2)
        assert len(rig.target.answers) == 2
        assert counted(gateway) == expected_stats(rig.target.answers)
        assert gateway.stats["errors"] == 0

    def test_a_subagent_call_runs_on_the_target_with_the_model_rewritten(self, rig: Rig) -> None:
        gateway = rig.start_gateway()
        delegate = answer({"messages": [{"role": "user", "content": "delegate"}]})
        delegate["content"] = [
            {
                "type": "tool_use",
                "id": "toolu_delegate_1",
                "name": "Agent",
                "input": {
                    "description": "Run echo",
                    "prompt": "Run echo with Bash and report what it printed.",
                    "subagent_type": "Explore",
                },
            }
        ]
        delegate["stop_reason"] = "tool_use"
        rig.target.queue(Reply.message(delegate))
        result = succeeded(rig.run(gateway, "delegate an echo to an agent", *BASH))
        seen = messages_seen(rig.target)
        by_subagent = [s for s in seen if "x-claude-code-agent-id" in s.headers]
        by_main = [s for s in seen if "x-claude-code-agent-id" not in s.headers]
        assert len(by_main) == 2
        assert len(by_subagent) == 2  # the subagent's Bash round trip
        assert "hello from the stand-in" in result_text(tool_results(by_subagent[1])[0])
        assert tool_results(by_main[1])[0]["tool_use_id"] == "toolu_delegate_1"
        assert {s.json()["model"] for s in seen} == {"glm-5"}
        assert result["result"].startswith("The command ran")
        assert rig.passthrough.seen == []
        assert wait_until(lambda: gateway.stats["total_requests"] == len(seen))
        assert counted(gateway) == expected_stats(rig.target.answers)


@pytest.mark.parametrize("strip", [True, False], ids=["stripped", "kept"])
def test_two_sessions_reach_the_target_with_one_prompt_prefix_only_when_stripped(
    rig: Rig, strip: bool
) -> None:
    """Claude Code's billing block depends on the session's first prompt: two sessions
    in one project send the same ~30k-token system prompt and tools behind different
    billing blocks, so a prefix cache can reuse none of it unless the block is gone."""
    gateway = rig.start_gateway(target={"strip_billing_header": strip})
    succeeded(rig.run(gateway, "say hi"))
    succeeded(rig.run(gateway, "say hello"))
    openings = [s.json() for s in messages_seen(rig.target) if len(s.json()["messages"]) <= 2]
    first, second = openings  # each session's first request
    assert first["tools"] == second["tools"]
    assert first["messages"] != second["messages"]
    if strip:
        assert first["system"] == second["system"]
    else:
        assert first["system"][0] != second["system"][0]
        assert first["system"][1:] == second["system"][1:]


def test_compare_mode_answers_from_the_passthrough_and_shadows_to_the_target(rig: Rig) -> None:
    gateway = rig.start_gateway(default_mode="compare")
    shadow_answer = answer({"messages": [{"role": "user", "content": "from the target"}]})
    rig.target.queue(Reply.message(shadow_answer), Reply.message(shadow_answer))
    result = succeeded(rig.run(gateway, "say hello with echo", *BASH))
    assert result["result"].startswith("The command ran")  # the passthrough's answer
    assert "from the target" not in result["result"]
    assert wait_until(
        lambda: len(rig.target.answers) == 2 and gateway.stats["shadow"]["requests"] == 2
    )
    at_passthrough = messages_seen(rig.passthrough)
    assert {s.json()["model"] for s in at_passthrough} == {MAIN_MODEL}
    assert {s.headers["x-api-key"] for s in at_passthrough} == {CLAUDE_CODE_KEY}
    shadows = messages_seen(rig.target)
    assert {s.json()["model"] for s in shadows} == {"glm-5"}
    for shadow in shadows:
        assert "x-api-key" not in shadow.headers
        assert "authorization" not in shadow.headers
        assert CLAUDE_CODE_KEY.encode() not in shadow.body
    assert counted(gateway) == expected_stats(rig.passthrough.answers)
    # one compare record per request, in Claude Code's session
    store = gateway.gateway.records.store
    assert wait_until(lambda: len(store.page().records) == 2, timeout=15)
    records = store.page().records
    sessions = {s.headers["x-claude-code-session-id"] for s in at_passthrough}
    assert {record["session_id"] for record in records} == sessions
    assert {record["requested_model"] for record in records} == {MAIN_MODEL}
    assert {record["rewritten_model"] for record in records} == {"glm-5"}
    first_turn = records[-1]  # newest first
    assert first_turn["primary"]["tool_calls"][0]["name"] == "Bash"


def test_anthropic_only_mode_sends_everything_to_the_passthrough(rig: Rig) -> None:
    gateway = rig.start_gateway(default_mode="anthropic-only", allow_anthropic_only=True)
    result = succeeded(rig.run(gateway, "say hello with echo", *BASH))
    assert result["num_turns"] == 2
    assert len(messages_seen(rig.passthrough)) == 2
    assert {s.json()["model"] for s in messages_seen(rig.passthrough)} == {MAIN_MODEL}
    assert rig.target.seen == []
    assert counted(gateway) == expected_stats(rig.passthrough.answers)


class TestFaultsSeenThroughClaudeCode:
    def test_a_529_once_is_retried_and_the_run_succeeds(self, rig: Rig) -> None:
        gateway = rig.start_gateway()
        overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
        rig.target.queue(Reply.json(overloaded, status=529))
        result = succeeded(rig.run(gateway, "say hello with echo", *BASH))
        assert result["result"].startswith("The command ran")
        assert len(messages_seen(rig.target)) == 3
        assert wait_until(lambda: gateway.stats["total_requests"] == 3)
        assert gateway.stats["errors"] == 1
        assert counted(gateway) == expected_stats(rig.target.answers)

    def test_a_400_ends_the_run_with_the_error_shown(self, rig: Rig) -> None:
        gateway = rig.start_gateway()
        message = "max_tokens: 99999999 > 32000, the maximum for this model"
        rejected = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
        rig.target.queue(Reply.json(rejected, status=400))
        done = rig.run(gateway, "say hello with echo", *BASH)
        assert done.returncode != 0
        assert done.result["is_error"] is True
        assert message in done.stdout
        assert len(messages_seen(rig.target)) == 1  # a 400 is not retried
        assert wait_until(lambda: gateway.stats["total_requests"] == 1)
        assert gateway.stats["errors"] == 1
        assert counted(gateway) == {"input_tokens": 0, "output_tokens": 0, "tool_calls": 0}

    @pytest.mark.parametrize("how", ["upstream error event", "upstream connection lost"])
    def test_a_mid_stream_error_is_retried_without_streaming_and_the_run_succeeds(
        self, rig: Rig, how: str
    ) -> None:
        gateway = rig.start_gateway()
        cut = answer({"messages": [{"role": "user", "content": "cut short"}]})
        # message_start, ping and a content_block_start reach the client, then the stream
        # fails: with the upstream's own `event: error`, or with the gateway's when the
        # upstream connection drops.
        events = message_events(cut)[:3]
        if how == "upstream error event":
            error = sse_error_event(ErrorType.OVERLOADED, "Overloaded")
            rig.target.queue(Reply.sse([*events, error]))
        else:
            rig.target.queue(Reply.sse(events, then="close"))
        result = succeeded(rig.run(gateway, "say hello with echo", *BASH))
        assert result["result"].startswith("The command ran")
        first, retry, *_ = messages_seen(rig.target)
        assert first.json()["stream"] is True
        assert "stream" not in retry.json()
        assert wait_until(lambda: gateway.stats["total_requests"] == 3)
        delivered = expected_stats(rig.target.answers)
        # the cut answer delivered its message_start: its input tokens and 1 output token
        delivered["input_tokens"] += cut["usage"]["input_tokens"]
        delivered["output_tokens"] += 1
        assert counted(gateway) == delivered
        assert gateway.stats["errors"] == 1


def thinking_signatures(seen: list[Seen]) -> set[str]:
    return {
        str(block.get("signature"))
        for s in seen
        for message in s.json()["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "thinking"
    }


class TestThinkingAcrossAModeSwitch:
    """Both stand-ins think in blocks they sign and reject blocks signed by another, as
    Anthropic does.

    Claude Code 2.1.197 itself drops the thinking blocks of an answer whose `model` is not
    the one it asks for, so with `--model` rewriting they never come back. They do when the
    target answers under the client's model name (no `--model`; a server that serves
    Claude model names as aliases), which is the case these tests set up.
    """

    def start(self, rig: Rig, mode: str, **target_settings: Any) -> RunningGateway:
        rig.target.signs_thinking = "target"
        rig.passthrough.signs_thinking = "anthropic"
        return rig.start_gateway(
            default_mode=mode,
            allow_anthropic_only=True,
            target={"model": None, **target_settings},
        )

    def test_a_session_moved_from_target_to_anthropic_only_keeps_working(self, rig: Rig) -> None:
        gateway = self.start(rig, "target")
        succeeded(rig.run(gateway, "say hello with echo", *BASH))
        gateway.switch_mode("anthropic-only")
        result = succeeded(rig.run(gateway, "once more", "--continue", *BASH))
        assert result["result"].startswith("The command ran")
        at_passthrough = messages_seen(rig.passthrough)
        assert len(at_passthrough) == 2  # no turn was rejected and sent again
        assert not any(s.startswith("target-") for s in thinking_signatures(at_passthrough))
        # the passthrough's own thinking from the first turn of this run still goes back
        assert thinking_signatures(at_passthrough[1:]) == {"anthropic-1"}
        assert gateway.stats["errors"] == 0

    def test_without_the_memory_every_turn_after_the_switch_is_rejected_once(
        self, rig: Rig
    ) -> None:
        """Claude Code 2.1.197 answers "Invalid `signature`" by sending the turn again with
        all thinking taken out, Anthropic's own included: every turn costs a rejected
        round trip, and the passthrough's thinking is lost."""
        gateway = self.start(rig, "target", thinking_signatures=0)
        succeeded(rig.run(gateway, "say hello with echo", *BASH))
        gateway.switch_mode("anthropic-only")
        succeeded(rig.run(gateway, "once more", "--continue", *BASH))
        rejected, resent, rejected_again, resent_again = messages_seen(rig.passthrough)
        assert {"target-1", "target-2"} <= thinking_signatures([rejected])
        assert "anthropic-1" in thinking_signatures([rejected_again])
        assert thinking_signatures([resent, resent_again]) == set()
        assert wait_until(lambda: gateway.stats["errors"] == 2)

    def test_a_session_moved_from_anthropic_only_to_a_target_that_rejects_its_blocks(
        self, rig: Rig
    ) -> None:
        gateway = self.start(rig, "anthropic-only", drop_foreign_thinking=True)
        succeeded(rig.run(gateway, "say hello with echo", *BASH))
        gateway.switch_mode("target")
        result = succeeded(rig.run(gateway, "once more", "--continue", *BASH))
        assert result["result"].startswith("The command ran")
        at_target = messages_seen(rig.target)
        assert not any(s.startswith("anthropic-") for s in thinking_signatures(at_target))
        assert thinking_signatures(at_target[1:]) == {"target-1"}
        assert len(at_target) == 2  # no turn was rejected and sent again


def test_with_the_model_rewritten_claude_code_drops_the_targets_thinking_itself(rig: Rig) -> None:
    """The client behaviour the thinking memory relies on (see the class above)."""
    rig.target.signs_thinking = "target"
    gateway = rig.start_gateway()
    succeeded(rig.run(gateway, "say hello with echo", *BASH))
    _, second = messages_seen(rig.target)
    assert rig.target.answers[0]["content"][0]["type"] == "thinking"
    assert thinking_signatures([second]) == set()
