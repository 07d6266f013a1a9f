"""The Messages answer a relayed body carried, put back together for the observers that
record content (traces, compare records).

The relay itself never does this: it decodes only the few events it counts. Here every
event is decoded, so it runs only for answers being recorded, and off the event loop
where it can.
"""

from __future__ import annotations

from typing import Any

import orjson


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def answer_message(raw: bytes, *, stream: bool) -> dict[str, Any] | None:
    """The message of a streamed or whole answer; None when it is not a Messages answer."""
    message = reassemble_message(raw) if stream else json_object(raw)
    if message is None or message.get("type") == "error":
        return None
    return message


def reassemble_message(sse: bytes) -> dict[str, Any] | None:
    """The Messages answer an SSE stream carried, as the non-streaming API would give it.

    None when the stream has no `message_start`. A stream cut short gives the message as
    far as it went; a tool input cut mid-JSON is kept as its text.
    """
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    tool_inputs: dict[int, list[str]] = {}
    for event in sse.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"".join(
            line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
        payload = json_object(data) if data else None
        if payload is None:
            continue
        kind = payload.get("type")
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            message = dict(payload["message"])
        elif kind == "content_block_start" and isinstance(payload.get("content_block"), dict):
            blocks[_index(payload)] = dict(payload["content_block"])
        elif kind == "content_block_delta" and isinstance(payload.get("delta"), dict):
            block = blocks.setdefault(_index(payload), {})
            delta = payload["delta"]
            for key in ("text", "thinking", "signature"):
                if isinstance(delta.get(key), str):
                    block[key] = str(block.get(key, "")) + delta[key]
            if isinstance(delta.get("partial_json"), str):
                tool_inputs.setdefault(_index(payload), []).append(delta["partial_json"])
        elif kind == "message_delta" and message is not None:
            if isinstance(payload.get("delta"), dict):
                message.update(payload["delta"])
            usage = message.get("usage")
            if isinstance(payload.get("usage"), dict):
                message["usage"] = {
                    **(usage if isinstance(usage, dict) else {}),
                    **payload["usage"],
                }
    if message is None:
        return None
    for index, parts in tool_inputs.items():
        try:
            blocks[index]["input"] = orjson.loads("".join(parts) or "{}")
        except orjson.JSONDecodeError:
            blocks[index]["input"] = "".join(parts)
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return message


def _index(payload: dict[str, Any]) -> int:
    index = payload.get("index")
    return index if isinstance(index, int) else 0


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return (
        [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []
    )


def message_text(message: dict[str, Any]) -> str:
    """The text blocks of a message, joined (thinking is not text)."""
    return "".join(
        block["text"]
        for block in _blocks(message)
        if block.get("type", "text") == "text" and isinstance(block.get("text"), str)
    )


def tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    """`{"name", "input"}` of each tool_use block, in order."""
    return [
        {"name": str(block.get("name")), "input": block.get("input")}
        for block in _blocks(message)
        if block.get("type") == "tool_use"
    ]
