"""The three modes and the runtime switch between them (SPEC.md §1)."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    TARGET = "target"
    COMPARE = "compare"
    ANTHROPIC_ONLY = "anthropic-only"


class ModeRefused(Exception):
    """A switch the launch flags or the configuration do not permit."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ModeSwitch:
    """The mode new requests are routed by.

    A request reads the mode once, when it starts; a switch therefore applies to
    requests that start after it, and streams in flight finish where they began.
    """

    def __init__(self, initial: Mode, *, allow_anthropic_only: bool, has_target: bool) -> None:
        self._allow_anthropic_only = allow_anthropic_only
        self._has_target = has_target
        self.current = initial

    def switch(self, mode: Mode) -> None:
        if mode is Mode.ANTHROPIC_ONLY and not self._allow_anthropic_only:
            raise ModeRefused(
                "mode 'anthropic-only' is disabled: restart cc-proxy with "
                "--allow-anthropic-only to permit it",
                403,
            )
        if mode is not Mode.ANTHROPIC_ONLY and not self._has_target:
            raise ModeRefused(
                f"mode {mode.value!r} needs a target URL: restart cc-proxy with "
                "--target-url URL or CC_TARGET__URL",
                409,
            )
        self.current = mode
