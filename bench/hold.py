"""The concurrency test: hold N slow streams open through one cc-proxy process at once.

The stand-in sends one event a second; a lean asyncio client opens the streams in
batches, checks that each one answers 200 and keeps delivering events, and the proxy's
resident memory is read before and while they are held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

REQUEST = (
    b"POST /v1/messages HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    b"anthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%b"
)
BODY = (
    b'{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,'
    b'"messages":[{"role":"user","content":"hold this stream"}]}'
)
# Opened at once, so that the listen backlog never overflows.
BATCH = 250


@dataclass
class HoldResult:
    asked: int
    opened: int
    failed: int
    alive: int  # streams that kept delivering events while all were held
    rss_before_kb: int
    rss_held_kb: int
    open_secs: float
    errors: list[str]  # a few distinct reasons, when any failed

    @property
    def kb_per_stream(self) -> float:
        return (self.rss_held_kb - self.rss_before_kb) / max(1, self.opened)


class Stream:
    __slots__ = ("error", "events", "ok", "writer")

    def __init__(self) -> None:
        self.events = 0
        self.ok = False
        self.error: str | None = None
        self.writer: asyncio.StreamWriter | None = None


async def _hold(stream: Stream, port: int, opened: asyncio.Event, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4096)
        stream.writer = writer
        writer.write(REQUEST % (len(BODY), BODY))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        await reader.readuntil(b"\n\n")  # the first event
        stream.ok = True
        stream.events = 1
        opened.set()
        while not stop.is_set():
            chunk = await reader.read(4096)
            if not chunk:
                raise ConnectionError("the stream ended while held")
            stream.events += chunk.count(b"\n\n")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        stream.ok = False
        stream.error = f"{type(exc).__name__}: {exc}"
        opened.set()


async def _run(port: int, count: int, hold_secs: float, rss: Callable[[], int]) -> HoldResult:
    rss_before = rss()
    stop = asyncio.Event()
    streams = [Stream() for _ in range(count)]
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    for first in range(0, count, BATCH):
        events = []
        for stream in streams[first : first + BATCH]:
            opened = asyncio.Event()
            events.append(opened)
            tasks.append(asyncio.create_task(_hold(stream, port, opened, stop)))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
    open_secs = time.monotonic() - started
    counts = [stream.events for stream in streams]
    peak = 0
    deadline = time.monotonic() + hold_secs
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        peak = max(peak, rss())
    # Every held stream must have had events while all of them were open (one a second).
    alive = sum(
        1
        for stream, before in zip(streams, counts, strict=True)
        if stream.ok and stream.events > before
    )
    stop.set()
    for stream in streams:
        if stream.writer is not None:
            stream.writer.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    opened_count = sum(1 for stream in streams if stream.error is None and stream.events)
    return HoldResult(
        asked=count,
        opened=opened_count,
        failed=count - alive,
        alive=alive,
        rss_before_kb=rss_before,
        rss_held_kb=peak,
        open_secs=open_secs,
        errors=sorted({stream.error for stream in streams if stream.error})[:3],
    )


def hold_streams(port: int, count: int, hold_secs: float, rss: Callable[[], int]) -> HoldResult:
    return uvloop.run(_run(port, count, hold_secs, rss))
