"""Bad input from clients: every refusal is Anthropic-shaped, bounded in time and memory,
leaves nothing behind, and the next request works.

Requests are written on raw sockets where a well-behaved client library would refuse to
send them. Bodies that are not JSON, or not an object, are in test_errors.py; bad mode
changes in test_admin.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from conftest import GatewayFactory
from harness import RunningGateway, ScriptedUpstream, wait_until
from test_errors import check_gateway_error
from test_faults import ASK, WAIT, promises

TIMEOUT = 0.5  # server.client_timeout_secs for the tests that wait it out


class Connection:
    """A raw client connection to the gateway, reading whole answers off it."""

    def __init__(self, gateway: RunningGateway) -> None:
        host, port = gateway.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT)
        self._unread = b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_answer(self) -> tuple[int, dict[str, str], bytes]:
        """The next whole HTTP answer: status, headers, body."""
        while b"\r\n\r\n" not in self._unread:
            chunk = self.sock.recv(65536)
            assert chunk, f"the connection closed without an answer: {self._unread!r}"
            self._unread += chunk
        head, _, rest = self._unread.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value for name, _, value in (h.partition(": ") for h in lines)}
        length = int(headers["content-length"])
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self._unread = rest[length:]
        return int(status_line.split()[1]), headers, rest[:length]

    def closed_by_gateway(self) -> bool:
        if self._unread:
            return False
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True


@contextmanager
def connection(gateway: RunningGateway) -> Iterator[Connection]:
    conn = Connection(gateway)
    try:
        yield conn
    finally:
        conn.sock.close()


def refused_with(
    sock: Connection, status: int, kind: str, *, closes: bool = True
) -> dict[str, Any]:
    answer_status, headers, body = sock.read_answer()
    error = check_gateway_error(
        answer_status, headers, body, expected_status=status, expected_type=kind
    )
    if closes:
        assert headers["connection"] == "close"
        assert sock.closed_by_gateway()
    return error


def head(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


BODY = orjson.dumps({**ASK, "stream": False})


# --- size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_40_mib_body_is_413_before_the_client_has_sent_it(
    start_gateway: GatewayFactory, target: ScriptedUpstream, framing: str
) -> None:
    gateway = start_gateway()  # server.max_body_bytes: 32 MiB
    size = 40 * 1024 * 1024
    piece = b"x" * (1024 * 1024)
    with promises(gateway) as got, connection(gateway) as sock:
        if framing == "content-length":
            # Only the head goes out: the refusal cannot have waited for the body.
            sock.sendall(head("POST", "/v1/messages", f"content-length: {size}"))
        else:
            # 33 MiB, never the last chunk: the gateway holds at most its limit.
            sock.sendall(head("POST", "/v1/messages", "transfer-encoding: chunked"))
            for _ in range(33):
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        status, headers, body = sock.read_answer()
        check_gateway_error(
            status, headers, body, expected_status=413, expected_type="request_too_large"
        )
        got.add_json(status, body)
    assert len(target.seen) == 2  # the warm-up and the next request only


def test_huge_header_is_431_and_the_connection_closed(
    start_gateway: GatewayFactory,
) -> None:
    gateway = start_gateway()
    with promises(gateway), connection(gateway) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: ")
        for _ in range(256):  # 16 MiB on offer; the gateway stops reading long before
            try:
                sock.sendall(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                break
        refused_with(sock, 431, "invalid_request_error")


# --- lies and garbage ------------------------------------------------------------------------


def test_content_length_longer_than_the_body_is_408_once_the_body_falls_silent(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway(server={"client_timeout_secs": TIMEOUT})
    with promises(gateway) as got, connection(gateway) as sock:
        sock.sendall(head("POST", "/v1/messages", f"content-length: {len(BODY) + 100}") + BODY)
        status, headers, body = sock.read_answer()
        check_gateway_error(
            status, headers, body, expected_status=408, expected_type="timeout_error"
        )
        got.add_json(status, body)
    assert len(target.seen) == 2


def test_bytes_after_a_content_length_that_is_too_short_are_a_400(
    start_gateway: GatewayFactory, target: ScriptedUpstream
) -> None:
    gateway = start_gateway()
    with promises(gateway) as got, connection(gateway) as sock:
        # The declared length takes "{}": the rest is read as a next request, and is none.
        sock.sendall(head("POST", "/v1/messages", "content-length: 2") + b"{}\x00garbage\r\n\r\n")
        status, _, body = sock.read_answer()
        # "{}" is a JSON object: it is forwarded, and the stand-in answers it.
        assert status == 200
        got.add_json(status, body)
        refused_with(sock, 400, "invalid_request_error")


@pytest.mark.parametrize(
    "bad",
    [
        "content-length: abc",
        "content-length: -1",
        "content-length: 2\r\ncontent-length: 3",
        "transfer-encoding: chunked\r\ncontent-length: 2",
    ],
)
def test_unparseable_framing_is_400_in_the_anthropic_shape(
    start_gateway: GatewayFactory, bad: str
) -> None:
    gateway = start_gateway()
    with promises(gateway), connection(gateway) as sock:
        sock.sendall(head("POST", "/v1/messages", bad) + b"{}")
        refused_with(sock, 400, "invalid_request_error")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "\xff"}]}',
        # deeper than any JSON decoder here goes, inside a field and as the whole body
        b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["invalid-utf8", "nested-too-deep-in-a-field", "nested-too-deep"],
)
def test_a_body_json_decoders_refuse_is_400(start_gateway: GatewayFactory, raw: bytes) -> None:
    gateway = start_gateway()
    with promises(gateway) as got, connection(gateway) as sock:
        sock.sendall(head("POST", "/v1/messages", f"content-length: {len(raw)}") + raw)
        status, headers, body = sock.read_answer()
        error = check_gateway_error(
            status, headers, body, expected_status=400, expected_type="invalid_request_error"
        )
        assert "not valid JSON" in error["error"]["message"]
        got.add_json(status, body)


# --- slow clients ----------------------------------------------------------------------------


@pytest.mark.parametrize("served_before", [0, 1], ids=["first request", "after one served"])
def test_dribbled_headers_are_408_and_the_connection_closed(
    start_gateway: GatewayFactory, served_before: int
) -> None:
    """The head timer runs for every request on a connection, not only its first."""
    gateway = start_gateway(server={"client_timeout_secs": TIMEOUT})
    with promises(gateway), connection(gateway) as sock:
        for _ in range(served_before):
            sock.sendall(head("GET", "/health", "content-length: 0"))
            assert sock.read_answer()[0] == 200
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\n")
        deadline = time.monotonic() + WAIT
        sock.sock.settimeout(0.05)
        answer = b""
        # A header line every 50 ms, each one well within any per-read timeout.
        for index in range(int(WAIT / 0.05)):
            try:
                sock.sendall(f"x-slow-{index}: 1\r\n".encode())
                answer = sock.sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer or time.monotonic() > deadline:
                break
        sock.sock.settimeout(WAIT)
        assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_connection_that_never_sends_a_request_is_closed(
    start_gateway: GatewayFactory,
) -> None:
    gateway = start_gateway(server={"client_timeout_secs": TIMEOUT})
    with promises(gateway), connection(gateway) as sock:
        refused_with(sock, 408, "timeout_error")


def test_admin_body_that_never_arrives_is_408(start_gateway: GatewayFactory) -> None:
    gateway = start_gateway(server={"client_timeout_secs": TIMEOUT})
    with promises(gateway), connection(gateway) as sock:
        sock.sendall(head("PUT", "/api/mode", "content-length: 40") + b'{"mode":')
        refused_with(sock, 408, "timeout_error", closes=False)
    assert gateway.gateway.modes.current.value == "target"


# --- methods on the admin paths --------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH", "PROPFIND", "OPTIONS"])
@pytest.mark.parametrize("path", ["/health", "/api/stats", "/api/mode", "/api/tracing"])
def test_unsupported_method_on_an_admin_path_is_405(
    start_gateway: GatewayFactory, target: ScriptedUpstream, method: str, path: str
) -> None:
    gateway = start_gateway()
    with connection(gateway) as sock:
        sock.sendall(head(method, path, "content-length: 0"))
        status, headers, body = sock.read_answer()
        check_gateway_error(
            status, headers, body, expected_status=405, expected_type="invalid_request_error"
        )
        assert "GET" in headers["allow"]
    assert target.seen == []


def test_a_method_http_does_not_know_is_400(start_gateway: GatewayFactory) -> None:
    gateway = start_gateway()
    with promises(gateway), connection(gateway) as sock:
        sock.sendall(head("FROB", "/api/mode"))
        refused_with(sock, 400, "invalid_request_error")


def test_a_malformed_chunk_is_400_at_once(start_gateway: GatewayFactory) -> None:
    # server.client_timeout_secs stays 60: a 408 here would mean the gateway waited for
    # a body that can no longer come.
    gateway = start_gateway()
    with promises(gateway) as got, connection(gateway) as sock:
        sock.sendall(
            head("POST", "/v1/messages", "transfer-encoding: chunked") + b"2\r\n{}\r\nZZ\r\n"
        )
        refused_with(sock, 400, "invalid_request_error")
        # The request had begun: the gateway counts it as a client that went away.
        assert wait_until(lambda: gateway.stats["client_disconnects"] == 1, timeout=WAIT)
        got.add_sse(400, b"", left=True)
