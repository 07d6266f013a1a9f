"""The three modes and the runtime switch between them (SPEC.md §1)."""

from __future__ import annotations

from enum import StrEnum

from cc_proxy.shared import Cell


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
    requests that start after it, and streams in flight finish where they began. The mode
    lives in a `Cell`, so that with several workers a switch reaches all of them.
    """

    def __init__(
        self,
        initial: Mode,
        *,
        allow_anthropic_only: bool,
        has_target: bool,
        cell: Cell | None = None,
    ) -> None:
        self._allow_anthropic_only = allow_anthropic_only
        self._has_target = has_target
        # A shared cell was set to the initial mode before the workers started: a worker
        # that starts late must not undo a switch another has made.
        self._cell = cell if cell is not None else Cell(number_of(initial))

    @property
    def current(self) -> Mode:
        return _MODES[self._cell.value]

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
        self._cell.value = number_of(mode)


_MODES = tuple(Mode)


def number_of(mode: Mode) -> int:
    """The mode as the integer its `Cell` holds."""
    return _MODES.index(mode)
