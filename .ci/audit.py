"""pip-audit on the locked dependencies (constraints.txt), as .ci/run runs it.

pip-audit reads the vulnerabilities of each pinned release from the package index's JSON
for that release. The index this project's machines reach serves only each project's
JSON, whose `vulnerabilities` are those of the project's latest release: for a pin that
is the latest release that is the same data, so pip-audit is handed it. Any other pin
stays "skipped" in pip-audit's report, listed rather than hidden.
"""

from __future__ import annotations

import sys
from typing import Any

import requests
from packaging.version import InvalidVersion, Version
from pip_audit import _cli
from pip_audit._service import pypi


class LatestReleaseFallback:
    """A session whose missing per-release JSON is the project's, when they agree."""

    def __init__(self, session: requests.Session) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        response = self._session.get(url, **kwargs)
        if response.status_code != 404 or not url.endswith("/json"):
            return response
        base, name, version, _ = url.rsplit("/", 3)
        project = self._session.get(f"{base}/{name}/json", **kwargs)
        try:
            latest = project.ok and Version(project.json()["info"]["version"]) == Version(version)
        except (InvalidVersion, KeyError, ValueError):
            latest = False
        return project if latest else response


_caching_session = pypi.caching_session


def _session(*args: Any, **kwargs: Any) -> Any:
    return LatestReleaseFallback(_caching_session(*args, **kwargs))


pypi.caching_session = _session

if __name__ == "__main__":
    requirements = sys.argv[1] if len(sys.argv) > 1 else "constraints.txt"
    # Every line is an exact pin: nothing to resolve, so no throw-away venv is needed.
    sys.argv = [
        "pip-audit",
        "--requirement",
        requirements,
        "--no-deps",
        "--disable-pip",
        "--progress-spinner",
        "off",
    ]
    _cli.audit()
