"""Body rewrites by destination.

Target-bound bodies (SPEC.md §3, widened by the `[target]` shaping keys) get the
`--model` name, the sampling defaults where the request lacks them, and what a
self-hosted server needs: Claude Code's per-prompt billing block out of `system`
(`strip_billing_header`), mid-conversation system messages folded into `system`
(`fold_system_messages`), thinking blocks it did not sign taken out
(`drop_foreign_thinking`), named betas and fields removed (`drop_betas`, `drop_fields`).

Passthrough-bound bodies keep the client's original bytes. The one exception: a body
that carries a thinking block the target signed (remembered by `cc_proxy.thinking`) has
those blocks taken out, since Anthropic would reject the request for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from cc_proxy.body import MessagesBody, ShapedBody
from cc_proxy.config import TargetSettings
from cc_proxy.errors import GatewayError
from cc_proxy.thinking import ThinkingSignatures
from cc_proxy.upstream import Headers

# Claude Code 2.1.197 puts this block first in `system`. Its value depends on the first
# prompt of the session and on whether the request is a subagent's, so it differs between
# sessions and agents whose ~30k-token prompt is otherwise the same, and being first it
# keeps vLLM's and SGLang's prefix caches from reusing any of it.
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
_JSON_LIST = msgspec.json.Decoder(list[msgspec.Raw])
NO_CHANGE: Any = object()
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def without_billing_header(system: Any) -> Any:
    """`system` without Claude Code's billing block; the same object when it has none."""
    if isinstance(system, list):
        kept = [block for block in system if not _is_billing_block(block)]
        return kept if len(kept) != len(system) else system
    if isinstance(system, str) and system.startswith(BILLING_HEADER_PREFIX):
        return system.partition("\n")[2]
    return system


def system_without_billing_header(body: Mapping[str, Any]) -> Any:
    """`body`'s `system` without Claude Code's billing block, or NO_CHANGE.

    Of a client's body (`MessagesBody`), a list of blocks is split into the blocks' own
    bytes (msgspec's `Raw`), of each block only `type` and `text` are read, and the
    blocks kept are written back as the client wrote them (as `msgspec.Raw`): two thirds
    of the time of decoding Claude Code's 6 KB `system` and encoding it again."""
    if isinstance(body, MessagesBody) and "system" in body:
        raw = body.field_bytes("system")
        if memoryview(raw)[0] == ord("["):
            blocks = _JSON_LIST.decode(raw)
            kept = [block for block in blocks if not _is_billing_json(block)]
            if len(kept) == len(blocks):
                return NO_CHANGE
            return msgspec.Raw(b"[" + b",".join(kept) + b"]")
    # Anything else (a string, most likely) is decoded.
    system = body.get("system")
    stripped = without_billing_header(system)
    return NO_CHANGE if stripped is system else stripped


class _BlockHead(msgspec.Struct):
    """What tells a `system` block the billing block; the rest of it is skipped, not
    decoded."""

    type: Any = None
    text: Any = None


_BLOCK_HEAD = msgspec.json.Decoder(_BlockHead)


def _is_billing_json(raw: msgspec.Raw) -> bool:
    try:
        block = _BLOCK_HEAD.decode(raw)
    except msgspec.ValidationError:  # not an object
        return False
    return (
        block.type == "text"
        and isinstance(block.text, str)
        and block.text.startswith(BILLING_HEADER_PREFIX)
    )


def _is_billing_block(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") == "text"
        and str(block.get("text", "")).startswith(BILLING_HEADER_PREFIX)
    )


def _as_blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content) if isinstance(content, list) else []


def fold_system_messages(system: Any, messages: Any) -> tuple[Any, Any] | None:
    """`{"role": "system"}` entries of `messages` moved to the end of `system`, in order;
    None when there are none. vLLM rejects a system role inside `messages`."""
    if not isinstance(messages, list):
        return None
    folded: list[Any] = []
    kept: list[Any] = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "system":
            folded.extend(_as_blocks(message.get("content")))
        else:
            kept.append(message)
    if len(kept) == len(messages):
        return None
    return [*_as_blocks(system), *folded], kept


def without_thinking(messages: Any, drop: Callable[[dict[str, Any]], bool]) -> Any:
    """`messages` without the assistant thinking blocks that `drop` picks; the same object
    when none is picked. An assistant turn left empty goes too."""
    if not isinstance(messages, list):
        return messages
    changed = False
    result: list[Any] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            result.append(message)
            continue
        content = message.get("content")
        if not isinstance(content, list):
            result.append(message)
            continue
        kept = [
            block
            for block in content
            if not (
                isinstance(block, dict) and block.get("type") in THINKING_BLOCKS and drop(block)
            )
        ]
        if len(kept) == len(content):
            result.append(message)
            continue
        changed = True
        if kept:
            result.append({**message, "content": kept})
    return result if changed else messages


def _signature(block: dict[str, Any]) -> str:
    signature = block.get("signature")
    return signature if isinstance(signature, str) else ""


@dataclass(frozen=True, slots=True)
class TargetShaping:
    model: str | None
    # added to /v1/messages bodies only where absent; count_tokens takes no sampling fields
    defaults: tuple[tuple[str, Any], ...]
    strip_billing_header: bool = True
    fold_system_messages: bool = False
    drop_betas: frozenset[str] = frozenset()
    drop_fields: frozenset[str] = frozenset()
    # With `drop_foreign_thinking`, the thinking blocks not found here are taken out.
    foreign_thinking: ThinkingSignatures | None = None

    @classmethod
    def from_settings(
        cls, target: TargetSettings, signatures: ThinkingSignatures | None = None
    ) -> TargetShaping:
        defaults = (
            ("temperature", target.temperature),
            ("top_p", target.top_p),
            ("max_tokens", target.max_tokens),
        )
        return cls(
            target.model,
            tuple((k, v) for k, v in defaults if v is not None),
            strip_billing_header=target.strip_billing_header,
            fold_system_messages=target.fold_system_messages,
            drop_betas=frozenset(target.drop_betas),
            drop_fields=frozenset(target.drop_fields),
            foreign_thinking=(
                (ThinkingSignatures(0) if signatures is None else signatures)
                if target.drop_foreign_thinking
                else None
            ),
        )

    def shaped(self, body: Mapping[str, Any], *, sampling: bool) -> ShapedBody | None:
        """The target-bound body, or None when nothing needs to change."""
        changes: dict[str, Any] = {}
        if self.model is not None and body.get("model") != self.model:
            changes["model"] = self.model
        if sampling:
            changes.update((k, v) for k, v in self.defaults if k not in body)
        if self.strip_billing_header:
            stripped = system_without_billing_header(body)
            if stripped is not NO_CHANGE:
                changes["system"] = stripped
        # `system` and `messages` (the bulk of a long conversation) are decoded only for
        # the rules that read them.
        if self.fold_system_messages:
            system = ShapedBody(body, changes, ()).get("system")
            folded = fold_system_messages(system, body.get("messages"))
            if folded is not None:
                changes["system"], changes["messages"] = folded
        known = self.foreign_thinking
        if known is not None:
            messages = changes["messages"] if "messages" in changes else body.get("messages")
            kept = without_thinking(messages, lambda block: not known.knows(_signature(block)))
            if kept is not messages:
                changes["messages"] = kept
        dropped = self.drop_fields.intersection(body) if self.drop_fields else ()
        if not changes and not dropped:
            return None
        return ShapedBody(body, changes, dropped)

    def shape_headers(self, headers: Headers) -> Headers:
        """Target-bound headers: the `drop_betas` taken out of `anthropic-beta`."""
        if not self.drop_betas:
            return headers
        shaped: Headers = []
        for name, value in headers:
            if name.lower() != "anthropic-beta":
                shaped.append((name, value))
                continue
            betas = [beta.strip() for beta in value.split(",")]
            kept = ",".join(beta for beta in betas if beta and beta not in self.drop_betas)
            if kept:
                shaped.append((name, kept))
        return shaped


@dataclass(frozen=True, slots=True)
class PassthroughShaping:
    """Passthrough-bound bodies: the original bytes, unless they carry thinking blocks the
    target signed."""

    target_thinking: ThinkingSignatures

    def shape(self, raw: bytes, body: Mapping[str, Any] | None) -> bytes | None:
        """The bytes to send instead of `raw`, or None to send `raw` unchanged."""
        known = self.target_thinking
        # Nothing remembered (the gateway never served target thinking) or no thinking in
        # the request: the common case costs one substring scan at most.
        if not len(known) or raw.find(b"thinking") < 0:
            return None
        if body is None:
            try:
                body = MessagesBody(raw)
            except GatewayError:
                return None  # not for the gateway to refuse: the passthrough answers it
        messages = body.get("messages")
        kept = without_thinking(
            messages,
            lambda block: block.get("type") == "thinking" and known.knows(_signature(block)),
        )
        if kept is messages:
            return None
        return ShapedBody(body, {"messages": kept}, ()).encode()
