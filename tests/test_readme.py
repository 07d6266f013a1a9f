"""The README's two opening commands stay true: CI runs exactly its test command, and the
first one runs the demo (exercised end to end in test_process)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.DOTALL)[:2]


def test_the_first_command_installs_and_starts_the_demo() -> None:
    run, _ = readme_commands()
    assert run.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert run.endswith(".venv/bin/cc-proxy demo")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci
    assert test.endswith(".venv/bin/pytest")
