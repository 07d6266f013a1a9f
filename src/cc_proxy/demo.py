"""`cc-proxy demo`: the gateway on its embedded stand-in target, with a streamed request
shown as it flows through, then the stats it produced. While it serves on, a short,
bounded trickle of varied requests gives the dashboard (`/ui`) something to show."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

import aiohttp

from cc_proxy.app import Gateway
from cc_proxy.config import Settings
from cc_proxy.server import bind, url_of, uvicorn_server
from cc_proxy.standin import start_standin

DEMO_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "stream": True,
    "messages": [{"role": "user", "content": "Say hello through the gateway."}],
}
_BASH = {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}}
# What Claude Code sends, in miniature: streamed turns, a tool call, a Haiku subagent's
# non-streamed request.
DEMO_TRAFFIC: list[dict[str, Any]] = [
    {**DEMO_REQUEST, "messages": [{"role": "user", "content": "List the files here."}]},
    {**DEMO_REQUEST, "tools": [_BASH], "messages": [{"role": "user", "content": "Run ls."}]},
    {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Summarise this session in five words."}],
    },
    {**DEMO_REQUEST, "messages": [{"role": "user", "content": "Explain the plan " * 40}]},
]
TRAFFIC_REQUESTS = 30
TRAFFIC_EVERY_SECS = 2.0
_HEADERS = {"x-api-key": "demo-key", "anthropic-version": "2023-06-01"}


async def run_demo(settings_for: Any, *, once: bool, out: TextIO = sys.stdout) -> int:
    """`settings_for(target_url)` builds the gateway's settings around the stand-in."""
    standin, standin_url = await start_standin()
    settings: Settings = settings_for(standin_url)
    gateway = Gateway(settings)
    sock = bind(settings.server.listen_address)
    url = url_of(sock)
    server = uvicorn_server(gateway)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                return 1
            await asyncio.sleep(0.01)
        print(
            f"cc-proxy {url} -> stand-in target {standin_url} (mode {gateway.modes.current})",
            file=out,
        )
        await show_request(url, out)
        if not once:
            print(
                f"\nServing until Ctrl-C. Point Claude Code at it:\n"
                f"  ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY=any claude\n"
                f"Dashboard: {url}/ui   Prometheus: {url}/metrics\n"
                f"(demo traffic: {TRAFFIC_REQUESTS} more requests, one every "
                f"{TRAFFIC_EVERY_SECS:g} s)",
                file=out,
                flush=True,
            )
            traffic = asyncio.create_task(send_traffic(url))
            try:
                await serving
            finally:
                traffic.cancel()
            return 0
        server.should_exit = True
        await serving
        return 0
    finally:
        if not serving.done():
            server.should_exit = True
            await serving
        await standin.cleanup()


async def show_request(url: str, out: TextIO) -> None:
    async with aiohttp.ClientSession() as session:
        print(f"\n> POST {url}/v1/messages  (stream: true)", file=out)
        async with session.post(f"{url}/v1/messages", json=DEMO_REQUEST, headers=_HEADERS) as resp:
            print(
                f"< {resp.status} {resp.headers.get('content-type')}  "
                f"x-cc-proxy-request-id: {resp.headers.get('x-cc-proxy-request-id')}",
                file=out,
            )
            async for line in resp.content:
                text = line.decode().rstrip("\n")
                if text:
                    print(f"< {text}", file=out, flush=True)
        async with session.get(f"{url}/api/stats") as resp:
            stats = await resp.json()
        print(f"\n> GET {url}/api/stats\n< {json.dumps(stats)}", file=out, flush=True)


async def send_traffic(
    url: str, count: int = TRAFFIC_REQUESTS, every_secs: float = TRAFFIC_EVERY_SECS
) -> None:
    """`count` requests from `DEMO_TRAFFIC`, `every_secs` apart, answers read and dropped."""
    async with aiohttp.ClientSession() as session:
        for number in range(count):
            await asyncio.sleep(every_secs)
            body = DEMO_TRAFFIC[number % len(DEMO_TRAFFIC)]
            try:
                async with session.post(f"{url}/v1/messages", json=body, headers=_HEADERS) as r:
                    await r.read()
            except aiohttp.ClientError:
                return  # the gateway is going away
