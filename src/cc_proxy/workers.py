"""Several worker processes on one port (`server.workers = N`), to use more than one core.

The parent binds one socket per worker with SO_REUSEPORT on the same address, so the
kernel spreads new connections across the workers, makes the shared state (mode,
tracing switch, counters: `cc_proxy.shared`), then forks. Each worker is a whole
gateway on its own event loop; only that state is common. The parent waits: SIGTERM or
SIGINT is passed on to every worker, each drains its streams for the grace period, and
the parent exits 0 when they all did. A worker that dies on its own stops the others
and the parent exits non-zero, so that a supervisor restarts the whole gateway.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from types import FrameType

from cc_proxy.app import Gateway
from cc_proxy.config import Settings
from cc_proxy.metrics import share_across_workers
from cc_proxy.modes import number_of
from cc_proxy.server import (
    announce,
    bind,
    flush_access_lines,
    freeze_startup_objects,
    raise_open_files_limit,
    url_of,
    uvicorn_server,
)
from cc_proxy.shared import SharedState
from cc_proxy.stats import WIDTH

log = logging.getLogger("cc_proxy")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def bind_all(listen_address: str, count: int) -> list[socket.socket]:
    first = bind(listen_address, reuse_port=True)
    port = first.getsockname()[1]  # the real one, when the address asks for port 0
    sockets = [first]
    try:
        sockets += [bind(listen_address, port, reuse_port=True) for _ in range(count - 1)]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def shared_state(settings: Settings, metrics_dir: str) -> SharedState:
    state = SharedState(settings.server.workers, WIDTH, metrics_dir)
    state.mode().value = number_of(settings.default_mode)
    state.tracing().value = int(settings.tracing.enabled)
    return state


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its parent (killed with SIGKILL, say): it would hold the
    port and serve on with nobody to stop it. Linux tells it with SIGTERM, so it drains."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent was gone before the request took effect
        os._exit(1)


def _run_worker(settings: Settings, state: SharedState, index: int, sock: socket.socket) -> int:
    if state.metrics_dir is not None:
        share_across_workers(state.metrics_dir, index)
    server = uvicorn_server(Gateway(settings, state, index))

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    freeze_startup_objects()
    server.run(sockets=[sock])
    flush_access_lines()
    return 0 if server.started else 3


def serve_workers(settings: Settings, on_listening: Callable[[str], None] | None = None) -> int:
    count = settings.server.workers
    raise_open_files_limit()  # before the fork: every worker inherits it
    sockets = bind_all(settings.server.listen_address, count)
    url = url_of(sockets[0])
    # The workers' Prometheus files: made empty for this run, removed when it ends.
    metrics_dir = tempfile.mkdtemp(prefix="cc-proxy-metrics-")
    state = shared_state(settings, metrics_dir)
    stopping = False
    workers: dict[int, int] = {}

    def stop(signum: int | None = None, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    parent = os.getpid()
    for index, sock in enumerate(sockets):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent(parent)
                for other in sockets:
                    if other is not sock:
                        other.close()
                code = _run_worker(settings, state, index, sock)
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = index
    for sock in sockets:
        sock.close()
    announce(settings, url, on_listening)
    exit_code = 0
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = workers.pop(pid, -1)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not stopping:
            log.error("worker %d exited with code %d; stopping the others", index, code)
            exit_code = exit_code or 1
            stop()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("cc-proxy stopped")
    return exit_code
