"""`cc-proxy demo`: the gateway on its embedded stand-in target, with a streamed request
shown as it flows through, then the stats it produced."""

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
                f"  ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY=any claude",
                file=out,
                flush=True,
            )
            await serving
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
    headers = {"x-api-key": "demo-key", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        print(f"\n> POST {url}/v1/messages  (stream: true)", file=out)
        async with session.post(f"{url}/v1/messages", json=DEMO_REQUEST, headers=headers) as resp:
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
