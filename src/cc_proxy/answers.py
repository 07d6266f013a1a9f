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
    far as it went; a tool input cut mid-JSON is kept as its text. Deltas are gathered
    and joined once at the end: a long answer has thousands of them.
    """
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    deltas: dict[tuple[int, str], list[str]] = {}
    if b"\r" in sse:
        sse = sse.replace(b"\r\n", b"\n")
    for event in sse.split(b"\n\n"):
        payload = _event_data(event)
        if payload is None:
            continue
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                index = _index(payload)
                for key in DELTA_KEYS:
                    value = delta.get(key)
                    if isinstance(value, str):
                        deltas.setdefault((index, key), []).append(value)
        elif kind == "message_start" and isinstance(payload.get("message"), dict):
            message = dict(payload["message"])
        elif kind == "content_block_start" and isinstance(payload.get("content_block"), dict):
            blocks[_index(payload)] = dict(payload["content_block"])
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
    for (index, key), parts in deltas.items():
        block = blocks.setdefault(index, {})
        if key != "partial_json":
            block[key] = str(block.get(key, "")) + "".join(parts)
            continue
        try:
            block["input"] = orjson.loads("".join(parts) or "{}")
        except orjson.JSONDecodeError:
            block["input"] = "".join(parts)
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return message


# What a content_block_delta adds to its block: text, thinking, its signature, tool input.
DELTA_KEYS = ("text", "thinking", "signature", "partial_json")


def _event_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object in an SSE event's data, or None."""
    if event.startswith(b"data:"):
        at = 0
    else:
        at = event.find(b"\ndata:") + 1
        if at == 0:
            return None
    data = event[at + 5 :]
    if b"\n" in data.rstrip(b"\n"):  # more lines after the data line: rare, done slowly
        data = b"\n".join(
            line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
    return json_object(data)


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
