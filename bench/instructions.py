"""Instructions per response under callgrind: the relays' own work counted, where CPU
time on this shared box moves by a quarter from one round to the next.

    python -m bench.instructions [--scenarios stream json claude_code]
        [--relays cc-proxy minimal] [--requests N] [--concurrency C] [--gap-ms MS]

Each relay runs under `valgrind --tool=callgrind` (Debian's `valgrind`) with counting
off, against the bench's stand-in upstream. After a warm-up, counting is switched on
(`callgrind_control -i on`), N requests are made at concurrency C, and the count is
dumped and divided by N. Valgrind counts user-space instructions only: the kernel's
share (the sockets) is not in it. How many SSE events one read of the upstream holds
depends on timing, and a read costs the same whatever it holds, so a stream's count
depends on the pacing: `--gap-ms 20` makes each read hold one event, as a model paces
them (at 4 ms, a relay slowed down by valgrind on a busy box read two or three at once,
and counts of the same code moved by a third); the default, a fast upstream at
concurrency 10, reads many events at once, as the bench's load does. Counts repeat to
within about 1% at the default settings and at `--gap-ms 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.__main__ import scenarios
from bench.load import Scenario, request_bytes
from bench.procs import REPO, free_port, start, wait_for_port
from bench.relays import cc_proxy_command, minimal_argv, start_upstream

RELAYS = ("cc-proxy", "minimal")
SUMMARY = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    """One request, its answer read to the end (chunked or of known length)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    length = CONTENT_LENGTH.search(head)
    if length is not None:
        await reader.readexactly(int(length.group(1)))
        return
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        await reader.readexactly(size + 2)
    await reader.readexactly(2)


async def _load(url: str, scenario: Scenario, requests: int, concurrency: int) -> None:
    host, port, request = request_bytes(url, scenario)

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(count):
                await _exchange(reader, writer, request)
        finally:
            writer.close()

    per_connection = max(1, requests // concurrency)
    await asyncio.gather(*(connection(per_connection) for _ in range(concurrency)))


def _callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=True, timeout=60)


def count(
    relay: str, scenario: Scenario, upstream_url: str, args: argparse.Namespace, workdir: Path
) -> float:
    """Instructions per response of `relay`, run under callgrind."""
    port = free_port()
    out = workdir / f"callgrind.{relay}.{scenario.name}"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    env: dict[str, str] = {}
    if relay == "minimal":
        argv = minimal_argv(upstream_url, port)
    else:
        argv, env = cc_proxy_command(relay, upstream_url, port, workdir)
    process = start(relay, valgrind + argv, core=None, log=workdir / f"{relay}.log", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, process, timeout=300)  # valgrind starts Python slowly
        # Warm-up, not counted: imports, pools, caches.
        asyncio.run(_load(url, scenario, args.concurrency * 2, args.concurrency))
        pid = str(process.popen.pid)
        _callgrind_control("-i", "on", pid)
        _callgrind_control("--zero", pid)
        asyncio.run(_load(url, scenario, args.requests, args.concurrency))
        _callgrind_control("--dump", pid)
        _callgrind_control("-i", "off", pid)
    finally:
        process.stop()
    dumped = out.with_name(out.name + ".1")
    found = SUMMARY.search(dumped.read_bytes())
    if found is None:
        raise RuntimeError(f"callgrind wrote no count for {relay}: {dumped}")
    requests: int = max(1, args.requests // args.concurrency) * args.concurrency
    instructions = int(found.group(1))
    return instructions / requests


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed: apt-get install valgrind")
    found: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cc-proxy-instructions-") as tmp:
        workdir = Path(tmp)
        chosen = [s for s in scenarios(workdir) if s.name in args.scenarios]
        gap = ("--gap-ms", str(args.gap_ms))
        upstream, upstream_url = start_upstream("upstream", None, workdir, *gap)
        try:
            for scenario in chosen:
                found[scenario.name] = {}
                for relay in args.relays:
                    started = time.monotonic()
                    per_response = count(relay, scenario, upstream_url, args, workdir)
                    found[scenario.name][relay] = per_response
                    print(
                        f"instructions: {scenario.name} {relay}: {per_response / 1000:,.1f} k "
                        f"per response ({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
        finally:
            upstream.stop()
    return found


def render(found: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    pacing = f"upstream {args.gap_ms:g} ms between events" if args.gap_ms else "fast upstream"
    lines = [
        f"Instructions per response under callgrind ({args.requests} requests at "
        f"concurrency {args.concurrency}, {pacing}; user space only)",
        "",
        "| scenario | relay | instructions per response | × minimal |",
        "|---|---|---:|---:|",
    ]
    for scenario, relays in found.items():
        base = relays.get("minimal")
        for relay, value in relays.items():
            ratio = f"{value / base:.2f}" if base else "–"
            lines.append(f"| {scenario} | {relay} | {value / 1000:,.1f} k | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    names = ("json", "stream", "claude_code")
    parser.add_argument("--scenarios", nargs="+", choices=names, default=list(names))
    parser.add_argument("--relays", nargs="+", choices=RELAYS, default=list(RELAYS))
    parser.add_argument("--requests", type=int, default=100, help="counted per relay")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--gap-ms", type=float, default=0, help="pace the upstream's events")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    found = run(args)
    table = render(found, args)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"-gap{args.gap_ms:g}ms" if args.gap_ms else ""
    (args.out / f"instructions{suffix}.json").write_text(
        json.dumps({"settings": vars(args) | {"out": str(args.out)}, "found": found}, indent=2)
        + "\n"
    )
    (args.out / f"instructions{suffix}.md").write_text(table)


if __name__ == "__main__":
    main()
