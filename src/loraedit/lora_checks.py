"""Checks of LoRA files against a model folder, from their headers alone (no tensor is read).

`--lora` (one file per expert: base fingerprint, rank, names, shapes), `--extra-lora` (against every expert it
attaches to) and the LoRA training will create (`--targets` must match a layer). Part of `validate.check_run`;
`lora_file_problems` serves the web app's LoRA upload too.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from . import lora_io
from .backends import ModelFolder
from .config import SampleConfig, TrainConfig
from .findings import Findings


def check_loras(found: Findings, folder: ModelFolder, loras: list[Path]) -> None:
    if len(loras) != len(folder.experts):
        names = " and ".join(["lora.safetensors", "lora_2.safetensors"][: len(folder.experts)])
        found.problems.append(f"this {folder.kind} model has {len(folder.experts)} expert(s) and needs as many LoRA "
                              f"files, got {len(loras)}: pass {names} with --lora, in that order")
        return
    for path, expert in zip(loras, folder.experts):
        _check_lora(found, folder, path, [expert], expert)


def check_extra_loras(found: Findings, folder: ModelFolder, scfg: SampleConfig) -> None:
    """Each --extra-lora against every expert it will be attached to (from its header, like --lora)."""
    for extra in scfg.extra_loras:
        _check_lora(found, folder, Path(extra.path), list(folder.experts), None, option="--extra-lora")


def _check_lora(found: Findings, folder: ModelFolder, path: Path, experts: list[str], expert: str | None,
                option: str = "") -> None:
    """One LoRA file's header against the `experts` it attaches to (`expert`: the one --lora gives it for); a
    file of another tool that fits gets a note that its base could not be verified."""
    header = found.attempt(lora_io.inspect_lora, path, option=option or "--lora")
    if header is None:
        return
    problems: list[str] = []
    for name in experts:
        try:
            expected = folder.lora_shapes(name, header.settings.rank, header.settings.targets)
        except re.error:
            problems.append(f"LoRA file {path} has damaged target settings: train it again")
            break
        problems.extend(p for p in lora_io.lora_problems(header, expected, folder.fingerprint, expert)
                        if p not in problems)
    found.problems.extend(f"{option}: {p}" if option else p for p in problems)
    note = lora_io.unverified_base_note(header)
    if note and not problems:
        found.notes.append(note)


def lora_file_problems(folder: ModelFolder, loras: list[Path]) -> list[str]:
    """Why these LoRA files cannot be used with the model in `folder`: `sample --lora`'s checks (one file per
    expert, the base model's fingerprint, rank, names and shapes), from the files' headers alone."""
    found = Findings()
    check_loras(found, folder, [Path(p) for p in loras])
    return found.problems


def lora_params(found: Findings, folder: ModelFolder, cfg: TrainConfig) -> int:
    """Number of LoRA weights training will create; a problem if --targets matches no layer (or, for a family
    whose files fuse layers, adapts only part of one)."""
    targets = cfg.targets or folder.default_lora_targets
    shapes = [found.attempt(folder.lora_shapes, expert, cfg.rank, targets) for expert in folder.experts]
    if any(s is None for s in shapes):
        return 0
    params = sum(math.prod(shape) for expert_shapes in shapes for shape in expert_shapes.values())
    if not params:
        found.problems.append(f"--targets {cfg.targets!r} matches no Linear layer of this model's transformer: "
                              r"give a regex over module names like blocks\.\d+\.attn1\.to_q (or drop it)")
    return params
