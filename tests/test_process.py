"""The `cc-proxy` program as a user runs it: real subprocesses, real sockets.

Start-up refusals and configuration errors (SPEC.md §1, §2), the listening line, the
admin-token warning, SIGTERM/SIGINT (§4), the demo (§6), and that no API key or bearer
token ever reaches the program's output.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import pytest
import trustme

from cc_proxy.standin import answer, message_events
from harness import (
    Gate,
    LoopThread,
    RecordingUpstream,
    Reply,
    ScriptedUpstream,
    json_answer,
    wait_until,
)

SRC = Path(__file__).resolve().parent.parent / "src"

TARGET_KEY = "proc-target-key-5f1c2e"
PASSTHROUGH_KEY = "proc-passthrough-key-8a7d33"
ADMIN_TOKEN = "proc-admin-token-c04e19"
CLIENT_KEY = "sk-ant-proc-client-key-61b0"
WRONG_TOKEN = "proc-wrong-bearer-77aa02"
SECRETS = (TARGET_KEY, PASSTHROUGH_KEY, ADMIN_TOKEN, CLIENT_KEY, WRONG_TOKEN)

LISTENING = re.compile(r"cc-proxy listening on (http://[^\s,]+:(\d+))")
STREAM_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "count to thirty"}],
}
WAIT = 30.0  # upper bound of every wait for the program; never a timing expectation


def gateway_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any CC_* variable, the worktree's code first on the
    path, and the two upstream API keys set (they must never show in the output)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["CC_TARGET__API_KEY"] = TARGET_KEY
    env["CC_PASSTHROUGH__API_KEY"] = PASSTHROUGH_KEY
    env.update(overrides)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cc_proxy", *args]


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret reached the output: {secret}"


def run_to_end(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run cc-proxy to completion (killed if it outlives WAIT); its output is checked for
    secrets."""
    done = subprocess.run(  # noqa: PLW1510 - the exit code is what the tests examine
        command(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=WAIT
    )
    assert_no_secrets(done.stdout + done.stderr)
    return done


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


class GatewayProcess:
    """A running `cc-proxy`, its stdout and stderr collected line by line as they come."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            command(*args),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout)),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @staticmethod
    def _collect(stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_for_stderr(self, pattern: re.Pattern[str]) -> re.Match[str]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for line in list(self.stderr):
                if match := pattern.search(line):
                    return match
            if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                break
            time.sleep(0.01)
        raise AssertionError(f"no line matching {pattern.pattern!r}; output:\n{self.output()}")

    def listening(self) -> tuple[str, int]:
        """The URL and port from the 'cc-proxy listening on …' line."""
        match = self.wait_for_stderr(LISTENING)
        return match.group(1), int(match.group(2))

    def local_url(self) -> str:
        _, port = self.listening()
        return f"http://127.0.0.1:{port}"

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(WAIT)
        for reader in self._readers:
            reader.join(WAIT)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for reader in self._readers:
            reader.join(WAIT)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Any]:
    """Start cc-proxy subprocesses (in tmp_path unless told); all are killed at the end,
    and none may have printed a secret."""
    started: list[GatewayProcess] = []

    def start(args: list[str], env: dict[str, str], cwd: Path = tmp_path) -> GatewayProcess:
        process = GatewayProcess(args, env, cwd)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    for process in started:
        assert_no_secrets(process.output())


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
            return False
    except ConnectionRefusedError:
        return True


# --- configuration errors and start-up refusals ------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "file", "named"),
    [
        pytest.param(
            ["--target-url", "http://127.0.0.1:9"],
            {"CC_TARGET__MAX_CONCURRENT": "plenty"},
            None,
            ["target.max_concurrent", "CC_TARGET__MAX_CONCURRENT"],
            id="wrong-type-in-environment",
        ),
        pytest.param(
            ["--target-url", "http://127.0.0.1:9"],
            {"CC_SERVER__BOGUS": "1"},
            None,
            ["server.bogus", "CC_SERVER__BOGUS"],
            id="unknown-key-in-environment",
        ),
        pytest.param(
            ["--target-url", "http://127.0.0.1:9"],
            {},
            "[server]\nlisten_adress = '127.0.0.1:0'\n",
            ["server.listen_adress", "cc-proxy.toml"],
            id="unknown-key-in-file",
        ),
        pytest.param(
            ["--target-url", "http://127.0.0.1:9"],
            {},
            "[tracing]\nlog_level = 'chatty'\n",
            ["tracing.log_level", "cc-proxy.toml"],
            id="invalid-log-level-in-file",
        ),
        pytest.param(
            ["--target-url", "gpu-box:8000"],
            {},
            None,
            ["target.url", "--target-url"],
            id="malformed-url-on-command-line",
        ),
        pytest.param(
            [],
            {},
            f"[target]\napi_key = '{TARGET_KEY}'\n",
            ["target.api_key", "cc-proxy.toml", "CC_TARGET__API_KEY"],
            id="secret-in-file",
        ),
        pytest.param(
            ["demo", "--once", "--listen", "localhost"],
            {},
            None,
            ["server.listen_address", "--listen"],
            id="invalid-listen-address-for-demo",
        ),
    ],
)
def test_config_error_exits_2_with_one_line_naming_key_and_source(
    tmp_path: Path, args: list[str], env: dict[str, str], file: str | None, named: list[str]
) -> None:
    if file is not None:
        (tmp_path / "cc-proxy.toml").write_text(file)
    done = run_to_end(args, gateway_env(**env), tmp_path)
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    for name in named:
        assert name in lines[0]


def test_address_already_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = run_to_end(
            ["--target-url", "http://127.0.0.1:9"],
            gateway_env(CC_SERVER__LISTEN_ADDRESS=address),
            tmp_path,
        )
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert "server.listen_address" in lines[0]
    assert address in lines[0]
    assert "Traceback" not in done.stderr


def test_a_password_in_a_malformed_url_is_not_echoed(tmp_path: Path) -> None:
    done = run_to_end(
        ["--target-url", "http://gpu:hunter2-secret@[broken"], gateway_env(), tmp_path
    )
    assert done.returncode == 2
    assert "target.url" in error_lines(done.stderr)[0]
    assert "hunter2-secret" not in done.stderr


def test_missing_config_file_named_on_command_line_exits_2(tmp_path: Path) -> None:
    done = run_to_end(
        ["--config", "absent.toml", "--target-url", "http://127.0.0.1:9"],
        gateway_env(),
        tmp_path,
    )
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1
    assert "absent.toml" in lines[0]


def test_start_up_refused_for_anthropic_only_default_without_flag(tmp_path: Path) -> None:
    done = run_to_end([], gateway_env(CC_DEFAULT_MODE="anthropic-only"), tmp_path)
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1
    assert "--allow-anthropic-only" in lines[0]


def test_start_up_refused_without_target_url(tmp_path: Path) -> None:
    done = run_to_end([], gateway_env(), tmp_path)
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1
    assert "--target-url" in lines[0]
    assert "CC_TARGET__URL" in lines[0]


def test_anthropic_only_default_starts_with_flag(launch: Any) -> None:
    gateway: GatewayProcess = launch(
        ["--allow-anthropic-only"],
        gateway_env(CC_DEFAULT_MODE="anthropic-only", CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0"),
    )
    health = httpx.get(f"{gateway.local_url()}/health", timeout=WAIT).json()
    assert health["mode"] == "anthropic-only"


# --- running -------------------------------------------------------------------------------


def test_logs_listening_line_with_the_real_port(launch: Any, target: ScriptedUpstream) -> None:
    gateway: GatewayProcess = launch(
        ["--target-url", target.url], gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0")
    )
    url, port = gateway.listening()
    assert url == f"http://127.0.0.1:{port}"
    assert port != 0
    assert httpx.get(f"{url}/health", timeout=WAIT).json()["status"] == "ok"


def test_an_https_upstream_is_reached_over_tls_with_its_certificate_checked(
    launch: Any, loop_thread: LoopThread, tmp_path: Path
) -> None:
    """The passthrough upstream is Anthropic's API, over TLS. The certificate is checked
    against the system's trust store (here, through SSL_CERT_FILE, the test's own CA)."""
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    message = orjson.dumps(answer(STREAM_REQUEST | {"stream": False}))
    listen = {"CC_SERVER__LISTEN_ADDRESS": "127.0.0.1:0"}
    with RecordingUpstream(loop_thread, lambda _: json_answer(message), tls) as upstream:
        trusting = launch(
            ["--target-url", upstream.url], gateway_env(SSL_CERT_FILE=str(ca_file), **listen)
        )
        untrusting = launch(["--target-url", upstream.url], gateway_env(**listen))
        body = orjson.dumps(STREAM_REQUEST | {"stream": False})
        headers = {"x-api-key": CLIENT_KEY, "content-type": "application/json"}
        trusted = httpx.post(
            trusting.local_url() + "/v1/messages", content=body, headers=headers, timeout=WAIT
        )
        refused = httpx.post(
            untrusting.local_url() + "/v1/messages", content=body, headers=headers, timeout=WAIT
        )
    assert trusted.status_code == 200
    assert trusted.content == message
    assert refused.status_code == 502
    assert "certificate verify failed" in refused.json()["error"]["message"]
    (seen,) = upstream.received  # the refused one never got past the handshake
    assert seen.lines[:2] == [
        b"POST /v1/messages HTTP/1.1",
        b"Host: " + upstream.url.removeprefix("https://").encode(),
    ]
    assert f"x-api-key: {TARGET_KEY}".encode() in seen.lines


def test_precedence_of_command_line_environment_and_file_end_to_end(
    launch: Any, tmp_path: Path, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    (tmp_path / "cc-proxy.toml").write_text(
        'default_mode = "compare"\n'
        "[server]\n"
        'listen_address = "127.0.0.1:1"\n'
        "[target]\n"
        'model = "file-model"\n'
        "timeout_secs = 7\n"
        "max_concurrent = 3\n"
        "[passthrough]\n"
        f'url = "{passthrough.url}"\n'
        "timeout_secs = 11\n"
        "passthrough_auth = false\n"
    )
    env = gateway_env(
        CC_DEFAULT_MODE="target",
        CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0",
        CC_TARGET__MAX_CONCURRENT="4",
        CC_TARGET__MODEL="env-model",
        CC_TARGET__URL="http://127.0.0.1:9",
    )
    gateway: GatewayProcess = launch(["--target-url", target.url, "--model", "cli-model"], env)
    url = gateway.local_url()

    health = httpx.get(f"{url}/health", timeout=WAIT).json()
    assert health["mode"] == "target"  # environment over file
    assert health["target"]["url"] == target.url  # command line over environment
    assert health["target"]["model"] == "cli-model"  # command line over environment and file
    assert health["target"]["max_concurrent"] == 4  # environment over file
    assert health["target"]["timeout_secs"] == 7  # file over default
    assert health["passthrough"] == {
        "url": passthrough.url,
        "timeout_secs": 11,
        "passthrough_auth": False,
    }  # file over defaults
    assert health["tracing"]["otlp"] is False  # default

    body = {**STREAM_REQUEST, "stream": False}
    reply = httpx.post(
        f"{url}/v1/messages", json=body, headers={"x-api-key": CLIENT_KEY}, timeout=WAIT
    )
    assert reply.status_code == 200
    assert target.seen[-1].json()["model"] == "cli-model"
    assert passthrough.seen == []


def test_warns_when_listening_on_all_interfaces_without_admin_token(
    launch: Any, target: ScriptedUpstream
) -> None:
    gateway: GatewayProcess = launch(
        ["--target-url", target.url], gateway_env(CC_SERVER__LISTEN_ADDRESS="0.0.0.0:0")
    )
    gateway.listening()
    warning = re.compile(r"WARNING .*0\.0\.0\.0.*without an admin token.*CC_SERVER__ADMIN_TOKEN")
    gateway.wait_for_stderr(warning)


def test_no_admin_token_warning_when_token_is_set(launch: Any, target: ScriptedUpstream) -> None:
    env = gateway_env(CC_SERVER__LISTEN_ADDRESS="0.0.0.0:0", CC_SERVER__ADMIN_TOKEN=ADMIN_TOKEN)
    gateway: GatewayProcess = launch(["--target-url", target.url], env)
    gateway.listening()  # the warning would come before this line
    assert "admin token" not in gateway.output()


def test_no_admin_token_warning_on_loopback(launch: Any, target: ScriptedUpstream) -> None:
    gateway: GatewayProcess = launch(
        ["--target-url", target.url], gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0")
    )
    gateway.listening()
    assert "admin token" not in gateway.output()


def test_api_keys_and_bearer_tokens_never_reach_the_output(
    launch: Any, target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> None:
    env = gateway_env(
        CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0",
        CC_SERVER__ADMIN_TOKEN=ADMIN_TOKEN,
        CC_PASSTHROUGH__URL=passthrough.url,
        CC_PASSTHROUGH__PASSTHROUGH_AUTH="false",
        CC_TRACING__LOG_LEVEL="debug",
    )
    gateway: GatewayProcess = launch(["--target-url", target.url, "--model", "glm-5"], env)
    url = gateway.local_url()
    client = {"x-api-key": CLIENT_KEY, "authorization": f"Bearer {CLIENT_KEY}"}
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=url, timeout=WAIT) as http:
        tracing = http.put("/api/tracing", json={"enabled": True}, headers=admin)
        assert tracing.status_code == 200
        refused_change = http.put(
            "/api/mode", json={"mode": "compare"}, headers={"authorization": WRONG_TOKEN}
        )
        assert refused_change.status_code == 401
        with http.stream("POST", "/v1/messages", json=STREAM_REQUEST, headers=client) as r:
            assert r.status_code == 200
            r.read()
        body = {**STREAM_REQUEST, "stream": False}
        assert http.post("/v1/messages", json=body, headers=client).status_code == 200
        assert http.put("/api/mode", json={"mode": "compare"}, headers=admin).status_code == 200
        assert http.post("/v1/messages", json=body, headers=client).status_code == 200
        assert wait_until(lambda: len(target.seen) == 3, timeout=WAIT)
    # The keys were in use: each upstream got its own.
    assert all(seen.headers["x-api-key"] == TARGET_KEY for seen in target.seen)
    assert passthrough.seen[-1].headers["x-api-key"] == PASSTHROUGH_KEY
    assert gateway.stop(signal.SIGTERM) == 0
    assert "trace" in gateway.output()  # content logging was on
    assert_no_secrets(gateway.output())


# --- signals -------------------------------------------------------------------------------


def test_sigterm_finishes_stream_in_flight_refuses_new_connections_and_exits_0(
    launch: Any, target: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    message = answer(STREAM_REQUEST)
    message["content"] = [{"type": "text", "text": "ab" * 24}]
    events = message_events(message, pieces=24)
    assert len(events) == 30
    gate = Gate(loop_thread)
    target.queue(Reply.sse(events, delay=0.05, gate=gate, hold_at=3))
    gateway: GatewayProcess = launch(
        ["--target-url", target.url], gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0")
    )
    url, port = gateway.listening()
    received = b""
    try:
        with (
            httpx.Client(timeout=WAIT) as http,
            http.stream("POST", f"{url}/v1/messages", json=STREAM_REQUEST) as response,
        ):
            assert response.status_code == 200
            chunks = response.iter_raw()
            while received.count(b"\n\n") < 3:
                received += next(chunks)

            gateway.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: refused(port), timeout=WAIT), "still accepting"
            assert gateway.proc.poll() is None  # waiting for the stream in flight

            gate.open()
            for chunk in chunks:
                received += chunk
    finally:
        gate.open()
    assert received == b"".join(events)
    assert wait_until(lambda: target.completed == 1, timeout=WAIT)
    assert gateway.wait() == 0
    assert "cc-proxy stopped" in gateway.output()


def test_stream_outliving_the_shutdown_grace_ends_with_an_sse_error_and_exit_0(
    launch: Any, target: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    events = message_events(answer(STREAM_REQUEST))
    never = Gate(loop_thread)  # the upstream never sends past the first three events
    target.queue(Reply.sse(events, gate=never, hold_at=3))
    gateway: GatewayProcess = launch(
        ["--target-url", target.url],
        gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0", CC_SERVER__SHUTDOWN_GRACE_SECS="1"),
    )
    url, _ = gateway.listening()
    received = b""
    with (
        httpx.Client(timeout=WAIT) as http,
        http.stream("POST", f"{url}/v1/messages", json=STREAM_REQUEST) as response,
    ):
        chunks = response.iter_raw()
        while received.count(b"\n\n") < 3:
            received += next(chunks)
        gateway.proc.send_signal(signal.SIGTERM)
        for chunk in chunks:
            received += chunk
    delivered = b"".join(events[:3])
    assert received.startswith(delivered)
    error = received[len(delivered) :]
    assert error.startswith(b"event: error\ndata: ")
    assert json.loads(error.split(b"data: ", 1)[1])["error"]["type"] == "api_error"
    assert gateway.wait() == 0
    assert wait_until(lambda: len(target.aborted) == 1, timeout=WAIT)


def test_sigint_exits_0(launch: Any, target: ScriptedUpstream) -> None:
    gateway: GatewayProcess = launch(
        ["--target-url", target.url], gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0")
    )
    url, port = gateway.listening()
    assert httpx.get(f"{url}/health", timeout=WAIT).status_code == 200
    assert gateway.stop(signal.SIGINT) == 0
    assert "cc-proxy stopped" in gateway.output()
    assert refused(port)


def test_sigterm_when_idle_exits_0(launch: Any, target: ScriptedUpstream) -> None:
    gateway: GatewayProcess = launch(
        ["--target-url", target.url], gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0")
    )
    gateway.listening()
    assert gateway.stop(signal.SIGTERM) == 0


# --- the demo ------------------------------------------------------------------------------


def test_demo_once_streams_a_request_and_shows_its_stats(tmp_path: Path) -> None:
    done = run_to_end(["demo", "--once", "--listen", "127.0.0.1:0"], gateway_env(), tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    events = [line.removeprefix("< event: ") for line in lines if line.startswith("< event: ")]
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert "content_block_delta" in events
    assert "message_delta" in events
    stats_at = next(i for i, line in enumerate(lines) if "/api/stats" in line)
    stats = json.loads(lines[stats_at + 1].removeprefix("< "))
    assert stats["total_requests"] == 1
    assert stats["output_tokens"] > 0
    assert stats["input_tokens"] > 0


def test_demo_shows_the_dashboard_with_traffic_flowing_in(launch: Any) -> None:
    demo: GatewayProcess = launch(["demo", "--listen", "127.0.0.1:0"], gateway_env())
    assert wait_until(lambda: "Dashboard:" in "".join(demo.stdout), timeout=WAIT)
    ui = re.search(r"Dashboard: (\S+)/ui", "".join(demo.stdout))
    assert ui is not None
    page = httpx.get(f"{ui.group(1)}/ui", timeout=WAIT)
    assert page.status_code == 200
    assert "dashboard.js" in page.text

    def served() -> int:
        figures: int = httpx.get(f"{ui.group(1)}/api/stats", timeout=WAIT).json()["total_requests"]
        return figures

    # the demo's own request, then its trickle of traffic
    assert wait_until(lambda: served() >= 3, timeout=WAIT)
    assert demo.stop(signal.SIGINT) == 0


def test_demo_serves_on_until_ctrl_c_and_then_exits_0(launch: Any) -> None:
    demo: GatewayProcess = launch(["demo", "--listen", "127.0.0.1:0"], gateway_env())
    assert wait_until(lambda: "Serving until Ctrl-C" in "".join(demo.stdout), timeout=WAIT)
    url = re.search(r"ANTHROPIC_BASE_URL=(\S+)", "".join(demo.stdout))
    assert url is not None
    assert httpx.get(f"{url.group(1)}/api/stats", timeout=WAIT).json()["total_requests"] >= 1
    assert demo.stop(signal.SIGINT) == 0
    assert "Traceback" not in demo.output()


def test_raises_its_open_files_limit_to_the_hard_one(launch: Any, target: ScriptedUpstream) -> None:
    """Each stream holds two sockets: a soft limit of 256 would cap it near 128 streams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        gateway: GatewayProcess = launch(
            ["--target-url", target.url], gateway_env(CC_SERVER__LISTEN_ADDRESS="127.0.0.1:0")
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    gateway.listening()

    limits = Path(f"/proc/{gateway.proc.pid}/limits").read_text()
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3:5] == [str(hard), str(hard)]


# --- access lines --------------------------------------------------------------------------

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) ([\w.]+) (.*)$")


@pytest.mark.parametrize(("level", "shown"), [("info", {"200", "503"}), ("warning", {"503"})])
def test_access_lines_read_as_log_records_and_follow_the_log_level(
    launch: Any, target: ScriptedUpstream, level: str, shown: set[str]
) -> None:
    with socket.socket() as probe:  # at `warning` the listening line, INFO, is not shown
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = gateway_env(CC_SERVER__LISTEN_ADDRESS=f"127.0.0.1:{port}", CC_TRACING__LOG_LEVEL=level)
    gateway: GatewayProcess = launch(["--target-url", target.url], env)
    url = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: not refused(port), timeout=WAIT)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    target.queue(Reply.json(error, 503))
    body = {**STREAM_REQUEST, "stream": False}
    with httpx.Client(base_url=url, timeout=WAIT) as http:
        assert http.post("/v1/messages", json=body).status_code == 503
        assert http.post("/v1/messages", json=body).status_code == 200
    assert gateway.stop(signal.SIGTERM) == 0
    records = [m.groups() for line in gateway.stderr if (m := LOG_LINE.match(line.rstrip("\n")))]
    access = [(lvl, text) for lvl, name, text in records if name == "cc_proxy.access"]
    assert {re.search(r" status=(\d+) ", text)[1] for _, text in access} == shown  # type: ignore[index]
    assert all((lvl == "WARNING") == (" status=503 " in text) for lvl, text in access)
    # Every other line of the program has the same shape.
    assert len(records) == len([line for line in gateway.stderr if line.strip()])
