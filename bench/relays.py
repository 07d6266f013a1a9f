"""The relays under test, each started as its own process(es) pinned to the proxy core."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.procs import Process, free_port, python, require, start, wait_for_line, wait_for_port

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
user root;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
    access_log {dir}/{name}-access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        client_max_body_size 64m;
        client_body_buffer_size 1m;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


@dataclass
class Relay:
    """A relay (or the upstream itself, for `direct`) at `url`; `process` is what is
    measured, None for `direct`."""

    name: str
    url: str
    process: Process | None

    def pids(self) -> list[int]:
        return self.process.pids() if self.process is not None else []

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def start_upstream(name: str, core: int | None, logs: Path, *args: str) -> tuple[Process, str]:
    argv = python("bench.upstream", "--port", "0", *args)
    process = start(name, argv, core=core, log=logs / f"{name}.log")
    port = wait_for_line(process, "listening ")
    return process, f"http://127.0.0.1:{port}"


def start_nginx(upstream_url: str, core: int | None, logs: Path, name: str = "nginx") -> Relay:
    port = free_port()
    conf = logs / f"{name}.conf"
    upstream_port = upstream_url.rsplit(":", 1)[1]
    conf.write_text(NGINX_CONF.format(dir=logs, name=name, upstream=upstream_port, port=port))
    process = start(name, [require("nginx"), "-c", str(conf)], core=core, log=logs / f"{name}.log")
    wait_for_port(port, process)
    return Relay(name, f"http://127.0.0.1:{port}", process)


def minimal_argv(upstream_url: str, port: int) -> list[str]:
    return python("bench.minimal_relay", "--port", str(port), "--upstream", upstream_url)


def start_minimal(upstream_url: str, core: int | None, logs: Path, name: str = "minimal") -> Relay:
    port = free_port()
    argv = minimal_argv(upstream_url, port)
    process = start(name, argv, core=core, log=logs / f"{name}.log")
    wait_for_port(port, process)
    return Relay(name, f"http://127.0.0.1:{port}", process)


def start_cc_proxy(
    name: str,
    target_url: str,
    core: int | None,
    logs: Path,
    *,
    mode: str = "target",
    passthrough_url: str | None = None,
    workers: int = 1,
    extra_args: tuple[str, ...] = (),
) -> Relay:
    """cc-proxy as shipped: accounting on, content tracing off, the access log at INFO."""
    port = free_port()
    argv, env = cc_proxy_command(
        name,
        target_url,
        port,
        logs,
        mode=mode,
        passthrough_url=passthrough_url,
        workers=workers,
        extra_args=extra_args,
    )
    process = start(name, argv, core=core, log=logs / f"{name}.log", env=env)
    wait_for_port(port, process)
    return Relay(name, f"http://127.0.0.1:{port}", process)


def cc_proxy_command(
    name: str,
    target_url: str,
    port: int,
    logs: Path,
    *,
    mode: str = "target",
    passthrough_url: str | None = None,
    workers: int = 1,
    extra_args: tuple[str, ...] = (),
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of cc-proxy as `start_cc_proxy` runs it."""
    config = logs / "empty.toml"
    config.write_text("# the harness sets everything through the environment\n")
    env = {
        "CC_SERVER__LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "CC_DEFAULT_MODE": mode,
        # The limiter is not what is measured: room for every connection of the load.
        "CC_TARGET__MAX_CONCURRENT": "20000",
        # compare mode's records, in the run's own folder
        "CC_COMPARE__DB_PATH": str(logs / f"{name}-compare.db"),
    }
    if passthrough_url is not None:
        env["CC_PASSTHROUGH__URL"] = passthrough_url
    if workers != 1:
        env["CC_SERVER__WORKERS"] = str(workers)
    argv = python(
        "cc_proxy",
        "--config",
        str(config),
        "--target-url",
        target_url,
        "--model",
        "bench-model",
        *extra_args,
    )
    return argv, env
