"""Access lines: printed straight to stderr where cc-proxy set logging up itself, they
read exactly as the same line logged through `logging` would."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cc_proxy.logs import FLUSH_SECS, LOG_FORMAT, MAX_HELD_LINES, StderrLines

LINE = "id=0f role=primary mode=target upstream=target POST /v1/messages status=200"


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
@pytest.mark.parametrize("when", [1_764_000_000.0, 1_764_000_000.0429, 1_764_086_399.9996])
def test_a_printed_line_is_the_logging_formatters_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], level: int, when: float
) -> None:
    monkeypatch.setattr("cc_proxy.logs.time.time", lambda: when)
    StderrLines().print(level, LINE)  # no event loop: printed at once
    record = logging.LogRecord("cc_proxy.access", level, __file__, 1, LINE, None, None)
    record.created = when
    record.msecs = int((when - int(when)) * 1000) + 0.0
    assert capsys.readouterr().err == logging.Formatter(LOG_FORMAT).format(record) + "\n"


def test_lines_are_held_for_a_moment_and_go_out_together_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = StderrLines()

    async def print_and_wait() -> list[str]:
        seen = []
        for number in range(3):
            lines.print(logging.INFO, f"line={number}")
            await asyncio.sleep(0)  # turns of the loop go by: still held
            seen.append(capsys.readouterr().err)
        await asyncio.sleep(FLUSH_SECS * 2)
        return seen

    assert asyncio.run(print_and_wait()) == ["", "", ""]
    printed = capsys.readouterr().err.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in printed] == ["line=0", "line=1", "line=2"]


def test_a_full_hold_goes_out_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    lines = StderrLines()

    async def fill() -> str:
        for number in range(MAX_HELD_LINES):
            lines.print(logging.INFO, f"line={number}")
        return capsys.readouterr().err

    printed = asyncio.run(fill()).splitlines()
    assert [line.rsplit(" ", 1)[1] for line in printed] == [
        f"line={n}" for n in range(MAX_HELD_LINES)
    ]


def test_lines_still_held_are_printed_by_flush(capsys: pytest.CaptureFixture[str]) -> None:
    lines = StderrLines()

    async def print_and_stop() -> None:
        lines.print(logging.INFO, "line=last")
        lines.flush()  # as the server does once its loop has stopped

    asyncio.run(print_and_stop())
    assert capsys.readouterr().err.endswith(" INFO cc_proxy.access line=last\n")
