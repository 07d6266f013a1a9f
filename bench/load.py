"""The load: wrk with a Lua script for throughput, latency and CPU per request, and a small
asyncio client for the time to first byte."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

from bench.procs import pinned, require

WRK_SCRIPT = """\
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = "bench-client-key"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"status_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""

HEADERS = (
    b"content-type: application/json\r\nanthropic-version: 2023-06-01\r\n"
    b"x-api-key: bench-client-key\r\n"
)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str
    body: Path
    streaming: bool


@dataclass
class LoadResult:
    requests: int
    seconds: float
    socket_errors: int
    status_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    url: str,
    scenario: Scenario,
    *,
    connections: int,
    seconds: float,
    core: int | None,
    workdir: Path,
) -> LoadResult:
    script = workdir / "bench.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    argv = [
        require("wrk"),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url + scenario.path,
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
        env={"BENCH_BODY": str(scenario.body), "PATH": "/usr/bin:/bin"},
        preexec_fn=pinned(core),
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            figures = json.loads(line[6:])
            return LoadResult(
                requests=figures["requests"],
                seconds=figures["duration_us"] / 1e6,
                socket_errors=figures["socket_errors"],
                status_errors=figures["status_errors"],
                p50_ms=figures["p50_us"] / 1000,
                p99_ms=figures["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no figures: {done.stdout}\n{done.stderr}")


def request_bytes(url: str, scenario: Scenario) -> tuple[str, int, bytes]:
    """(host, port, the request as sent) for `scenario` against the relay at `url`."""
    parts = urlsplit(url)
    body = scenario.body.read_bytes()
    head = b"POST %b HTTP/1.1\r\nhost: %b\r\n%bcontent-length: %d\r\n\r\n" % (
        scenario.path.encode(),
        parts.netloc.encode(),
        HEADERS,
        len(body),
    )
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port, head + body


async def _one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[float, float]:
    """Send one streaming request on a kept-alive connection; seconds to the first body
    byte and to the end of the (chunked) answer."""
    started = time.perf_counter()
    writer.write(request)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's headers")
        buffer += chunk
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    if not buffer:
        buffer = await reader.read(65536)
    first = time.perf_counter() - started
    while not buffer.endswith(b"\r\n0\r\n\r\n") and buffer != b"0\r\n\r\n":
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("closed mid-answer")
        buffer = buffer[-16:] + chunk
    return first, time.perf_counter() - started


async def _timed(
    url: str, scenario: Scenario, concurrency: int, per_connection: int
) -> list[tuple[float, float]]:
    host, port, request = request_bytes(url, scenario)
    times: list[tuple[float, float]] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(per_connection):
                times.append(await _one(reader, writer, request))
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return times


@dataclass
class TtfbResult:
    samples: int
    p50_ms: float
    p99_ms: float


def _run_timed(
    url: str, scenario: Scenario, concurrency: int, requests: int, timeout: float
) -> list[tuple[float, float]]:
    """`requests` spread over `concurrency` connections, within `timeout` seconds."""
    per_connection = max(1, requests // concurrency)
    timed = _timed(url, scenario, concurrency, per_connection)
    return uvloop.run(asyncio.wait_for(timed, timeout))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure_ttfb(url: str, scenario: Scenario, concurrency: int, requests: int) -> TtfbResult:
    first = [f * 1000 for f, _ in _run_timed(url, scenario, concurrency, requests, 300)]
    return TtfbResult(
        samples=len(first),
        p50_ms=statistics.median(first),
        p99_ms=_quantile(first, 0.99),
    )


@dataclass
class LatencyResult:
    """Client-side latency of streamed requests: to the first body byte and to the end."""

    samples: int
    first_p50_ms: float
    first_p90_ms: float
    end_p50_ms: float
    end_p90_ms: float


def measure_latency(url: str, scenario: Scenario, concurrency: int, requests: int) -> LatencyResult:
    timed = _run_timed(url, scenario, concurrency, requests, 600)
    first = [f * 1000 for f, _ in timed]
    end = [e * 1000 for _, e in timed]
    return LatencyResult(
        samples=len(timed),
        first_p50_ms=statistics.median(first),
        first_p90_ms=_quantile(first, 0.9),
        end_p50_ms=statistics.median(end),
        end_p90_ms=_quantile(end, 0.9),
    )
