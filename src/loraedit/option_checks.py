"""Checks of a run's options that need no file: modes, choices, numbers in range, what combines with what.

Step 1 of `validate.check_run`. `found` collects problems (each fatal, all reported together) and notes
(how the run will go), as `findings.Findings` does; every message names the option and the fix.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from . import distributed
from .config import (APPEARANCE_REGIONS, CLIP_VIEWS, MASK_MODES, MODES, SAMPLERS, TIMESTEP_SAMPLING,
                     TRAINING_MODES, ClipInputs, RunOptions, SampleConfig, TrainConfig)
from .performance import performance_problems


def check_options(found, command: str, inputs: ClipInputs, opts: RunOptions,
                   cfg: TrainConfig | None, scfg: SampleConfig | None, loras: tuple[Path, ...]) -> None:
    add = found.problems.append
    if opts.mode not in MODES:
        add(f"--mode {opts.mode!r} is unknown: choose one of {', '.join(MODES)}")
    elif command == "train" and opts.mode not in TRAINING_MODES:
        add(f"--mode {opts.mode} trains no LoRA: train with mask-aware or naive")
    if opts.mask_mode not in MASK_MODES:
        add(f"--mask-mode {opts.mask_mode!r} is unknown: choose {', '.join(MASK_MODES)}")
    if opts.clip_view not in CLIP_VIEWS:
        add(f"--clip-view {opts.clip_view!r} is unknown: choose {', '.join(CLIP_VIEWS)}")
    if opts.caption is not None:
        from .captions import folder_problems

        found.problems.extend(folder_problems(opts.caption))
    if inputs.edited_frames and opts.mode != "mask-aware":
        add(f"--edited-frame is used only by mask-aware training, not --mode {opts.mode}: drop it or use "
            "--mode mask-aware")
    if command == "sample" and opts.mode in TRAINING_MODES and not loras:
        add(f"--mode {opts.mode} needs a trained LoRA: pass --lora (from `loraedit train`)")
    if command == "sample" and opts.mode not in TRAINING_MODES and loras:
        add(f"--lora is not used by --mode {opts.mode}: drop it, or use --mode mask-aware to apply it")
    if cfg is not None and opts.mode in TRAINING_MODES:
        _check_train_config(found, cfg, opts)
    trains = cfg is not None and opts.mode in TRAINING_MODES
    if trains and opts.train_prompt is None and opts.caption is None:
        found.notes.append("training on --prompt, the caption of the *edited* frame: the paper trains on a caption "
                           "of the input's first frame; give one with --train-prompt \"...\" or let a local "
                           "Florence-2 write it (--caption florence2:DIR)")
    uncaptioned = [ef.index for ef in inputs.edited_frames if ef.caption is None]
    if trains and opts.mode == "mask-aware" and uncaptioned and opts.caption is None:
        found.notes.append(f"stage 2 trains edited frame(s) {', '.join(map(str, uncaptioned))} on the training "
                           "prompt: the authors train each on its own caption; give it with --edited-caption "
                           "IDX:\"...\" or let a local Florence-2 write it (--caption florence2:DIR)")
    found.problems.extend(performance_problems(opts.performance, trains=trains))
    if scfg is not None:
        for name, value, ok, need in (
                ("--steps", scfg.steps, scfg.steps >= 1, "at least 1"),
                ("--guidance", scfg.guidance,
                 scfg.guidance is None or (math.isfinite(scfg.guidance) and scfg.guidance >= 0), ">= 0"),
                ("--guidance-2", scfg.guidance_2,
                 scfg.guidance_2 is None or (math.isfinite(scfg.guidance_2) and scfg.guidance_2 >= 0), ">= 0"),
                ("--shift", scfg.shift, math.isfinite(scfg.shift) and scfg.shift > 0, "> 0"),
                ("--sampler", scfg.sampler, scfg.sampler is None or scfg.sampler in SAMPLERS,
                 "from " + ", ".join(SAMPLERS)),
                ("--first-block-cache", scfg.first_block_cache,
                 math.isfinite(scfg.first_block_cache) and scfg.first_block_cache >= 0, ">= 0 (0 = off)"),
                ("--taylorseer", scfg.taylorseer, scfg.taylorseer == 0 or scfg.taylorseer >= 2,
                 "of at least 2 steps (0 = off)"),
                ("--paste-feather", scfg.paste_feather, scfg.paste_feather >= 0, ">= 0 (0 = a hard seam)")):
            if not ok:
                add(f"{name} {value} is invalid: give a value {need}")
        if scfg.first_block_cache and scfg.taylorseer:
            add(f"--first-block-cache {scfg.first_block_cache:g} and --taylorseer {scfg.taylorseer} are two step "
                "caches: use one of them")


def _check_train_config(found, cfg: TrainConfig, opts: RunOptions) -> None:
    add = found.problems.append
    for name, value, ok, need in (
            ("--rank", cfg.rank, cfg.rank >= 1, "at least 1 (default 16)"),
            ("--alpha", cfg.alpha, math.isfinite(cfg.alpha) and cfg.alpha > 0, "> 0 (default 16)"),
            ("--lr", cfg.learning_rate, math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0,
             "> 0 (default 1e-4)"),
            ("--stage1-steps", cfg.stage1_steps, cfg.stage1_steps >= 1, "at least 1 (default 100)"),
            ("--stage2-steps", cfg.stage2_steps, cfg.stage2_steps is None or cfg.stage2_steps >= 0,
             ">= 0 (default: --stage2-epochs epochs)"),
            ("--stage2-epochs", cfg.stage2_epochs, cfg.stage2_epochs >= 1, "at least 1 (default 10)"),
            ("--stage2-repeats", cfg.stage2_repeats, cfg.stage2_repeats >= 1, "at least 1 (default 9)"),
            ("--appearance-augment", cfg.appearance_augment, cfg.appearance_augment >= 0, ">= 0 (0 = off)"),
            ("--checkpoint-every", cfg.checkpoint_every, cfg.checkpoint_every >= 0, ">= 0 (0 = never)"),
            ("--draws-per-step", cfg.draws_per_step, cfg.draws_per_step >= 1, "at least 1 (--fsdp: the GPUs)"),
            ("--timestep-shift", cfg.timestep_shift, math.isfinite(cfg.timestep_shift) and cfg.timestep_shift > 0,
             "> 0 (default 3; 1 = no shift)")):
        if not ok:
            add(f"{name} {value} is invalid: give a value {need}")
    world = distributed.active().world
    if cfg.draws_per_step >= 1 and cfg.draws_per_step % world:
        add(f"--draws-per-step {cfg.draws_per_step} does not split over the {world} processes of this job: give a "
            f"multiple of {world}")
    if cfg.appearance_region not in APPEARANCE_REGIONS:
        add(f"--appearance-region {cfg.appearance_region!r} is unknown: choose {', '.join(APPEARANCE_REGIONS)}")
    if cfg.timestep_sampling not in TIMESTEP_SAMPLING:
        add(f"--timestep-sampling {cfg.timestep_sampling!r} is unknown: choose {', '.join(TIMESTEP_SAMPLING)}")
    try:
        re.compile(cfg.targets or "")
    except re.error as exc:
        add(f"--targets {cfg.targets!r} is not a regular expression ({exc}): give a regex over module names "
            r"like blocks\.\d+\.attn1\.to_q")
    n = opts.low_cost_clip_frames
    if opts.low_cost and (n < 5 or (n - 1) % 4):
        add(f"--low-cost-clip-frames {n} is not 4k+1 and at least 5: use e.g. 13")
