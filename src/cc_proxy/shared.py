"""State that every worker process sees: the mode, the tracing switch and the counters.

With `server.workers = N` the gateway forks N processes that accept on one port. The
runtime switches must apply to all of them and `/api/stats` must count what all of them
served, so these live in one anonymous shared memory map made before the fork. Every
value is an aligned 64-bit integer: a switch is one store that the other workers' next
request reads, and each worker writes only its own row of counters, which a reader sums,
so no lock is needed. With one worker the same code runs on private memory.
"""

from __future__ import annotations

import mmap

_WORD = 8
_SWITCHES = 2  # mode, tracing


class Cell:
    """One integer, shared by every worker when it lives in a `SharedState`."""

    __slots__ = ("_index", "_words")

    def __init__(self, value: int = 0, *, words: memoryview | None = None, index: int = 0):
        self._words = memoryview(bytearray(_WORD)).cast("q") if words is None else words
        self._index = index
        if words is None:
            self.value = value

    @property
    def value(self) -> int:
        return int(self._words[self._index])

    @value.setter
    def value(self, value: int) -> None:
        self._words[self._index] = value


class Counters:
    """`width` counters per worker; this worker adds to its own row, `totals` sums all."""

    __slots__ = ("_rows", "_width", "_words", "row")

    def __init__(self, width: int, words: memoryview | None = None, rows: int = 1, row: int = 0):
        self._words = memoryview(bytearray(_WORD * width)).cast("q") if words is None else words
        self._width = width
        self._rows = rows
        self.row = self._words[row * width : (row + 1) * width]

    def totals(self) -> list[int]:
        sums = [0] * self._width
        for row in range(self._rows):
            start = row * self._width
            for index, value in enumerate(self._words[start : start + self._width]):
                sums[index] += value
        return sums


class SharedState:
    """The shared map for `workers` processes, each counting `width` figures."""

    def __init__(self, workers: int, width: int, metrics_dir: str | None = None) -> None:
        self.workers = workers
        self.width = width
        # Where each worker keeps its Prometheus figures (`metrics.share_across_workers`).
        self.metrics_dir = metrics_dir
        self._map = mmap.mmap(-1, _WORD * (_SWITCHES + workers * width))
        self._words = memoryview(self._map).cast("q")

    def mode(self) -> Cell:
        return Cell(words=self._words, index=0)

    def tracing(self) -> Cell:
        return Cell(words=self._words, index=1)

    def counters(self, worker: int) -> Counters:
        return Counters(self.width, self._words[_SWITCHES:], self.workers, worker)
