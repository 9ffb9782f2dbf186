"""Local transformers model folders for the helper models (SAM2, Florence-2, CLIP): checked, then loaded.

The helper models come from a folder the user points to, never from a hub, and only their safetensors
weights and JSON configs are read: a folder with pickle weights only (.bin/.pt, which can run code when
opened), Python files of its own, or a config asking for remote code (`auto_map`) is refused before
anything loads, with a message naming the folder and the option. `load` then calls `from_pretrained`
with `local_files_only=True, use_safetensors=True` (and never `trust_remote_code`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .backends.base import PICKLE_SUFFIXES, model_fingerprint
from .errors import InputError

__all__ = ["folder_problems", "model_type", "fingerprint", "load_model", "load_processor"]


def folder_problems(path: Path, option: str, what: str, model_types: tuple[str, ...],
                    needs: tuple[str, ...] = ()) -> list[str]:
    """Problems with a local model folder, one line each naming `option` and the folder; [] if it is usable.

    `model_types` are the config.json `model_type` values the caller can load; `needs` are further files
    that must exist (`a|b`: either). An `option` ending in ":" is a prefix of the value (`--caption florence2:`).
    """
    path = Path(path)
    where = f"{option}{path}" if option.endswith(":") else f"{option} {path}"
    if not path.exists():
        return [f"{where} does not exist: give the local folder of the {what} model (save_pretrained layout)"]
    if not path.is_dir():
        return [f"{where} is a file: give the folder holding the {what} model's config.json and safetensors"]
    config_path = path / "config.json"
    if not config_path.is_file():
        return [f"{where} has no config.json: give the folder of a {what} model in transformers' layout"]
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{where}: config.json is not valid JSON ({type(exc).__name__}): restore it from the model's download"]
    if not isinstance(config, dict):
        return [f"{where}: config.json is not a JSON object: restore it from the model's download"]
    problems = []
    kind = config.get("model_type")
    if kind not in model_types:
        problems.append(f"{where} holds a {kind!r} model, not a {what} model: give a folder whose config.json has "
                        f"model_type {' or '.join(repr(t) for t in model_types)}")
    if "auto_map" in config:
        problems.append(f"{where}: config.json asks for code shipped with the model (auto_map), which loraedit never "
                        "runs: use the transformers-native release of the model")
    files = [p for p in path.iterdir() if p.is_file()]
    code = sorted(p.name for p in files if p.suffix == ".py")
    if code:
        problems.append(f"{where} ships Python code ({code[0]}), which loraedit never runs: use the "
                        "transformers-native release of the model (weights and JSON only)")
    if not any(p.suffix == ".safetensors" for p in files):
        pickled = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            problems.append(f"{where} has only pickle weights ({pickled[0]}), which loraedit never opens (they can "
                            "run code): use the safetensors release, or convert with "
                            "save_pretrained(safe_serialization=True)")
        else:
            problems.append(f"{where} has no .safetensors weights: finish copying the model")
    for index in (p for p in files if p.name.endswith(".safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"{where}: {index.name} is not a valid weight index: restore it from the download")
            continue
        lost = sorted(s for s in shards if not (path / s).is_file())
        if lost:
            problems.append(f"{where} lacks {len(lost)} weight shard(s) its index lists (e.g. {lost[0]}): finish "
                            "copying the model")
    for need in needs:
        alternatives = need.split("|")
        if not any((path / name).is_file() for name in alternatives):
            problems.append(f"{where} has no {' or '.join(alternatives)}: copy the complete model folder (the "
                            "processor's files too)")
    return problems


def check_folder(path: Path, option: str, what: str, model_types: tuple[str, ...], needs: tuple[str, ...] = ()) -> None:
    """`folder_problems` as an InputError."""
    problems = folder_problems(path, option, what, model_types, needs)
    if problems:
        raise InputError(*problems)


def model_type(path: Path) -> str:
    return json.loads((Path(path) / "config.json").read_text())["model_type"]


def fingerprint(path: Path) -> str:
    """Identifies the model for cache keys: its JSON files and its weight files' names and sizes."""
    return model_fingerprint(Path(path))


def load_model(cls, path: Path, **kwargs):
    """`cls.from_pretrained` from the local folder, safetensors only, no hub, no shipped code."""
    return cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False,
                               **kwargs).eval()


def load_processor(cls, path: Path):
    return cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
