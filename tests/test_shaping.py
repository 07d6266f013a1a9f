"""Target-bound shaping for self-hosted servers, each rule switchable under `[target]`,
and the one exception to "passthrough-bound bodies are the client's original bytes":
thinking blocks the target signed. Inputs are the requests recorded from Claude Code."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cc_proxy.body import MessagesBody
from cc_proxy.shaping import BILLING_HEADER_PREFIX, TargetShaping
from cc_proxy.standin import answer
from cc_proxy.thinking import ThinkingSignatures
from conftest import GatewayFactory
from harness import Reply, RunningGateway, ScriptedUpstream, load_fixture, wait_until


def send(
    gateway: RunningGateway, body: bytes, path: str = "/v1/messages", **headers: str
) -> httpx.Response:
    sent = httpx.Headers({"content-type": "application/json", "x-api-key": "sk-ant-x"})
    sent.update(headers)
    with httpx.Client(timeout=30) as http:
        return http.post(gateway.url + path, content=body, headers=sent)


def replay(gateway: RunningGateway, fixture: str) -> dict[str, Any]:
    """Send a recorded request; the body as it was recorded."""
    path, headers, body = load_fixture(fixture)
    send(gateway, body, path, **headers)
    recorded: dict[str, Any] = json.loads(body)
    return recorded


def system_text(body: dict[str, Any]) -> str:
    """`system` as a chat template renders it: first in the prompt, before any message."""
    system = body.get("system", "")
    if isinstance(system, str):
        return system
    return "\n".join(block["text"] for block in system)


def shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class TestBillingHeader:
    def test_is_taken_out_of_target_bound_bodies_by_default(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway()
        recorded = replay(gateway, "agent_haiku")
        assert recorded["system"][0]["text"].startswith(BILLING_HEADER_PREFIX)
        assert target.seen[0].json()["system"] == recorded["system"][1:]

    def test_stays_when_switched_off(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway(target={"strip_billing_header": False})
        recorded = replay(gateway, "agent_haiku")
        assert target.seen[0].json()["system"] == recorded["system"]

    @pytest.mark.parametrize("strip", [True, False])
    def test_two_consecutive_recorded_requests_share_their_prompt_prefix_only_without_it(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream, strip: bool
    ) -> None:
        """The prefix (KV) cache of vLLM and SGLang reuses a prompt's leading tokens. The
        billing block comes first and differs between the two recordings, so without
        stripping nothing past its 47 common characters can be reused; stripped, the
        prompts are the same up to where the recordings' own HOME paths differ."""
        gateway = start_gateway(target={"strip_billing_header": strip})
        replay(gateway, "agent_haiku")
        replay(gateway, "tool_result")
        first, second = (seen.json() for seen in target.seen)
        shared = shared_prefix(system_text(first), system_text(second))
        if strip:
            assert first["system"][0] == second["system"][0]
            assert shared > 12_000
            assert "/tmp/cccapture/home/" in system_text(first)[shared - 40 : shared]
        else:
            assert first["system"][0] != second["system"][0]
            assert shared == len(BILLING_HEADER_PREFIX + " cc_version=2.1.197.")

    def test_passthrough_keeps_it(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
    ) -> None:
        gateway = start_gateway(default_mode="compare")
        path, headers, body = load_fixture("agent_haiku")
        send(gateway, body, path, **headers)
        assert passthrough.seen[0].body == body
        assert wait_until(lambda: len(target.seen) == 1)
        assert target.seen[0].json()["system"] == json.loads(body)["system"][1:]

    def test_the_blocks_kept_reach_the_target_as_the_client_wrote_them(
        self, gateway: RunningGateway, target: ScriptedUpstream
    ) -> None:
        billing = {"type": "text", "text": f"{BILLING_HEADER_PREFIX} cc_version=2.1.197.abc;"}
        kept: list[dict[str, Any]] = [{"type": "text", "text": "Claude. \u00e9t\u00e9 \U0001f600"}]
        kept.append({"text": "second", "cache_control": {"type": "ephemeral"}, "type": "text"})
        # spaced as no encoder of ours would write them, and escaped to ASCII
        written = [json.dumps(block, indent=3) for block in (billing, *kept)]
        body = f'{{"model": "claude-haiku-4-5", "system": [ {" , ".join(written)} ]}}'
        assert send(gateway, body.encode()).status_code == 200
        sent = target.seen[0].body
        assert written[1].encode() in sent
        assert written[2].encode() in sent
        assert orjson.loads(sent)["system"] == kept

    @pytest.mark.parametrize("escaped", ["\\u0078", "\\u0078\\u002D"])
    def test_a_prefix_written_with_escapes_is_recognised(
        self, gateway: RunningGateway, target: ScriptedUpstream, escaped: str
    ) -> None:
        text = escaped + BILLING_HEADER_PREFIX[escaped.count("\\") :] + " cc_version=2.1;"
        body = (
            '{"model": "claude-haiku-4-5", "messages": [], "system": '
            f'[{{"type": "text", "text": "{text}"}}, {{"type": "text", "text": "rest"}}]}}'
        )
        assert send(gateway, body.encode()).status_code == 200
        assert target.seen[0].json()["system"] == [{"type": "text", "text": "rest"}]


class TestSystemMessages:
    def test_are_folded_into_system_in_order_when_configured(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway(target={"fold_system_messages": True})
        recorded = replay(gateway, "basic")
        inside = [m for m in recorded["messages"] if m["role"] == "system"]
        assert len(inside) == 1
        sent = target.seen[0].json()
        assert [m["role"] for m in sent["messages"]] == ["user"]
        folded = {"type": "text", "text": inside[0]["content"]}
        assert sent["system"] == [*recorded["system"][1:], folded]

    def test_fold_keeps_their_order_and_a_string_system(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway(target={"fold_system_messages": True})
        body = {
            "model": "m",
            "max_tokens": 10,
            "system": "be brief",
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "system", "content": "first note"},
                {"role": "assistant", "content": "two"},
                {"role": "system", "content": [{"type": "text", "text": "second note"}]},
                {"role": "user", "content": "three"},
            ],
        }
        send(gateway, orjson.dumps(body))
        sent = target.seen[0].json()
        assert [block["text"] for block in sent["system"]] == [
            "be brief",
            "first note",
            "second note",
        ]
        assert [m["content"] for m in sent["messages"]] == ["one", "two", "three"]

    def test_stay_where_they_are_by_default(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway()
        recorded = replay(gateway, "basic")
        assert target.seen[0].json()["messages"] == recorded["messages"]


class TestDroppedBetasAndFields:
    def test_named_betas_and_fields_are_removed_from_target_bound_requests(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway(
            target={
                "drop_betas": ["context-management-2025-06-27", "effort-2025-11-24"],
                "drop_fields": ["context_management", "output_config"],
            }
        )
        _, headers, _ = load_fixture("basic")
        recorded = replay(gateway, "basic")
        seen = target.seen[0]
        betas = headers["anthropic-beta"].split(",")
        kept = [b for b in betas if b not in ("context-management-2025-06-27", "effort-2025-11-24")]
        assert len(kept) == len(betas) - 2
        assert seen.headers["anthropic-beta"] == ",".join(kept)
        sent = seen.json()
        assert "context_management" not in sent
        assert "output_config" not in sent
        untouched = {k: v for k, v in recorded.items() if k not in ("model", "system")}
        del untouched["context_management"], untouched["output_config"]
        assert {k: v for k, v in sent.items() if k not in ("model", "system")} == untouched

    def test_a_header_left_without_betas_is_not_sent(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway(target={"drop_betas": ["only-beta"]})
        send(
            gateway, orjson.dumps({"model": "m", "messages": []}), **{"anthropic-beta": "only-beta"}
        )
        assert "anthropic-beta" not in target.seen[0].headers

    def test_shadow_copies_are_shaped_and_the_passthrough_gets_them_all(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
    ) -> None:
        gateway = start_gateway(
            default_mode="compare",
            target={"drop_betas": ["effort-2025-11-24"], "drop_fields": ["output_config"]},
        )
        path, headers, body = load_fixture("basic")
        send(gateway, body, path, **headers)
        assert passthrough.seen[0].body == body
        assert passthrough.seen[0].headers["anthropic-beta"] == headers["anthropic-beta"]
        assert wait_until(lambda: len(target.seen) == 1)
        assert "effort-2025-11-24" not in target.seen[0].headers["anthropic-beta"]
        assert "output_config" not in target.seen[0].json()


def history(*assistant_content: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "thinking": {"type": "enabled", "budget_tokens": 50},
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": list(assistant_content)},
            {"role": "user", "content": "second"},
        ],
    }


TEXT = {"type": "text", "text": "an answer"}


def thought(signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": "hmm", "signature": signature}


class TestThinkingSignatures:
    """Thinking-signature memory; the runs through Claude Code are in test_claude_code.py."""

    def ask_the_target(self, gateway: RunningGateway, *, stream: bool) -> None:
        ask = {"role": "user", "content": "hi"}
        send(
            gateway,
            orjson.dumps({"model": "m", "max_tokens": 9, "stream": stream, "messages": [ask]}),
        )

    def switched_after_target_thinking(
        self,
        start_gateway: GatewayFactory,
        target: ScriptedUpstream,
        mode: str,
        *,
        stream: bool = True,
    ) -> RunningGateway:
        """A gateway whose target has answered once, thinking in a block signed `target-1`,
        now switched to `mode`."""
        target.signs_thinking = "target"
        gateway = start_gateway(allow_anthropic_only=True)
        self.ask_the_target(gateway, stream=stream)
        gateway.switch_mode(mode)
        return gateway

    @pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
    def test_blocks_the_target_signed_are_taken_out_of_passthrough_bound_requests(
        self,
        start_gateway: GatewayFactory,
        target: ScriptedUpstream,
        passthrough: ScriptedUpstream,
        stream: bool,
    ) -> None:
        gateway = self.switched_after_target_thinking(
            start_gateway, target, "anthropic-only", stream=stream
        )
        own = thought("anthropic-sig")
        send(gateway, orjson.dumps(history(thought("target-1"), own, TEXT)))
        assert passthrough.seen[0].json()["messages"][1]["content"] == [own, TEXT]

    def test_bodies_without_a_known_target_block_keep_their_original_bytes(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
    ) -> None:
        gateway = self.switched_after_target_thinking(start_gateway, target, "anthropic-only")
        assert len(gateway.gateway.proxy.passthrough_shaping.target_thinking) == 1
        # spacing no serializer would produce: any re-encoding would show
        odd = json.dumps(history(thought("anthropic-sig"), TEXT), indent=3).encode()
        send(gateway, odd)
        assert passthrough.seen[0].body == odd

    def test_count_tokens_to_the_passthrough_loses_them_too(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
    ) -> None:
        gateway = self.switched_after_target_thinking(start_gateway, target, "compare")
        passthrough.queue(Reply.json({"input_tokens": 5}))
        send(gateway, orjson.dumps(history(thought("target-1"), TEXT)), "/v1/messages/count_tokens")
        assert passthrough.seen[0].json()["messages"][1]["content"] == [TEXT]

    def test_an_assistant_turn_left_empty_goes_too(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
    ) -> None:
        gateway = self.switched_after_target_thinking(start_gateway, target, "anthropic-only")
        send(gateway, orjson.dumps(history(thought("target-1"))))
        assert [m["content"] for m in passthrough.seen[0].json()["messages"]] == ["first", "second"]

    def test_the_memory_is_bounded_least_recently_seen_forgotten_first(self) -> None:
        memory = ThinkingSignatures(2)
        for signature in ("a", "b", "c"):
            memory.remember(signature)
        assert len(memory) == 2
        assert not memory.knows("a")
        assert memory.knows("b")  # now the most recently seen
        memory.remember("d")
        assert memory.knows("b")
        assert not memory.knows("c")
        memory.remember("x" * 100_000)  # a long signature costs a digest, not its length
        assert memory.knows("x" * 100_000)

    def test_a_zero_capacity_remembers_nothing(self) -> None:
        memory = ThinkingSignatures(0)
        memory.remember("a")
        assert len(memory) == 0

    def test_foreign_blocks_leave_target_bound_requests_when_configured(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        target.signs_thinking = "target"
        gateway = start_gateway(target={"drop_foreign_thinking": True})
        self.ask_the_target(gateway, stream=True)
        redacted = {"type": "redacted_thinking", "data": "opaque"}
        own = thought("target-1")
        send(gateway, orjson.dumps(history(thought("anthropic-sig"), redacted, own, TEXT)))
        assert target.seen[1].json()["messages"][1]["content"] == [own, TEXT]

    def test_foreign_blocks_reach_the_target_by_default(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream
    ) -> None:
        gateway = start_gateway()
        body = history(thought("anthropic-sig"), TEXT)
        send(gateway, orjson.dumps(body))
        assert target.seen[0].json()["messages"] == body["messages"]

    def test_target_thinking_without_a_signature_is_remembered_as_unsigned(
        self, start_gateway: GatewayFactory, target: ScriptedUpstream, passthrough: ScriptedUpstream
    ) -> None:
        """A server that signs nothing leaves an empty signature, which Anthropic rejects."""
        unsigned = answer({"messages": [{"role": "user", "content": "hi"}]})
        unsigned["content"] = [{"type": "thinking", "thinking": "hmm", "signature": ""}, TEXT]
        target.queue(Reply.message(unsigned))
        gateway = start_gateway(allow_anthropic_only=True)
        self.ask_the_target(gateway, stream=True)
        gateway.switch_mode("anthropic-only")
        send(gateway, orjson.dumps(history(thought(""), TEXT)))
        assert passthrough.seen[0].json()["messages"][1]["content"] == [TEXT]


_TEXTS = st.one_of(
    st.text(max_size=20),
    st.builds(lambda tail: BILLING_HEADER_PREFIX + tail, st.text(max_size=20)),
)
_BLOCKS = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]), "text": _TEXTS}),
    st.fixed_dictionaries({"type": st.just("text")}),
    _TEXTS,
    st.integers(-(2**63), 2**63 - 1),
    st.none(),
)
_SYSTEMS = st.one_of(st.lists(_BLOCKS, max_size=5), _TEXTS, st.none(), st.integers(0, 9))


@given(system=_SYSTEMS, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 1]))
def test_a_client_body_is_shaped_from_its_bytes_as_from_its_decoded_value(
    system: Any, ensure_ascii: bool, indent: int | None
) -> None:
    """The billing block is looked for in the client's bytes (`body.MessagesBody`), and
    decoded only where it may be: the result is the one shaping the whole decoded body
    gives, however the client wrote it."""
    raw = json.dumps({"model": "m", "system": system}, ensure_ascii=ensure_ascii, indent=indent)
    shaping = TargetShaping("glm-5", ())
    from_bytes = shaping.shaped(MessagesBody(raw.encode()), sampling=True)
    from_value = shaping.shaped(json.loads(raw), sampling=True)
    assert from_bytes is not None
    assert from_value is not None
    assert orjson.loads(from_bytes.encode()) == orjson.loads(from_value.encode())
    assert dict(from_bytes) == dict(from_value)
