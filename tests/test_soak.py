"""A bounded soak of a real `cc-proxy` process: mixed streaming, JSON, upstream errors,
broken streams and clients that hang up, many at a time.

After the warm-up and again at the end, with every client gone, the process's RSS and
open file descriptors are read from /proc: the end must be within 5% of the warm-up.
`/api/stats` must equal what the clients received, counted on their side.

The suite runs a short soak; the long one is
`SOAK_REQUESTS=50000 .venv/bin/pytest -s tests/test_soak.py` (a few minutes here).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from harness import Reply, ScriptedUpstream, Seen, open_fds, wait_until
from test_faults import ASK, ERROR_EVENT, HEADERS, Counted, events_for, moved, stats_of
from test_process import GatewayProcess, gateway_env

REQUESTS = int(os.environ.get("SOAK_REQUESTS", "2000"))
WARM_UP = max(200, REQUESTS // 10)
CLIENTS = 8
# One in ten requests of each kind but "stream", which is half of them.
KINDS = ("stream",) * 5 + ("json", "rate-limited", "broken", "error-event", "left")
EVENTS = events_for()
LEFT_AFTER = 3  # events a departing client reads before it hangs up


def reply_for(seen: Seen) -> Reply | None:
    kind = seen.headers.get("x-soak-kind")
    if kind == "rate-limited":
        error = {"type": "error", "error": {"type": "rate_limit_error", "message": "later"}}
        return Reply.json(error, status=429, headers={"retry-after": "1"})
    if kind == "broken":
        return Reply.sse(EVENTS[:4], then="close")
    if kind == "error-event":
        return Reply.sse([*EVENTS[:4], ERROR_EVENT])
    if kind == "left":
        return Reply.sse(EVENTS[:LEFT_AFTER], then="hang")
    return None  # the stand-in model: streamed or JSON, as asked


async def one_request(session: aiohttp.ClientSession, url: str, kind: str, got: Counted) -> None:
    body = {**ASK, "stream": kind != "json"}
    headers = {**HEADERS, "content-type": "application/json", "x-soak-kind": kind}
    async with session.post(url + "/v1/messages", data=orjson.dumps(body), headers=headers) as r:
        if kind == "left":
            raw = b""
            while raw.count(b"\n\n") < LEFT_AFTER:
                chunk = await r.content.readany()
                assert chunk, raw
                raw += chunk
            r.close()  # hang up mid-stream
            got.add_sse(r.status, raw, left=True)
            return
        raw = await r.read()
        if r.content_type == "text/event-stream":
            got.add_sse(r.status, raw)
        else:
            got.add_json(r.status, raw)


async def soak(url: str, count: int, start: int, got: Counted) -> None:
    """`count` requests from CLIENTS clients at once, then every connection closed."""
    numbers = iter(range(start, start + count))
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            for number in numbers:
                await one_request(session, url, KINDS[number % len(KINDS)], got)

        async with asyncio.timeout(60 + count * 0.05):  # a bound, never an expectation
            await asyncio.gather(*(client() for _ in range(CLIENTS)))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def at_rest(pid: int, target: ScriptedUpstream) -> tuple[int, int]:
    """(RSS in KiB, open fds less the idle pooled upstream connections) once the gateway
    has closed what its departed clients left: the same reading ten times running."""
    readings: list[tuple[int, int]] = []

    def steady() -> bool:
        readings.append((rss_kib(pid), open_fds(pid) - target.open_connections))
        time.sleep(0.05)
        return len(readings) >= 10 and len({fds for _, fds in readings[-10:]}) == 1

    assert wait_until(steady, timeout=60)
    return readings[-1]


@pytest.mark.slow
def test_soak_keeps_memory_and_fds_flat_and_stats_equal_to_what_clients_received(
    target: ScriptedUpstream, tmp_path: Any
) -> None:
    target.pick = reply_for
    target.record = False
    process = GatewayProcess(
        ["--target-url", target.url],
        gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0"),
        tmp_path,
    )
    try:
        url = process.local_url()
        before = stats_of(url)
        got = Counted()
        asyncio.run(soak(url, WARM_UP, 0, got))
        rss_warm, fds_warm = at_rest(process.proc.pid, target)
        asyncio.run(soak(url, REQUESTS - WARM_UP, WARM_UP, got))
        rss_end, fds_end = at_rest(process.proc.pid, target)
        assert wait_until(lambda: moved(before, stats_of(url)) == got, timeout=30)
    finally:
        process.kill()
    kinds = list(itertools.islice(itertools.cycle(KINDS), REQUESTS))
    assert got.total_requests == REQUESTS
    assert got.client_disconnects == kinds.count("left")
    assert got.errors == sum(kinds.count(k) for k in ("rate-limited", "broken", "error-event"))
    print(  # the figures, for `pytest -s`
        f"\nsoak of {REQUESTS} requests: RSS {rss_warm} KiB after warm-up, {rss_end} KiB at"
        f" the end; open fds {fds_warm} and {fds_end}; stats {got}"
    )
    assert abs(rss_end - rss_warm) <= 0.05 * rss_warm
    assert abs(fds_end - fds_warm) <= 0.05 * fds_warm
