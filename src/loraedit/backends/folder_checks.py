"""Checks every diffusers model folder gets, whatever its family: JSON configs, components, weights, info.

A family's folder reader (`wan_folder`, `hunyuan_folder`) says what its model must be; what any folder must
be is here, so both refuse the same things with the same words: configs that are not JSON, components from
a library other than diffusers or transformers (code shipped with a model never runs), weights that are
missing, partial or only pickles (which can run code when opened), and a malformed `loraedit_model.json`
(the working size, frame count, negative prompt and CFG scale a folder may declare for itself).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .base import PICKLE_SUFFIXES

#: Where component classes may come from: the two libraries, or this package (the toy world's codec).
#: Never code shipped in the folder, never another installed module a folder names.
COMPONENT_LIBRARIES = ("diffusers", "transformers")
OWN_LIBRARY_PREFIX = "loraedit."
INFO_FILE = "loraedit_model.json"


@dataclass(frozen=True)
class FolderInfo:
    """What a folder's `loraedit_model.json` says about it (each None when not given)."""

    working_size: tuple[int, int] | None
    frames: int | None
    negative_prompt: str | None
    guidance: float | None
    window: int | None = None  # frames the model samples at once; a longer clip is edited window by window


def read_json(path: Path, problems: list[str]) -> dict:
    """The JSON object in `path`, or {} with a problem recorded."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path} is not valid JSON ({type(exc).__name__}: {' '.join(str(exc).split())}): "
                        "restore the file from the model's download")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path} holds a {type(data).__name__}, not a JSON object: restore it from the download")
        return {}
    return data


def components(index: dict) -> dict[str, list]:
    """model_index.json's components that are present: name -> [library, class]."""
    return {name: spec for name, spec in index.items()
            if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and spec[0] is not None}


def component_problems(model_dir: Path, parts: dict[str, list], weight_components: tuple[str, ...]) -> list[str]:
    """Every component from diffusers/transformers (or this package), with its folder; weights safe and whole."""
    problems = []
    for name, (library, _) in sorted(parts.items()):
        if library not in COMPONENT_LIBRARIES and not str(library).startswith(OWN_LIBRARY_PREFIX):
            problems.append(f"model folder {model_dir}: component {name} comes from {library!r}, not diffusers or "
                            "transformers: loraedit never runs code shipped with a model; use the official folder")
        elif name in weight_components:
            problems.extend(weight_problems(model_dir / name))
        elif not (model_dir / name).is_dir():
            problems.append(f"model folder {model_dir} lacks the {name}/ folder that model_index.json lists: "
                            "copy the complete model folder")
    return problems


def read_info_json(model_dir: Path, problems: list[str]) -> dict:
    """The folder's `loraedit_model.json` as read (absent: {})."""
    path = model_dir / INFO_FILE
    return read_json(path, problems) if path.is_file() else {}


def check_info(info: dict, info_path: Path, default_size: tuple[int, int], default_frames: int,
               problems: list[str]) -> FolderInfo:
    """What `loraedit_model.json` declares (or the family's defaults), every malformed key recorded as a problem."""
    size, frames = info.get("working_size", default_size), info.get("frames", default_frames)
    sized = (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
             and isinstance(frames, int) and frames > 0)
    if not sized:
        problems.append(f"{info_path} has working_size {size!r} and frames {frames!r}: give "
                        "[width, height] and a frame count as positive integers, or delete the file")
    negative = info.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        problems.append(f"{info_path} has negative_prompt {negative!r}: give a string, or leave the key out")
    guidance = info.get("guidance")
    if guidance is not None and not (isinstance(guidance, int | float) and not isinstance(guidance, bool)
                                     and math.isfinite(guidance) and guidance >= 0):
        problems.append(f"{info_path} has guidance {guidance!r}: give a number >= 0, or leave the key out")
    window = info.get("window")
    if window is not None and not (isinstance(window, int) and not isinstance(window, bool) and window >= 5
                                   and (window - 1) % 4 == 0):
        problems.append(f"{info_path} has window {window!r}: give the frames the model samples at once (4k+1, "
                        "at least 5), or leave the key out")
        window = None
    return FolderInfo((int(size[0]), int(size[1])) if sized else None, int(frames) if sized else None,
                      negative if isinstance(negative, str) else None,
                      float(guidance) if isinstance(guidance, int | float) and not isinstance(guidance, bool) else None,
                      window)


def window_frames(declared: FolderInfo, native: int) -> int:
    """The frames a model samples at once: the folder's `window`, else the family's native clip length, never
    fewer than its default frames (a clip up to this long is one window; a longer one is chained)."""
    if declared.window is not None:
        return declared.window
    return max(native, declared.frames or 0)


def linear_lora_shapes(model, rank: int, targets: str) -> dict[str, tuple[int, int]]:
    """peft-named LoRA weights (`<module>.lora_A.weight` -> shape) for the Linear layers of `model` (usually
    built on the meta device) whose full name matches `targets`: the modules peft would adapt."""
    import torch

    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and re.fullmatch(targets, name):
            shapes[f"{name}.lora_A.weight"] = (rank, module.in_features)
            shapes[f"{name}.lora_B.weight"] = (module.out_features, rank)
    return shapes


def weight_problems(component: Path) -> list[str]:
    """Safetensors weights present and whole (every shard an index names exists); pickle files refused."""
    if not component.is_dir():
        return [f"model folder {component.parent} lacks the {component.name}/ folder that model_index.json lists: "
                "copy the complete model folder"]
    files = [p for p in component.iterdir() if p.is_file()]
    problems = []
    code = sorted(p.name for p in files if p.suffix == ".py")
    if code:
        problems.append(f"model folder {component.parent}: {component.name}/ ships Python code ({code[0]}), which "
                        "loraedit never runs: use the official diffusers-format folder")
    if not (component / "config.json").is_file():
        problems.append(f"model folder {component.parent} lacks {component.name}/config.json: "
                        "copy the complete model folder")
    for index in (p for p in files if p.name.endswith(".safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"{index} is not a valid weight index: restore it from the model's download")
            continue
        lost = sorted(s for s in shards if not (component / s).is_file())
        if lost:
            problems.append(f"model folder {component.parent}: {component.name}/ lacks {len(lost)} weight shard(s) "
                            f"its index lists (e.g. {lost[0]}): finish copying the model")
    if not any(p.suffix == ".safetensors" for p in files):
        pickled = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            problems.append(f"model folder {component.parent}: {component.name}/ has only pickle weights "
                            f"({pickled[0]}), which loraedit never opens (they can run code): use the safetensors "
                            "release of the model or convert it with save_pretrained(safe_serialization=True)")
        else:
            problems.append(f"model folder {component.parent}: {component.name}/ has no .safetensors weights: "
                            "finish copying the model")
    return problems
