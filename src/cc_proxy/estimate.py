"""A local input-token estimate, for targets that have no count_tokens endpoint.

Claude Code calls `POST /v1/messages/count_tokens`; vLLM and SGLang answer 404. An
estimate in the same shape keeps Claude Code working; it only needs to be roughly right.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

# About four characters of English or code per token: the usual rule of thumb for
# Claude-family and GLM tokenizers alike.
CHARS_PER_TOKEN = 4
# An image or document is billed by its size, not by the length of its base64 text.
TOKENS_PER_ATTACHMENT = 1600
_ATTACHMENTS = frozenset({"image", "document"})


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    chars = 0
    attachments = 0
    for item in _leaves(body.get("system"), body.get("messages"), body.get("tools")):
        if isinstance(item, str):
            chars += len(item)
        else:
            attachments += 1
    return max(1, math.ceil(chars / CHARS_PER_TOKEN)) + attachments * TOKENS_PER_ATTACHMENT


def _leaves(*values: Any) -> Iterator[str | None]:
    """Every string in `values`; None for each image or document block."""
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            if value.get("type") in _ATTACHMENTS:
                yield None
            else:
                stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
