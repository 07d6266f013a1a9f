"""The compare report: its figures checked against values worked out by hand from seven
records, through `cc-proxy compare-report` (a real subprocess) and `GET /api/compare/report`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from cc_proxy.records import RecordStore
from cc_proxy.report import parse_since
from conftest import GatewayFactory
from test_process import gateway_env

Side = dict[str, Any]


def side(
    *,
    ttft: float = 100.0,
    duration: float = 1000.0,
    output: int = 10,
    stop: str | None = "end_turn",
    tool: str | None = None,
    args: dict[str, Any] | None = None,
    error: str | None = None,
    status: int = 200,
    dropped: bool = False,
) -> Side:
    return {
        "upstream": "target",
        "status": None if dropped else status,
        "error_type": error,
        "ttft_ms": None if dropped else ttft,
        "duration_ms": None if dropped else duration,
        "input_tokens": 500,
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "stop_reason": stop,
        "tool_calls": [] if tool is None else [{"name": tool, "input": args or {}}],
        "text": "",
        "text_truncated": False,
        "dropped": dropped,
    }


def record(
    number: int, primary: Side, shadow: Side, agreement: tuple[bool | None, ...]
) -> dict[str, Any]:
    stop, tool, args = agreement
    return {
        "id": f"r{number}",
        "time": f"2026-11-20T10:0{number}:00.000000Z",
        "session_id": "s",
        "requested_model": "claude-sonnet-4-5",
        "rewritten_model": "glm-5",
        "primary": {**primary, "upstream": "passthrough"},
        "shadow": shadow,
        "agreement": {"stop_reason": stop, "first_tool": tool, "first_tool_args": args},
    }


LS = {"command": "ls"}
# Seven requests; ratios are shadow / primary of ttft, duration and output tokens.
RECORDS = [
    # same tool, same arguments                     ratios 1.5, 2.0, 2.0
    record(
        1,
        side(ttft=100, duration=1000, output=50, stop="tool_use", tool="Bash", args=LS),
        side(ttft=150, duration=2000, output=100, stop="tool_use", tool="Bash", args=LS),
        (True, True, True),
    ),
    # another tool                                  ratios 0.5, 0.5, 0.5
    record(
        2,
        side(ttft=200, duration=2000, output=40, stop="tool_use", tool="Bash", args=LS),
        side(ttft=100, duration=1000, output=20, stop="tool_use", tool="Read", args=LS),
        (True, False, False),
    ),
    # text only, other stop reason                  ratios 3.0, 4.0, 3.0
    record(
        3,
        side(ttft=100, duration=1000, output=10, stop="end_turn"),
        side(ttft=300, duration=4000, output=30, stop="max_tokens"),
        (False, None, None),
    ),
    # the target failed
    record(4, side(), side(error="api_error", status=500, stop=None), (None, None, None)),
    # the shadow was dropped
    record(5, side(), side(dropped=True, stop=None), (None, None, None)),
    # same tool, other arguments                    ratios 1.0, 1.0, 1.0
    record(
        6,
        side(stop="tool_use", tool="Bash", args=LS),
        side(stop="tool_use", tool="Bash", args={"command": "pwd"}),
        (True, True, False),
    ),
    # the passthrough failed
    record(7, side(error="overloaded_error", status=529, stop=None), side(), (None, None, None)),
]


def expected_report(since: str | None = None) -> dict[str, Any]:
    """Worked out by hand from RECORDS (all seven)."""
    return {
        "since": since,
        "count": 7,
        "shadow_dropped": 1,
        "agreement": {
            # compared: r1 r2 r3 r6; agreed: r1 r2 r6
            "stop_reason": {"count": 3, "of": 4, "rate": 0.75},
            # compared: r1 r2 r6; agreed: r1 r6
            "first_tool": {"count": 2, "of": 3, "rate": 2 / 3},
            # compared: r1 r2 r6; agreed: r1
            "first_tool_args": {"count": 1, "of": 3, "rate": 1 / 3},
        },
        "errors": {
            "primary": {"count": 1, "of": 7, "rate": 1 / 7},  # r7
            "shadow": {"count": 1, "of": 6, "rate": 1 / 6},  # r4, of the six not dropped
        },
        "ratios": {
            # sorted 0.5 1.0 1.5 3.0: median (1.0+1.5)/2; p90 at 2.7: 1.5 + 0.7 * 1.5
            "ttft": {"median": 1.25, "p90": 2.55, "n": 4},
            # sorted 0.5 1.0 2.0 4.0: median 1.5; p90: 2.0 + 0.7 * 2.0
            "duration": {"median": 1.5, "p90": 3.4, "n": 4},
            # sorted 0.5 1.0 2.0 3.0: median 1.5; p90: 2.0 + 0.7 * 1.0
            "output_tokens": {"median": 1.5, "p90": 2.7, "n": 4},
        },
        "disagreements": 3,
        # another tool (4 + 2) first, then other arguments (2), then the stop reason (1)
        "worst_disagreements": [
            {
                "id": "r2",
                "time": "2026-11-20T10:02:00.000000Z",
                "session_id": "s",
                "requested_model": "claude-sonnet-4-5",
                "on": ["first_tool", "first_tool_args"],
                "score": 6,
                "primary": {"stop_reason": "tool_use", "first_tool": "Bash"},
                "shadow": {"stop_reason": "tool_use", "first_tool": "Read"},
            },
            {
                "id": "r6",
                "time": "2026-11-20T10:06:00.000000Z",
                "session_id": "s",
                "requested_model": "claude-sonnet-4-5",
                "on": ["first_tool_args"],
                "score": 2,
                "primary": {"stop_reason": "tool_use", "first_tool": "Bash"},
                "shadow": {"stop_reason": "tool_use", "first_tool": "Bash"},
            },
            {
                "id": "r3",
                "time": "2026-11-20T10:03:00.000000Z",
                "session_id": "s",
                "requested_model": "claude-sonnet-4-5",
                "on": ["stop_reason"],
                "score": 1,
                "primary": {"stop_reason": "end_turn", "first_tool": None},
                "shadow": {"stop_reason": "max_tokens", "first_tool": None},
            },
        ],
    }


def rounded(value: Any) -> Any:
    """`value` with every float rounded: 2/3 computed and 2/3 written differ in the last bit."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "compare.db"
    connection = RecordStore(path).open_for_writing()
    RecordStore.write(connection, RECORDS, max_records=100, max_age_secs=10**9, now=1_795_000_000.0)
    connection.close()
    return path


def compare_report(database: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cc-proxy compare-report`, its database named in the config file."""
    config = database.parent / "cc-proxy.toml"
    config.write_text(f'[compare]\ndb_path = "{database}"\n')
    return subprocess.run(  # noqa: PLW1510 - the exit code is what the tests examine
        [sys.executable, "-m", "cc_proxy", "--config", str(config), "compare-report", *args],
        env=gateway_env(),
        cwd=database.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_report_figures_match_the_hand_computed_ones(database: Path) -> None:
    done = compare_report(database, "--format", "json")

    assert done.returncode == 0, done.stderr
    assert rounded(json.loads(done.stdout)) == rounded(expected_report())


def test_report_since_counts_only_later_records(database: Path) -> None:
    done = compare_report(database, "--since", "2026-11-20T10:05:00Z", "--format", "json")

    report = json.loads(done.stdout)
    assert report["since"] == "2026-11-20T10:05:00+00:00"
    assert report["count"] == 3  # r5 r6 r7
    assert report["shadow_dropped"] == 1
    assert report["agreement"]["first_tool_args"] == {"count": 0, "of": 1, "rate": 0.0}
    assert [found["id"] for found in report["worst_disagreements"]] == ["r6"]


def test_report_table_reads_as_a_terminal_table(database: Path) -> None:
    done = compare_report(database)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "compare report: 7 requests, 1 shadow copies dropped (target saturated)"
    assert any(line.split() == ["stop", "reason", "3", "4", "75.0%"] for line in lines)
    assert any(line.split() == ["first", "tool", "2", "3", "66.7%"] for line in lines)
    assert any(line.split() == ["shadow", "(target)", "1", "6", "16.7%"] for line in lines)
    assert any(
        line.split() == ["time", "to", "first", "token", "1.25x", "2.55x", "4"] for line in lines
    )
    worst = lines[lines.index("worst disagreements (3 of 3)") + 1 :]
    assert [line.split()[0] for line in worst] == ["r2", "r6", "r3"]
    assert "passthrough Bash/tool_use | target Read/tool_use" in worst[0]


def test_report_of_no_records_says_so(tmp_path: Path) -> None:
    done = compare_report(tmp_path / "never-written.db", "--format", "json")

    report = json.loads(done.stdout)
    assert report["count"] == 0
    assert report["agreement"]["stop_reason"] == {"count": 0, "of": 0, "rate": None}
    assert report["ratios"]["ttft"] == {"median": None, "p90": None, "n": 0}
    assert not (tmp_path / "never-written.db").exists()


def test_report_refuses_a_since_it_cannot_read(database: Path) -> None:
    done = compare_report(database, "--since", "last tuesday")

    assert done.returncode == 2
    assert "--since 'last tuesday'" in done.stderr
    assert "24h" in done.stderr


def test_api_report_is_the_same_json_as_the_command(
    database: Path, start_gateway: GatewayFactory
) -> None:
    gateway = start_gateway(compare={"db_path": str(database)})
    since = "2026-11-20T10:02:00Z"

    served = httpx.get(f"{gateway.url}/api/compare/report", params={"since": since}, timeout=30)
    printed = compare_report(database, "--since", since, "--format", "json")

    assert served.status_code == 200
    assert served.json() == json.loads(printed.stdout)
    bad = httpx.get(f"{gateway.url}/api/compare/report", params={"since": "soon"}, timeout=30)
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", "2026-11-24T11:30:00+00:00"),
        ("24h", "2026-11-23T12:00:00+00:00"),
        ("7d", "2026-11-17T12:00:00+00:00"),
        ("2w", "2026-11-10T12:00:00+00:00"),
        ("2026-11-20", "2026-11-20T00:00:00+00:00"),
        ("2026-11-20T09:00:00+02:00", "2026-11-20T09:00:00+02:00"),
    ],
)
def test_since_takes_a_duration_ago_or_a_time(text: str, expected: str) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    assert parse_since(text, now).isoformat() == expected
