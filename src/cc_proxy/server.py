"""Serving: uvicorn (uvloop + httptools) on a socket the gateway binds itself, so that the
log names the real port even when the configuration asks for port 0."""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import math
import resource
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from cc_proxy import logs
from cc_proxy.app import Gateway
from cc_proxy.config import ConfigError, Settings, parse_listen_address, redact_url
from cc_proxy.logs import LOG_FORMAT
from cc_proxy.protocol import bounded_protocol

log = logging.getLogger("cc_proxy")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    logs.stderr_lines = logs.StderrLines()
    # No record carries thread or process names: LOG_FORMAT shows neither, and looking
    # them up for every access line is a measurable part of a small request's CPU.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Our access line per exchange says more than uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True


def flush_access_lines() -> None:
    """Access lines of the event loop's last turn, once it has stopped."""
    if logs.stderr_lines is not None:
        logs.stderr_lines.flush()


def raise_open_files_limit() -> int:
    """The soft limit of open files up to the hard one; returns the limit in force.

    Every stream holds two sockets (client and upstream), and the usual soft limit of
    1024 would cap the gateway near 500 streams, where the hard limit allows far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def bind(
    listen_address: str, port: int | None = None, *, reuse_port: bool = False
) -> socket.socket:
    """A listening socket on `listen_address` (on `port` instead of its own, when given).
    `reuse_port` lets several workers' sockets share the port, the kernel spreading the
    connections among them."""
    host, configured = parse_listen_address(listen_address)
    port = configured if port is None else port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"server.listen_address: cannot listen on {listen_address}: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, settings, the gateway) out of the garbage
    collector's sight. The collector's periodic full passes otherwise walk them all again
    and again, and a Claude Code request's parsed body (hundreds of containers) sets those
    passes off often. Measured A/B over three runs: 5-9% less CPU per 5 KB request, 6-14%
    per Claude Code one."""
    gc.collect()
    gc.freeze()


def uvicorn_server(gateway: Gateway) -> uvicorn.Server:
    config = uvicorn.Config(
        gateway,
        loop="uvloop",
        http=bounded_protocol(gateway.settings.server.client_timeout_secs),
        lifespan="on",
        log_config=None,
        access_log=False,
        # The upstream's own Server and Date headers are relayed unchanged.
        server_header=False,
        date_header=False,
        # Client addresses are not used, so X-Forwarded-For needs no middleware per request.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(gateway.settings.server.shutdown_grace_secs),
    )
    return uvicorn.Server(config)


def warn_if_exposed(settings: Settings) -> None:
    host, _ = parse_listen_address(settings.server.listen_address)
    if not is_loopback(host) and settings.server.admin_token is None:
        log.warning(
            "listening on %s without an admin token: anyone who can reach it can switch "
            "the mode; set CC_SERVER__ADMIN_TOKEN to require one",
            settings.server.listen_address,
        )


def serve(settings: Settings, on_listening: Callable[[str], None] | None = None) -> int:
    """Run the gateway until SIGTERM or SIGINT; streams in flight get the grace period."""
    raise_open_files_limit()
    gateway = Gateway(settings)
    sock = bind(settings.server.listen_address)
    server = uvicorn_server(gateway)

    # Set before the listening line, so that a signal which comes before uvicorn takes
    # the handlers over still stops the server cleanly. uvicorn re-raises the signal it
    # stopped for once it is done; this handler then does nothing more, so a signalled
    # shutdown that drained cleanly exits 0.
    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    announce(settings, url_of(sock), on_listening)
    freeze_startup_objects()
    server.run(sockets=[sock])
    flush_access_lines()
    log.info("cc-proxy stopped")
    return 0


def announce(
    settings: Settings, url: str, on_listening: Callable[[str], None] | None = None
) -> None:
    warn_if_exposed(settings)
    workers = settings.server.workers
    log.info(
        "cc-proxy listening on %s, mode %s, target %s, passthrough %s%s",
        url,
        settings.default_mode.value,
        "configured" if settings.target.url is not None else "none",
        redact_url(settings.passthrough.url),
        f", {workers} workers" if workers > 1 else "",
    )
    if on_listening is not None:
        on_listening(url)
