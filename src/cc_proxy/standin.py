"""The embedded stand-in target: a small Messages API server for demos, tests and benchmarks.

It answers like a model would, streaming or not, with usage: when the request offers
tools and the conversation has no tool result yet, it calls one (Bash when offered);
otherwise it replies with text. `count_tokens` is absent, as on vLLM and SGLang.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from cc_proxy.estimate import estimate_input_tokens

STANDIN_MODEL = "standin-1"
_ids = itertools.count(1)


def sse_event(event: dict[str, Any]) -> bytes:
    name: str = event["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def message_events(message: dict[str, Any], *, pieces: int | None = None) -> list[bytes]:
    """The Anthropic SSE events that stream `message` (a complete Messages answer).

    Text is split into word deltas (or `pieces` deltas); tool input into one JSON delta;
    a thinking block into one thinking delta and one signature delta, as Anthropic sends it.
    """
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "ping"},
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                }
            )
            for piece in _split(block["text"], pieces):
                delta = {"type": "text_delta", "text": piece}
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
        elif block["type"] == "thinking":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                }
            )
            for delta in (
                {"type": "thinking_delta", "thinking": block["thinking"]},
                {"type": "signature_delta", "signature": block["signature"]},
            ):
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
        else:
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "input": {}},
                }
            )
            partial = orjson.dumps(block["input"]).decode()
            delta = {"type": "input_json_delta", "partial_json": partial}
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return [sse_event(event) for event in events]


def _split(text: str, pieces: int | None) -> Iterator[str]:
    if pieces is None:
        words = text.split(" ")
        yield from (w if i == 0 else " " + w for i, w in enumerate(words))
        return
    size = max(1, -(-len(text) // pieces))
    yield from (text[i : i + size] for i in range(0, len(text), size))


def _last_user_text(body: dict[str, Any]) -> tuple[str, bool]:
    """The text of the last user turn, and whether that turn carries a tool result."""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content, False
        texts: list[str] = []
        has_result = False
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict):
                has_result |= block.get("type") == "tool_result"
                if block.get("type") == "text":
                    texts.append(str(block.get("text", "")))
        return " ".join(texts), has_result
    return "", False


def answer(body: dict[str, Any], *, thinking_signature: str | None = None) -> dict[str, Any]:
    """The stand-in model's complete answer to a Messages request; with a
    `thinking_signature`, it thinks first, in a block signed with it."""
    text, has_result = _last_user_text(body)
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "name" in t]
    model = body.get("model") if isinstance(body.get("model"), str) else STANDIN_MODEL
    content: list[dict[str, Any]]
    if tools and not has_result:
        bash = next((t for t in tools if t["name"] == "Bash"), None)
        tool = bash or tools[0]
        tool_input = {"command": "echo hello from the stand-in"} if bash else {}
        content = [
            {"type": "text", "text": "Let me run that."},
            {
                "type": "tool_use",
                "id": f"toolu_standin_{next(_ids)}",
                "name": tool["name"],
                "input": tool_input,
            },
        ]
        stop_reason = "tool_use"
        output_tokens = 12
    else:
        said = " ".join(text.split()[:12]) or "nothing"
        reply = (
            "Hello from the cc-proxy stand-in model."
            if not has_result
            else "The command ran; here is what it printed."
        )
        content = [{"type": "text", "text": f"{reply} You said: {said}"}]
        stop_reason = "end_turn"
        output_tokens = len(content[0]["text"].split())
    if thinking_signature is not None:
        thought = {
            "type": "thinking",
            "thinking": "Thinking it over.",
            "signature": thinking_signature,
        }
        content = [thought, *content]
    return {
        "id": f"msg_standin_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": estimate_input_tokens(body),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, dumps=lambda v: orjson.dumps(v).decode())


def build_standin(event_delay: float = 0.0) -> web.Application:
    """The stand-in as an aiohttp app; `event_delay` seconds pass between SSE events."""

    async def messages(request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "invalid_request_error", "messages: field required")
        message = answer(body)
        request_id = f"req_standin_{next(_ids)}"
        if body.get("stream") is not True:
            return web.Response(
                body=orjson.dumps(message),
                content_type="application/json",
                headers={"request-id": request_id},
            )
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                "request-id": request_id,
            }
        )
        await response.prepare(request)
        for event in message_events(message):
            await response.write(event)
            if event_delay:
                await asyncio.sleep(event_delay)
        await response.write_eof()
        return response

    async def not_found(request: web.Request) -> web.Response:
        return _error(
            404, "not_found_error", f"the stand-in has no {request.method} {request.path}"
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/messages", messages)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def start_standin(
    host: str = "127.0.0.1", port: int = 0, event_delay: float = 0.0
) -> tuple[web.AppRunner, str]:
    """Start the stand-in in the running loop; returns its runner and base URL."""
    runner = web.AppRunner(build_standin(event_delay), access_log=None)
    await runner.setup()
    sock = socket.create_server((host, port))
    await web.SockSite(runner, sock).start()
    return runner, f"http://{host}:{sock.getsockname()[1]}"
