from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from harness import LoopThread, RunningGateway, ScriptedUpstream, settings_for

CLIENT_KEY = "sk-ant-client-secret-0001"
TARGET_KEY = "target-secret-0002"
PASSTHROUGH_KEY = "passthrough-secret-0003"


def post_messages(url: str, body: dict[str, Any] | bytes) -> httpx.Response:
    """`POST {url}/v1/messages` as a client with its own key would send it."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"x-api-key": CLIENT_KEY, "content-type": "application/json"}
    return httpx.post(url + "/v1/messages", content=content, headers=headers, timeout=30)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def _upstream(loop_thread: LoopThread, name: str) -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream(name)
    loop_thread.run(upstream.start())
    yield upstream
    loop_thread.run(upstream.stop())


@pytest.fixture
def target(loop_thread: LoopThread) -> Iterator[ScriptedUpstream]:
    yield from _upstream(loop_thread, "target")


@pytest.fixture
def passthrough(loop_thread: LoopThread) -> Iterator[ScriptedUpstream]:
    yield from _upstream(loop_thread, "passthrough")


GatewayFactory = Callable[..., RunningGateway]


@pytest.fixture
def start_gateway(
    target: ScriptedUpstream, passthrough: ScriptedUpstream
) -> Iterator[GatewayFactory]:
    """Start cc-proxy on the test upstreams; keyword arguments override settings sections."""
    running: list[RunningGateway] = []

    def start(**sections: Any) -> RunningGateway:
        gateway = RunningGateway(settings_for(target, passthrough, **sections))
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture
def gateway(start_gateway: GatewayFactory) -> RunningGateway:
    """cc-proxy in its default mode, `target`, with `--model glm-5`."""
    return start_gateway()


@pytest.fixture
def client(gateway: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as session:
        yield session
