"""What a check of the user's inputs found: problems (each fatal, all reported together) and notes.

Every check of `validate.check_run` (and `option_checks`, `lora_checks`) records into one `Findings`, so a run
with three wrong inputs says all three at once instead of one per attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import InputError

_T = TypeVar("_T")


class Findings:
    """Problems (each fatal, all reported together) and notes (how inputs will be fitted)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def attempt(self, fn: Callable[..., _T], *args, option: str = "") -> _T | None:
        """`fn(*args)`, or None with its InputError's problems recorded (prefixed with the option at fault)."""
        try:
            return fn(*args)
        except InputError as exc:
            self.problems.extend(f"{option}: {p}" if option else p for p in exc.problems)
            return None

    def passes(self, check: Callable[..., None], *args, option: str = "") -> bool:
        """Run a check that raises InputError; record its problems and say whether it passed."""
        before = len(self.problems)
        self.attempt(check, *args, option=option)
        return len(self.problems) == before
