"""The signatures of the thinking blocks the target produced, remembered in memory.

Anthropic rejects a thinking block signed by another model ("Invalid `signature` in
`thinking` block"), and Claude Code keeps every block in the history it resends, so after
a switch from `target` to `compare` or `anthropic-only` every later turn would fail. The
gateway watches the target's answers that reach the client, remembers the signatures of
their thinking blocks (bounded, least recently seen forgotten first) and takes exactly
those blocks out of passthrough-bound requests (`shaping.PassthroughShaping`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from cc_proxy.accounting import event_data, events_naming
from cc_proxy.exchange import Exchange, Observer, Role

# The events that start, sign and stop a block name one of these; no other delta does.
_FOLLOWED = (b"content_block_start", b"signature_delta", b"content_block_stop")

# Whole non-streaming answers larger than this are not searched for thinking blocks.
MAX_SEARCHED_JSON_BYTES = 16 * 1024 * 1024


class ThinkingSignatures:
    """A bounded set of signatures, least recently used forgotten first.

    Digests are kept, not the signatures: a signature may be kilobytes long.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    @staticmethod
    def _digest(signature: str) -> bytes:
        return hashlib.blake2b(signature.encode(), digest_size=16).digest()

    def remember(self, signature: str) -> None:
        if self.capacity <= 0:
            return
        digest = self._digest(signature)
        self._digests[digest] = None
        self._digests.move_to_end(digest)
        while len(self._digests) > self.capacity:
            self._digests.popitem(last=False)

    def knows(self, signature: str) -> bool:
        digest = self._digest(signature)
        if digest not in self._digests:
            return False
        self._digests.move_to_end(digest)
        return True

    def __len__(self) -> int:
        return len(self._digests)


class _StreamReader:
    """Follows the thinking blocks of one SSE answer. A block's signature is the sum of
    its `signature_delta`s; a thinking block that got none (some self-hosted servers sign
    nothing) is remembered with the empty signature, which Anthropic rejects just the same.
    """

    __slots__ = ("_pending", "_signatures")

    def __init__(self, signatures: ThinkingSignatures) -> None:
        self._signatures = signatures
        self._pending: dict[Any, str] = {}  # content block index -> signature so far

    def feed(self, region: bytes) -> None:
        # Most answers have no thinking at all: one scan of the region says so.
        # (`find`, not `in`: CPython 3.11 tries a bytes needle as an int first, and makes
        # and drops a TypeError for it, doubling the cost of a search in an event)
        if not self._pending and region.find(b"thinking") < 0:
            return
        # The many thinking, text and tool-input deltas are never decoded.
        for block in events_naming(region, _FOLLOWED):
            self._event(block)

    def _event(self, block: bytes) -> None:
        try:
            event = orjson.loads(event_data(block))
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        index = event.get("index")
        if kind == "content_block_start":
            started = event.get("content_block")
            if isinstance(started, dict) and started.get("type") == "thinking":
                signature = started.get("signature")
                self._pending[index] = signature if isinstance(signature, str) else ""
        elif kind == "content_block_delta" and index in self._pending:
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "signature_delta":
                signature = delta.get("signature")
                self._pending[index] += signature if isinstance(signature, str) else ""
        elif kind == "content_block_stop" and index in self._pending:
            self._signatures.remember(self._pending.pop(index))


def signatures_in_message(answer: Any) -> list[str]:
    """The signatures of the thinking blocks of a whole Messages answer."""
    content = answer.get("content") if isinstance(answer, dict) else None
    found = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == "thinking":
            signature = block.get("signature")
            found.append(signature if isinstance(signature, str) else "")
    return found


class TargetThinking(Observer):
    """Remembers the thinking signatures of the target's answers that reach the client:
    a stream's as it is relayed, a whole answer's once it ends.

    Shadow answers are not watched: the client never sees them, so they never come back.
    """

    def __init__(self, signatures: ThinkingSignatures) -> None:
        self.signatures = signatures

    def _watches(self, exchange: Exchange) -> bool:
        return (
            self.signatures.capacity > 0
            and exchange.role is Role.PRIMARY
            and exchange.upstream == "target"
            and exchange.is_messages
        )

    def body_watcher(self, exchange: Exchange) -> Callable[[bytes], None] | None:
        if exchange.stream and self._watches(exchange):
            return _StreamReader(self.signatures).feed
        return None

    def on_end(self, exchange: Exchange) -> None:
        answer = exchange.answer_json
        if (
            answer is None
            or len(answer) > MAX_SEARCHED_JSON_BYTES
            or answer.find(b'"thinking"') < 0
            or not self._watches(exchange)
        ):
            return
        try:
            parsed = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return
        for signature in signatures_in_message(parsed):
            self.signatures.remember(signature)
