"""The observers' fan-out: each hook reaches the observers that define it and want the
exchange, in the order they were added."""

from __future__ import annotations

import itertools

import pytest

from cc_proxy.exchange import Exchange, Observer, Observers, Role
from cc_proxy.modes import Mode

_ids = itertools.count()


def exchange(mode: Mode, *, traced: bool = False) -> Exchange:
    return Exchange(
        id=f"{next(_ids):032x}",
        role=Role.PRIMARY,
        mode=mode,
        upstream="target",
        method="POST",
        path="/v1/messages",
        query="",
        target="/v1/messages",
        is_messages=True,
        trace_content=traced,
    )


class Seeing(Observer):
    def __init__(self, name: str, log: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.log = log

    def on_start(self, exchange: Exchange) -> None:
        self.log.append((self.name, "start", exchange.id))

    def on_end(self, exchange: Exchange) -> None:
        self.log.append((self.name, "end", exchange.id))


class CompareOnly(Seeing):
    only_modes = frozenset({Mode.COMPARE})


class TracedOnly(Seeing):
    only_traced = True


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("traced", [False, True])
def test_hooks_reach_the_observers_that_want_the_exchange_in_order(
    mode: Mode, traced: bool
) -> None:
    log: list[tuple[str, str, str]] = []
    observers = Observers([Seeing("all", log), CompareOnly("compare", log)])
    observers.add(TracedOnly("traced", log))  # added after the first exchange kinds are seen
    seen = exchange(mode, traced=traced)
    observers.on_start(seen)
    observers.on_end(seen)
    wanting = ["all"]
    if mode is Mode.COMPARE:
        wanting.append("compare")
    if traced:
        wanting.append("traced")
    assert log == [(name, "start", seen.id) for name in wanting] + [
        (name, "end", seen.id) for name in wanting
    ]


def test_an_observer_added_later_sees_the_next_exchanges() -> None:
    log: list[tuple[str, str, str]] = []
    observers = Observers([Seeing("first", log)])
    before = exchange(Mode.TARGET)
    observers.on_start(before)
    observers.add(Seeing("later", log))
    after = exchange(Mode.TARGET)
    observers.on_start(after)
    assert log == [("first", "start", before.id), ("first", "start", after.id),
                   ("later", "start", after.id)]  # fmt: skip
