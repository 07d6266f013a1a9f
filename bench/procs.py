"""The processes of a benchmark run: starting them pinned to a core, and reading their CPU
time and memory from /proc."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cores() -> tuple[int, int]:
    """(proxy core, load core): the proxy on one, the load and upstreams on another."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return available[0], available[0]
    return available[0], available[1]


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.extend(int(child) for child in text.split())
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx's workers, cc-proxy's workers)."""
    pids = [pid]
    for child in children(pid):
        pids.extend(tree(child))
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of the processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def core_ticks(core_list: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Per core, (busy, all) clock ticks since boot, from /proc/stat: two readings give
    how busy each core was in between (`busy_fraction`)."""
    wanted = set(core_list)
    found: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in wanted:
            continue
        ticks = [int(value) for value in rest.split()[:8]]  # through steal; guest is in user
        idle = ticks[3] + ticks[4]  # idle, iowait
        found[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return found


def busy_fraction(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int
) -> float | None:
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return round(busy / total, 3) if total > 0 else None


def memory_kb(pids: Iterable[int], key: str = "VmRSS") -> int:
    """Sum of a /proc/PID/status figure (VmRSS now, VmHWM peak) over the processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def fd_hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's fd limit towards `wanted` (the hard limit too, if privileged);
    returns the soft limit now in force, which children inherit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = min(max(wanted, soft), hard)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def pinned(core: int | None) -> Callable[[], None]:
    """What a child runs before exec: pinned to `core`, or, for None, free on every core
    (the harness pins itself to the load core, and a child would inherit that)."""
    cores = {core} if core is not None else set(range(os.cpu_count() or 1))

    def pin() -> None:
        os.sched_setaffinity(0, cores)

    return pin


@dataclass
class Process:
    """A started process; its CPU and memory include its descendants."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None = None
    extra_pids: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        return tree(self.popen.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start(
    name: str,
    argv: Sequence[str],
    *,
    core: int | None,
    log: Path,
    env: dict[str, str] | None = None,
) -> Process:
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            preexec_fn=pinned(core),  # noqa: PLW1509 - only sets the CPU affinity
        )
    return Process(name, popen, log)


# A process that only spins, at the lowest priority there is: any other runnable task on
# its core takes the core from it at once, so it never delays what is measured.
_SPIN = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass"


@contextlib.contextmanager
def awake(core_list: Iterable[int]) -> Iterator[None]:
    """Keeps the cores from halting while latency is measured.

    A core with nothing to run halts, and on a virtual machine a halted vCPU wakes only
    when the host schedules it again: here that adds about 0.8 ms to a wake-up, against
    tens of microseconds for one that is still polling. At concurrency 1 the client, the
    relay and the upstream each wait on the others, so a relay that takes more than a
    couple of hundred microseconds to answer finds the client's core halted, and the
    time to first byte measures the host's scheduler. SCHED_IDLE spinners (the usual
    `idle=poll` of latency benchmarks, without a reboot) keep every core awake; what they
    burn is never counted, as CPU is read per relay process."""
    spinners = [
        subprocess.Popen(
            [sys.executable, "-c", _SPIN],
            stdin=subprocess.DEVNULL,
            preexec_fn=pinned(core),  # noqa: PLW1509 - only sets the CPU affinity
        )
        for core in sorted(set(core_list))
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def wait_for_port(port: int, process: Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited early; see {process.log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} did not listen on {port} within {timeout}s")


def wait_for_line(process: Process, prefix: str, timeout: float = 30) -> str:
    assert process.log is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in process.log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited early; see {process.log}")
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} printed no {prefix!r} within {timeout}s")


def require(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
    if path is None:
        raise SystemExit(f"bench: {tool} not found; bench/run installs it (apt-get install {tool})")
    return path
