"""Real servers on 127.0.0.1 for the tests: scripted stand-in upstreams and cc-proxy itself.

Nothing of the HTTP layer is mocked: the upstreams are aiohttp servers on ephemeral
ports, cc-proxy is the real uvicorn server, and the tests talk to it over sockets.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
import httpx
import orjson
from aiohttp import web
from multidict import CIMultiDict

from cc_proxy.app import Gateway
from cc_proxy.config import Settings
from cc_proxy.server import bind, url_of, uvicorn_server
from cc_proxy.standin import answer, message_events
from cc_proxy.upstream import Upstream

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code-2.1.197"
ROOT = Path(__file__).resolve().parent.parent
# Installed by .ci/install-claude-code, which pins the version the fixtures come from.
CLAUDE_CODE_VERSION = "2.1.197"
CLAUDE_CODE = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "claude"
T = TypeVar("T")


def load_fixture(name: str) -> tuple[str, dict[str, str], bytes]:
    """A recorded Claude Code request: path with query, headers to resend, body bytes."""
    recorded = json.loads((FIXTURES / f"{name}.json").read_text())
    skip = {"host", "content-length", "connection"}
    headers = {k: v for k, v in recorded["headers"].items() if k.lower() not in skip}
    return recorded["path"], headers, json.dumps(recorded["body"]).encode()


class LoopThread:
    """An asyncio loop in a daemon thread, for upstream servers the tests drive."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class RawServer:
    """A server on raw sockets, run on `loop_thread`, for tests of the bytes on the wire:
    `serve` handles each connection. With `tls`, over TLS (an https URL)."""

    def __init__(self, loop_thread: LoopThread, tls: ssl.SSLContext | None = None) -> None:
        self.loop_thread = loop_thread
        self.tls = tls
        self.url = ""
        self._server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        async def start() -> None:
            self._server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.tls)
            scheme = "https" if self.tls else "http"
            self.url = f"{scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

        self.loop_thread.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()

        self.loop_thread.run(stop())


def body_length(head: bytes) -> int:
    """The Content-Length a request head gives (0 without one)."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0


def plain_upstream(url: str, wait: float = 30.0) -> Upstream:
    """An upstream at `url` for `UpstreamClient.send`: no credentials, `wait` seconds to
    connect and between reads."""
    return Upstream(
        name="target",
        url=url,
        timeout=aiohttp.ClientTimeout(sock_connect=wait, sock_read=wait),
        forwards_client_credentials=False,
        credentials=[],
    )


def json_answer(body: bytes) -> bytes:
    """A whole 200 answer with a JSON body, as raw bytes."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


@dataclass
class Received:
    """A request as it came on the upstream's socket."""

    connection: int  # which connection, counted from 0 in order of arrival
    on_connection: int  # which request on that connection, counted from 0
    head: bytes
    body: bytes

    @property
    def lines(self) -> list[bytes]:
        return self.head.split(b"\r\n")[:-2]


# What the upstream writes for a request, or None to close the connection unanswered.
Respond = Callable[[Received], bytes | None]


class RecordingUpstream(RawServer):
    """Records each request and writes `respond`'s reply to it."""

    def __init__(
        self, loop_thread: LoopThread, respond: Respond, tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(loop_thread, tls)
        self.respond = respond
        self.received: list[Received] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection, self.connections = self.connections, self.connections + 1
        try:
            for on_connection in range(1000):
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(body_length(head))
                received = Received(connection, on_connection, head, body)
                self.received.append(received)
                written = self.respond(received)
                if written is None:
                    break
                writer.write(written)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@dataclass
class Seen:
    """A request as an upstream received it."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class Gate:
    """An `asyncio.Event` on the upstreams' loop that the test thread opens."""

    def __init__(self, loop_thread: LoopThread) -> None:
        self._loop = loop_thread.loop
        self._event = asyncio.Event()

    def open(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()


Responder = Callable[[web.Request, "ScriptedUpstream"], Awaitable[web.StreamResponse]]


@dataclass
class Reply:
    """One scripted answer. Build with the class methods."""

    respond: Responder

    @classmethod
    def json(cls, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)

        async def respond(request: web.Request, up: ScriptedUpstream) -> web.StreamResponse:
            return web.Response(
                body=raw,
                status=status,
                headers={"content-type": "application/json", **(headers or {})},
            )

        return cls(respond)

    @classmethod
    def sse(
        cls,
        events: list[bytes],
        *,
        delay: float = 0.0,
        status: int = 200,
        headers: dict[str, str] | None = None,
        then: str = "end",
        gate: Gate | None = None,
        hold_at: int = 0,
    ) -> Reply:
        """Each item of `events` is written on its own, `delay` seconds apart. With a
        `gate`, `events[hold_at:]` wait until the test opens it. `then` is "end",
        "close" (the connection drops without an end) or "hang" (nothing more is ever
        sent). A connection the gateway closes is recorded in `aborted`."""

        async def respond(request: web.Request, up: ScriptedUpstream) -> web.StreamResponse:
            response = web.StreamResponse(
                status=status,
                headers={"content-type": "text/event-stream", **(headers or {})},
            )
            await response.prepare(request)
            try:
                for index, event in enumerate(events):
                    if gate is not None and index == hold_at:
                        await gate.wait()
                    await response.write(event)
                    if delay:
                        await asyncio.sleep(delay)
                if then == "hang":
                    await asyncio.sleep(3600)
            except (ConnectionError, RuntimeError, asyncio.CancelledError):
                up.aborted.append(time.monotonic())
                raise
            if then == "close":
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write_eof()
            up.completed += 1
            return response

        return cls(respond)

    @classmethod
    def close_delimited(cls, body: bytes, content_type: str = "text/event-stream") -> Reply:
        """An HTTP/1.0-style answer: no length, no chunking; the body ends when the
        connection closes."""
        head = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n"
        return cls.raw(head.encode() + body)

    @classmethod
    def raw(cls, answer: bytes, *, then: str = "close") -> Reply:
        """`answer` written as it is on the connection, which then closes ("close") or
        stays open with nothing more sent ("hang")."""

        async def respond(request: web.Request, up: ScriptedUpstream) -> web.StreamResponse:
            transport = request.transport
            assert transport is not None
            transport.write(answer)
            if then == "close":
                transport.close()
            try:
                await asyncio.sleep(3600)  # aiohttp cancels this once the connection is gone
            except asyncio.CancelledError:
                up.aborted.append(time.monotonic())
                raise
            raise AssertionError("unreachable")

        return cls(respond)

    @classmethod
    def hang(cls) -> Reply:
        """Accept the request and never answer."""

        async def respond(request: web.Request, up: ScriptedUpstream) -> web.StreamResponse:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                up.aborted.append(time.monotonic())
                raise
            raise AssertionError("unreachable")

        return cls(respond)

    @classmethod
    def model(cls, *, delay: float = 0.0) -> Reply:
        """Answer like the stand-in model, streaming when the request asks to; thinking
        first, in a block signed by the upstream, when it `signs_thinking`."""

        async def respond(request: web.Request, up: ScriptedUpstream) -> web.StreamResponse:
            body = orjson.loads(await request.read())
            signature = None
            if up.signs_thinking is not None:
                signature = f"{up.signs_thinking}-{len(up.answers) + 1}"
            message = answer(body, thinking_signature=signature)
            return await cls.message(message, delay=delay).respond(request, up)

        return cls(respond)

    @classmethod
    def message(cls, message: dict[str, Any], *, delay: float = 0.0) -> Reply:
        """Answer with `message`, streamed when the request asks for a stream; recorded in
        the upstream's `answers`."""

        async def respond(request: web.Request, up: ScriptedUpstream) -> web.StreamResponse:
            up.answers.append(message)
            if orjson.loads(await request.read()).get("stream") is True:
                return await cls.sse(message_events(message), delay=delay).respond(request, up)
            return await cls.json(message).respond(request, up)

        return cls(respond)


@dataclass
class ScriptedUpstream:
    """A stand-in upstream that records every request and answers from a script.

    With the script empty it asks `pick`, if given, for a reply to the request, and
    otherwise answers like the stand-in model. With `signs_thinking` it thinks in blocks
    it signs, and, as Anthropic does, rejects any request that carries a thinking block
    signed by anyone else. A long soak turns `record` off.
    """

    name: str
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    script: deque[Reply] = field(default_factory=deque)
    aborted: list[float] = field(default_factory=list)
    completed: int = 0
    runner: web.AppRunner | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)  # by Reply.message
    signs_thinking: str | None = None
    script_for: str | None = None  # when set, only requests to this path are scripted
    pick: Callable[[Seen], Reply | None] | None = None
    record: bool = True

    def queue(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(
            request.method, request.path, request.query_string, CIMultiDict(request.headers), body
        )
        if self.record:
            self.seen.append(seen)
        foreign = self._foreign_thinking(body)
        scripted = bool(self.script) and self.script_for in (None, request.path)
        picked = self.pick(seen) if self.pick is not None and not scripted else None
        if foreign is not None:
            reply = Reply.json(
                {"type": "error", "error": {"type": "invalid_request_error", "message": foreign}},
                400,
            )
        elif scripted:
            reply = self.script.popleft()
        elif picked is not None:
            reply = picked
        elif request.method == "POST" and request.path == "/v1/messages":
            reply = Reply.model()
        else:
            reply = Reply.json({"type": "error", "error": {"type": "not_found_error"}}, 404)
        return await reply.respond(request, self)

    def _foreign_thinking(self, body: bytes) -> str | None:
        """Anthropic's complaint about the first thinking block this upstream did not sign."""
        if self.signs_thinking is None or b"thinking" not in body:
            return None
        for m, message in enumerate(orjson.loads(body).get("messages") or []):
            content = message.get("content")
            for c, block in enumerate(content if isinstance(content, list) else []):
                kind = block.get("type")
                signature = str(block.get("signature", ""))
                if kind == "redacted_thinking" or (
                    kind == "thinking" and not signature.startswith(self.signs_thinking + "-")
                ):
                    return f"messages.{m}.content.{c}: Invalid `signature` in `{kind}` block"
        return None

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        sock = socket.create_server(("127.0.0.1", port))
        await web.SockSite(self.runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def open_connections(self) -> int:
        """Connections to this upstream still open (a keep-alive pool's, at rest)."""
        server = self.runner.server if self.runner is not None else None
        return len(server.connections) if server is not None else 0


_scratch: list[Path] = []


def scratch_dir() -> Path:
    """One temporary directory for the whole test run, removed at its end."""
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="cc-proxy-tests-")))
        atexit.register(shutil.rmtree, _scratch[0], ignore_errors=True)
    return _scratch[0]


def settings_for(
    target: ScriptedUpstream | None,
    passthrough: ScriptedUpstream | None,
    /,
    **sections: Any,
) -> Settings:
    """Settings for a test gateway; `sections` are merged into the named sections."""
    values: dict[str, Any] = {
        "server": {"listen_address": "127.0.0.1:0", "shutdown_grace_secs": 1},
        "target": {"url": target.url if target else None, "model": "glm-5"},
        "passthrough": {"url": passthrough.url if passthrough else "http://127.0.0.1:9"},
        # each gateway its own compare database, never one in the working directory
        "compare": {"db_path": str(scratch_dir() / f"compare-{uuid.uuid4().hex}.db")},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    if values["target"].get("url") is None:
        del values["target"]["url"]
    return Settings(**values)


@dataclass(frozen=True)
class Held:
    """What a gateway holds at one moment: whatever a request leaves behind shows here."""

    tasks: int  # asyncio tasks on the gateway's loop, the probe itself excluded
    client_connections: int  # client connections uvicorn has open
    upstream_busy: int  # upstream connections taken from the pool and not given back
    # This process's open fds less both ends of each idle pooled upstream connection,
    # which a keep-alive pool rightly keeps (the upstreams run in this process too).
    fds: int
    in_flight: int  # target slots taken (target.max_concurrent)


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RunningGateway:
    """cc-proxy's real server (uvicorn, httptools) in a thread, on an ephemeral port."""

    def __init__(self, settings: Settings) -> None:
        self.gateway = Gateway(settings)
        self.server = uvicorn_server(self.gateway)
        sock = bind(settings.server.listen_address)
        self.url = url_of(sock)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("cc-proxy did not start")
            time.sleep(0.005)

    def _serve(self, sock: socket.socket) -> None:
        # What `uvicorn.Server.run` does, keeping hold of the loop for `held`.
        with asyncio.Runner(loop_factory=self.server.config.get_loop_factory()) as runner:
            self.loop = runner.get_loop()
            runner.run(self.server.serve(sockets=[sock]))

    @property
    def stats(self) -> dict[str, Any]:
        return self.gateway.stats.snapshot()

    def switch_mode(self, mode: str) -> None:
        """`PUT /api/mode`, as an operator would."""
        with httpx.Client(timeout=30) as http:
            http.put(self.url + "/api/mode", json={"mode": mode}).raise_for_status()

    def held(self) -> Held:
        """What the gateway holds now, read on its own loop."""
        assert self.loop is not None

        async def probe() -> Held:
            client = self.gateway.proxy.client
            assert client is not None
            connector = client.session.connector
            assert isinstance(connector, aiohttp.TCPConnector)
            idle = sum(len(pooled) for pooled in connector._conns.values())
            target = self.gateway.upstreams.get("target")
            limiter = target.limiter if target is not None else None
            return Held(
                tasks=len(asyncio.all_tasks()) - 1,
                client_connections=len(self.server.server_state.connections),
                upstream_busy=len(connector._acquired),
                fds=open_fds() - 2 * idle,
                in_flight=limiter.in_flight if limiter is not None else 0,
            )

        return asyncio.run_coroutine_threadsafe(probe(), self.loop).result(30)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def install_claude_code() -> str | None:
    """Make sure the pinned Claude Code CLI is in `.ci/node`; None when it is, else why not."""
    if not CLAUDE_CODE.exists():
        try:
            done = subprocess.run(
                [str(ROOT / ".ci" / "install-claude-code")],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"npm could not install @anthropic-ai/claude-code: {exc}"
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).split()[-60:])
            return f"npm could not install @anthropic-ai/claude-code: {tail}"
    try:
        version = subprocess.run(
            [str(CLAUDE_CODE), "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the installed Claude Code CLI does not run: {exc}"
    if not version.startswith(CLAUDE_CODE_VERSION + " "):
        return f"expected Claude Code {CLAUDE_CODE_VERSION} in .ci/node, found {version.strip()!r}"
    return None


@dataclass
class ClaudeRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        """The `--output-format json` result."""
        parsed: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return parsed


class ClaudeCode:
    """The real Claude Code CLI, offline, with a HOME and config dir of its own, so that
    nothing leaks in from the machine or from one test to the next; runs of one instance
    share them, as the runs of one user do (`--continue` resumes the last session)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.work = home / "work"
        self.work.mkdir(parents=True, exist_ok=True)

    def run(self, base_url: str, prompt: str, *args: str, timeout: float = 120) -> ClaudeRun:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "CLAUDE_CONFIG_DIR": str(self.home / ".claude"),
            "TMPDIR": str(self.home),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": CLAUDE_CODE_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
        command = [str(CLAUDE_CODE), "-p", prompt, "--output-format", "json", *args]
        done = subprocess.run(
            command,
            env=env,
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return ClaudeRun(done.returncode, done.stdout, done.stderr)


# The key Claude Code is given: it must reach the passthrough and never the target.
CLAUDE_CODE_KEY = "sk-ant-claude-code-secret-0004"
