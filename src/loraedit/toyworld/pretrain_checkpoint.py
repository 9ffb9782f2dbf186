"""The pretraining job's state on disk: an atomic checkpoint (transformer, AdamW, step, levels, log) and
the world levels a `--work` folder was started with.

The format is what every resumed run reads, on a CPU or a GPU: `checkpoint/transformer.safetensors`,
`optimizer.safetensors` (each state tensor as "<param index>.<name>") and `state.json` (step, levels, the
held-out loss log and AdamW's param groups). A new checkpoint is written beside the old one and swapped in
by renames, so a kill at any moment leaves one whole checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .pretrain_data import FIRST_WORLD_LEVELS, Encoded, parse_levels
from .pretrain_objective import heldout_loss


def save_checkpoint(ckpt: Path, transformer, optimizer, state: dict, losses: list[float], held_enc: Encoded,
                    shift: float = 1.0, motion_weight: float = 0.0) -> None:
    """Log the run so far (mean training loss, held-out loss) in `state` and write the checkpoint atomically."""
    held = heldout_loss(transformer, held_enc)
    entry = {"step": state["step"], "train_loss": round(sum(losses) / max(len(losses), 1), 5),
             "heldout_loss": round(held["all"], 5), "heldout_moving_loss": round(held["moving"], 5),
             "time": time.strftime("%Y-%m-%d %H:%M")}
    if shift != 1.0:
        entry["timestep_shift"] = shift  # the training loss above is on the shifted levels
    if motion_weight:
        entry["motion_weight"] = motion_weight  # ... and weighted towards the moving cells
    state["log"].append(entry)
    print(f"checkpoint: {entry}", flush=True)
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()},
              str(tmp / "transformer.safetensors"))
    opt = optimizer.state_dict()
    save_file({f"{i}.{k}": v.detach().cpu().contiguous() for i, s in opt["state"].items() for k, v in s.items()},
              str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "param_groups": opt["param_groups"]}))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a loaded optimiser's state tensors beside their parameters (a CPU checkpoint resumed on a GPU)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


def unflatten_optimizer_state(flat: dict, groups: list) -> dict:
    """The AdamW state dict back from the checkpoint's flat "<param index>.<name>" tensors and its groups."""
    per: dict[int, dict] = {}
    for key, value in flat.items():
        i, name = key.split(".", 1)
        per.setdefault(int(i), {})[name] = value
    return {"state": per, "param_groups": groups}


def work_levels(work: Path, requested: str | None) -> tuple[int, ...]:
    """The levels of a --work: fixed by its first run (kept in the checkpoint's state), so a resumed run
    and its export, preview and diagnosis see the same world; a different --levels there is refused."""
    state_file = work / "checkpoint" / "state.json"
    stored = None
    if state_file.is_file():
        stored = tuple(json.loads(state_file.read_text()).get("levels", FIRST_WORLD_LEVELS))
    levels = parse_levels(requested) if requested else (stored or FIRST_WORLD_LEVELS)
    if stored is not None and levels != stored:
        raise SystemExit(f"--levels {requested}: {work} was trained on levels {','.join(map(str, stored))}; "
                         f"use those, or a new --work")
    return levels


def switch_levels(work: Path, requested: str) -> tuple[int, ...]:
    """Continue a --work's run on another world: its state takes the new levels (so the resumed run, its
    export, preview and diagnosis all see that world), and `worlds` records from which step each held."""
    levels = parse_levels(requested)
    state_file = work / "checkpoint" / "state.json"
    if not state_file.is_file():
        raise SystemExit(f"--switch-levels {requested}: {work} has no checkpoint to continue; start it with --levels")
    state = json.loads(state_file.read_text())
    old = tuple(state.get("levels", FIRST_WORLD_LEVELS))
    if levels != old:
        worlds = state.get("worlds") or [{"from_step": 0, "levels": list(old)}]
        state["worlds"] = worlds + [{"from_step": state["step"], "levels": list(levels)}]
        state["levels"] = list(levels)
        tmp = state_file.with_name(state_file.name + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_file)
        print(f"{work}: from step {state['step']} on, levels {','.join(map(str, levels))} "
              f"(were {','.join(map(str, old))})")
    return levels
