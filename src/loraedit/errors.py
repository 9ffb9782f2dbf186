"""The failures a user can see, each with its exit code, and how a GPU out-of-memory becomes one.

The CLI prints these messages and nothing else (no traceback unless --debug), so every message names
the file or option at fault and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class LoraEditError(Exception):
    """A runtime failure (exit code 1): the input was fine, something went wrong while working."""

    exit_code = 1


class InputError(LoraEditError):
    """Bad usage or input (exit code 2): each problem names the file or option and says the fix.

    Up-front validation reports every problem it finds at once (`InputError(*problems)`), so a user
    fixes them all before the next attempt instead of discovering them one model load at a time.
    Each problem is one line.
    """

    exit_code = 2

    def __init__(self, *problems: str):
        super().__init__(*problems)
        self.problems: tuple[str, ...] = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


class Interrupted(LoraEditError):
    """Ctrl-C (exit code 130, the shell's convention for SIGINT); the message says how to resume."""

    exit_code = 130


class Cancelled(LoraEditError):
    """A job stopped on request (the web app's Cancel), raised by a progress callback between training steps;
    training saves a checkpoint first and re-raises it with the step and where the checkpoint is."""

    exit_code = 130


@contextmanager
def out_of_memory_advice(doing: str, advice: str) -> Iterator[None]:
    """Turn a GPU out-of-memory error into a LoraEditError that says what to try instead.

    torch's own message (allocator statistics) tells the user nothing about loraedit's options;
    `advice` names them (a lower-memory mode, fewer frames, a smaller size).
    """
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        raise LoraEditError(f"the GPU ran out of memory while {doing}: {advice}") from None


def error_text(exc: LoraEditError) -> str:
    """One line for one problem; a header and one indented line per problem when there are several
    (what the command line prints, and the web app shows without the prefix)."""
    problems = [" ".join(p.split()) for p in (exc.problems if isinstance(exc, InputError) else (str(exc),))]
    if len(problems) == 1:
        return f"loraedit: error: {problems[0]}"
    return "\n".join([f"loraedit: error: {len(problems)} problems with the input (nothing was loaded or run):",
                      *(f"  - {p}" for p in problems)])
