"""The failures a user can see, each with its exit code, and how a GPU out-of-memory becomes one.

The CLI prints these messages and nothing else (no traceback unless --debug), so every message names
the file or setting at fault and the fix. Modules below the command line name a setting by its field
(`setting`), never by a flag: the web app has no flags, and the command line words each setting as the
flag that sets it when it prints (`error_text(exc, flags)`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
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


def setting(name: str) -> str:
    """One of a run's settings (its config field: "resume", "learning_rate") as a message names it.

    `f"pass {setting('resume')} to continue it"` reads "pass `resume` to continue it" wherever the message
    is shown as raised (the web app, a batch summary); the command line prints "pass --resume ...".
    Write the value after the name ("{setting('frames')} 9"), as a flag takes it.
    """
    return f"`{name}`"


#: A setting named by `setting` inside a message (commands in backticks have spaces, so never match).
_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def worded(text: str, flags: Mapping[str, str]) -> str:
    """`text` with every setting that `flags` knows replaced by its flag; any other backticked name kept."""
    return _SETTING.sub(lambda m: flags.get(m.group(1), m.group(0)), text)


def error_text(exc: LoraEditError, flags: Mapping[str, str] | None = None) -> str:
    """One line for one problem; a header and one indented line per problem when there are several
    (what the command line prints, with `flags` naming its settings, and the web app shows without the
    prefix)."""
    problems = [" ".join(p.split()) for p in (exc.problems if isinstance(exc, InputError) else (str(exc),))]
    if flags:
        problems = [worded(p, flags) for p in problems]
    if len(problems) == 1:
        return f"loraedit: error: {problems[0]}"
    return "\n".join([f"loraedit: error: {len(problems)} problems with the input (nothing was loaded or run):",
                      *(f"  - {p}" for p in problems)])
