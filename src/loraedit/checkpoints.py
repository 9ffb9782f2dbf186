"""Training's state on disk: resumable checkpoints, a finished run's LoRA files, the stage-1 cache.

Crash safety: a checkpoint folder appears by one rename and is never modified after, so a process
killed at any instant leaves the previous checkpoint whole; `remove_leftovers` deletes what a killed run
may have left half-written. A checkpoint holds the LoRA of every expert, the optimiser and the step, no
RNG state: every random draw of a step is a function of (seed, phase, step) (`train.train_lora`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors
import torch
from safetensors.torch import load_file, save_file

from . import lora_io
from .backends.base import EncodedSample, Expert
from .cache import content_key
from .errors import InputError
from .media import atomic_path

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass
class TrainState:
    phase: int = 0
    step: int = 0  # steps done within the phase
    losses: list[list[float]] = field(default_factory=list)  # per phase


def finished_lora_files(out_dir: Path, backend, run_key: str) -> dict[str, Path] | None:
    """The LoRA files of a finished run with this exact key in `out_dir`, if all are there."""
    try:
        log = json.loads((out_dir / "train_log.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(log, dict) or log.get("run_key") != run_key or not isinstance(log.get("lora_files"), dict):
        return None
    paths = {e.name: out_dir / str(log["lora_files"].get(e.name, "")) for e in backend.experts}
    return paths if all(p.is_file() and p.suffix == ".safetensors" for p in paths.values()) else None


def remove_leftovers(out_dir: Path, ckpt_dir: Path) -> None:
    """Delete what a killed run may have left half-written: checkpoint temp folders and trash."""
    leftovers = [*ckpt_dir.glob(".tmp-ckpt-*"), *ckpt_dir.glob(".old-ckpt-*"), *out_dir.glob(".checkpoints-done-*")]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


class Stage1Cache:
    """Finished stage-1 LoRAs by content, so new edited later frames never retrain stage 1.

    Stage 1 learns the clip's motion from the motion samples alone; its result is a function of the
    model, the motion samples and the settings stage 1 uses (not stage 2's, not the checkpoint interval),
    and of the expert. The entry is the fp32 LoRA and the phase's losses, so a run that starts from it
    continues exactly as if it had trained stage 1 itself (stage 2 starts with a fresh optimiser anyway).
    """

    _NOT_STAGE1 = ("stage2_steps", "stage2_epochs", "stage2_repeats", "checkpoint_every")

    def __init__(self, root: Path, cfg: TrainConfig, model_key: str, motion: list[EncodedSample]):
        self.root = Path(root)
        settings = {k: v for k, v in cfg.key_fields().items() if k not in self._NOT_STAGE1}
        self.key = content_key("stage1", json.dumps(settings, sort_keys=True), model_key,
                               *[t for s in motion for t in (s.target, s.condition, s.text, s.image)])

    def _path(self, expert: Expert) -> Path:
        return self.root / f"{content_key(self.key, expert.name, expert.sigma_low, expert.sigma_high)}.safetensors"

    def restore(self, expert: Expert, transformer: torch.nn.Module) -> list[float] | None:
        """Load a stored stage-1 LoRA into `transformer`; its losses, or None when there is none."""
        path = self._path(expert)
        try:
            with safetensors.safe_open(str(path), "pt") as f:
                losses = json.loads(f.metadata()["losses"])
            lora_io.load_lora_state(transformer, load_file(str(path)))
        except (OSError, ValueError, KeyError, TypeError, InputError, safetensors.SafetensorError):
            return None  # absent or unreadable: train stage 1
        return losses

    def store(self, expert: Expert, transformer: torch.nn.Module, losses: list[float]) -> None:
        path = self._path(expert)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(lora_io.lora_state(transformer), str(tmp), metadata={"losses": json.dumps(losses)})


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint (folders appear by atomic rename, so any with state.json is whole)."""
    found = sorted(p for p in ckpt_dir.glob("ckpt-*") if (p / "state.json").is_file()) if ckpt_dir.is_dir() else []
    return found[-1] if found else None


def save_checkpoint(ckpt_dir: Path, backend, state: TrainState, optimizer, run_key: str) -> None:
    """Write LoRA weights of every expert, the optimiser and the step into a new folder, then rename it."""
    done = sum(len(x) for x in state.losses)
    final = ckpt_dir / f"ckpt-{done:07d}"
    tmp = ckpt_dir / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for expert in backend.experts:
        save_file(lora_io.lora_state(backend.transformer(expert.name)), str(tmp / f"{expert.name}.safetensors"))
    groups = None
    if optimizer is not None:
        opt = optimizer.state_dict()
        tensors = {f"{i}.{name}": v.detach().cpu().contiguous() for i, s in opt["state"].items()
                   for name, v in s.items()}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        groups = opt["param_groups"]
    (tmp / "state.json").write_text(json.dumps(
        {"run_key": run_key, "phase": state.phase, "step": state.step, "losses": state.losses,
         "param_groups": groups}))
    if final.exists():  # e.g. Ctrl-C right after this step's checkpoint: move the old one aside, never edit it
        old = ckpt_dir / f".old-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    for stale in sorted(ckpt_dir.glob("ckpt-*"))[:-2]:  # keep the two newest
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(path: Path, backend, run_key: str) -> tuple[TrainState, dict | None]:
    try:
        return read_checkpoint(path, backend, run_key)
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as exc:
        raise InputError(f"checkpoint {path} is damaged ({type(exc).__name__}): delete that folder to resume from "
                         "the checkpoint before it, or start over in another output folder") from None


def read_checkpoint(path: Path, backend, run_key: str) -> tuple[TrainState, dict | None]:
    meta = json.loads((path / "state.json").read_text())
    if meta["run_key"] != run_key:
        raise InputError(f"checkpoint {path} belongs to a run with other inputs or settings: resume with the same "
                         "command, or start over in another output folder")
    for expert in backend.experts:
        lora_io.load_lora_state(backend.transformer(expert.name),
                                load_file(str(path / f"{expert.name}.safetensors")))
    optimizer_state = None
    if meta["param_groups"] is not None:
        flat = load_file(str(path / "optimizer.safetensors"))
        per_param: dict[int, dict] = {}
        for key, value in flat.items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        optimizer_state = {"state": per_param, "param_groups": meta["param_groups"]}
    return TrainState(meta["phase"], meta["step"], meta["losses"]), optimizer_state
