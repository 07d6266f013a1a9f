"""What target-bound bodies get, and nothing else (SPEC.md §3): the `--model` name and
the `[target]` sampling defaults where the request lacks them. Passthrough-bound bodies
are never parsed into a new form: they travel as the client's original bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from cc_proxy.config import TargetSettings


@dataclass(frozen=True, slots=True)
class TargetShaping:
    model: str | None
    # added to /v1/messages bodies only where absent; count_tokens takes no sampling fields
    defaults: tuple[tuple[str, Any], ...]

    @classmethod
    def from_settings(cls, target: TargetSettings) -> TargetShaping:
        defaults = (
            ("temperature", target.temperature),
            ("top_p", target.top_p),
            ("max_tokens", target.max_tokens),
        )
        return cls(target.model, tuple((k, v) for k, v in defaults if v is not None))

    def shape(self, body: dict[str, Any], *, sampling: bool) -> bytes | None:
        """The target-bound bytes, or None when nothing needs to change."""
        changes: dict[str, Any] = {}
        if self.model is not None and body.get("model") != self.model:
            changes["model"] = self.model
        if sampling:
            changes.update((k, v) for k, v in self.defaults if k not in body)
        if not changes:
            return None
        return orjson.dumps({**body, **changes})
