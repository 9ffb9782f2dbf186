"""The registry of model families: `--model` (a name or a folder) -> the folder's facts -> a loaded backend.

A folder is recognised by what it holds (the pipeline class in its `model_index.json`), never by its
name. Adding a family is one entry in `FAMILIES` and a module beside this one; nothing else in the
package names a family.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, setting
from .base import Backend, EncodedSample, Expert, LoraKeyMap, ModelFolder

__all__ = ["Backend", "EncodedSample", "Expert", "LoraKeyMap", "ModelFolder", "FAMILIES", "resolve_model_dir",
           "read_model_folder", "load_backend", "lora_key_map"]


@dataclass(frozen=True)
class Family:
    """One model family: the pipeline classes that name it, its folder reader and its loader, the kinds its
    folders report and how its LoRA files name their weights."""

    name: str
    pipeline_classes: tuple[str, ...]
    read_folder: Callable[[Path], ModelFolder]
    load: Callable[..., Backend]
    kinds: tuple[str, ...]
    lora_key_map: LoraKeyMap


def _wan() -> Family:
    from .wan import load_wan
    from .wan_folder import KINDS, PIPELINE_CLASSES, read_wan_folder
    from .wan_lora import LORA_KEY_MAP

    return Family("wan", PIPELINE_CLASSES, read_wan_folder, load_wan, KINDS, LORA_KEY_MAP)


def _hunyuan() -> Family:
    from .hunyuan import load_hunyuan
    from .hunyuan_folder import KINDS, PIPELINE_CLASSES, read_hunyuan_folder
    from .hunyuan_lora import LORA_KEY_MAP

    return Family("hunyuan", PIPELINE_CLASSES, read_hunyuan_folder, load_hunyuan, KINDS, LORA_KEY_MAP)


#: Every family loraedit runs, most common first; the first is the one an unknown folder is read as
#: (so its reader's message says what the folder lacks).
FAMILIES: tuple[Callable[[], Family], ...] = (_wan, _hunyuan)


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """The embedded models by name, anything else as a local folder path.

    `toy`: the pretrained toy-world model committed inside the package (96x96, 17 frames);
    `toy-random` / `toy-wan2.2`: tiny random-weight Wan2.1 / Wan2.2 (two experts) models for mechanics.
    """
    from ..toyworld.models import WORLD_WEIGHTS, toy_model_folder

    if str(model) == "toy":
        if not (WORLD_WEIGHTS / "model_index.json").is_file():
            raise InputError(f"the toy-world weights are missing from {WORLD_WEIGHTS}: reinstall loraedit from a "
                             f"full checkout, or use {setting('model')} toy-random")
        return WORLD_WEIGHTS
    if str(model) in ("toy-random", "toy-wan2.1"):
        return toy_model_folder("wan2.1")
    if str(model) == "toy-wan2.2":
        return toy_model_folder("wan2.2")
    return Path(model).expanduser()


def family_of(model_dir: Path) -> Family:
    """The family whose pipeline class the folder's `model_index.json` names (else the first family, whose
    reader then says what is wrong with the folder)."""
    families = [make() for make in FAMILIES]
    try:
        cls = json.loads((Path(model_dir) / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return families[0]
    return next((f for f in families if cls in f.pipeline_classes), families[0])


def read_model_folder(model_dir: str | os.PathLike) -> ModelFolder:
    """Check a model folder and describe it, without loading weights; one InputError lists every problem."""
    path = Path(model_dir)
    return family_of(path).read_folder(path)


def load_backend(model: str | os.PathLike, device=None, perf=None) -> Backend:
    """Load `--model` (a name or a local folder) as its family's backend. Never touches a hub."""
    import torch

    path = resolve_model_dir(model)
    return family_of(path).load(path, torch.device(device) if isinstance(device, str) else device, perf=perf)


def lora_key_map(kind: str) -> LoraKeyMap:
    """How LoRA files of a model of this `kind` (as recorded in the file: `LoraSettings.base_kind`) name their
    weights; the first family's layout for an unknown or empty kind (files written before kinds were recorded)."""
    families = [make() for make in FAMILIES]
    return next((f for f in families if kind in f.kinds), families[0]).lora_key_map
