"""Errors name settings below the command line; only the command line words them as flags (issue 14).

A message raised by the library names a setting (`errors.setting`, its config field in backticks) and the
fix; the web app and a batch summary show it as raised, and the command line prints each setting as the
flag that sets it (`cli.flags.FLAGS`), so what a user of the command line reads still names the option.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from loraedit.cli import build_parser
from loraedit.cli.flags import FLAGS
from loraedit.errors import InputError, LoraEditError, error_text, setting

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "loraedit"


def test_the_command_line_words_a_setting_as_its_flag_and_nothing_else_does():
    exc = InputError(f"out/ holds a checkpoint: pass {setting('resume')} to continue it",
                     f"{setting('frames')} 10 is not 4k+1: ask for {setting('frames')} 9")
    assert error_text(exc, FLAGS).splitlines()[1:] == [
        "  - out/ holds a checkpoint: pass --resume to continue it", "  - --frames 10 is not 4k+1: ask for --frames 9"]
    assert "pass `resume` to continue it" in error_text(exc)  # the web app's wording: the setting's name
    # Backticked commands and names that are no setting are left as written.
    other = LoraEditError("run `torchrun --nproc-per-node N -m loraedit.cli train` or `pip`; lower `learning_rate`")
    assert error_text(other, FLAGS) == ("loraedit: error: run `torchrun --nproc-per-node N -m loraedit.cli train` "
                                        "or `pip`; lower --lr")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    found = set()
    for action in parser._actions:  # noqa: SLF001 (argparse has no public API for its options)
        found |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def _named_settings() -> set[str]:
    """Every name the package passes to `setting(...)`."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setting" and node.args:
                assert isinstance(node.args[0], ast.Constant), f"{path}: name the setting literally, so it is checked"
                names.add(node.args[0].value)
    return names


def test_every_setting_the_package_names_has_a_flag_the_command_line_knows():
    named = _named_settings()
    assert {"resume", "frames", "learning_rate"} <= named  # the scan sees the package
    assert not named - FLAGS.keys(), f"{sorted(named - FLAGS.keys())}: add their flags to cli/flags.py"
    options = _options(build_parser())
    assert not set(FLAGS.values()) - options, f"{sorted(set(FLAGS.values()) - options)} are no options"


#: Modules whose raised messages word a command's own options, by design.
WORDS_FLAGS = {
    "validate", "option_checks", "lora_checks",  # the check of a run's inputs (README: every option by name)
    "evaluate",  # `loraedit eval`'s own inputs
    "ray_batch",  # `loraedit batch --address`
    "devices",  # `loraedit plan --gpu`
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"`[^`]* [^`]*`")  # a command line to run, quoted whole (`torchrun ... --fsdp`)


def _raised_flags(path: Path) -> list[str]:
    """The flags the source of each `raise` statement of `path` names, outside quoted commands."""
    source, found = path.read_text(), []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            text = COMMAND.sub("", ast.get_source_segment(source, node.exc))
            found += [f"line {node.lineno}: {flag}" for flag in FLAG.findall(text)]
    return found


@pytest.mark.parametrize("path", [p for p in sorted(PACKAGE.rglob("*.py"))
                                  if p.relative_to(PACKAGE).parts[0] not in ("cli", "ui", "tools", "toyworld")
                                  and p.stem not in WORDS_FLAGS], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_raises_errors_that_name_settings_not_flags(path):
    assert not _raised_flags(path), f"{_raised_flags(path)}: name the setting with errors.setting(...)"
