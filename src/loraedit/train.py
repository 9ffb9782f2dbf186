"""The LoRA training loop: flow matching on encoded samples, checkpoints, exact resume.

Model-agnostic: it sees a backend (`predict`, `experts`, `transformer`) and `EncodedSample`s. Training
runs in phases, one per (stage, expert): stage 1 on the motion samples, then stage 2 (edited later
frames + the motion samples) continuing from the stage-1 LoRA with a fresh optimiser; Wan2.2's two
experts each get their own LoRA trained on their own noise range.

Every random draw of step `s` (sample order, noise, sigma) comes from a generator seeded by
(seed, stage, expert, step, and the draw's index when a step averages several: `draws_per_step`), so a run
resumed from a checkpoint draws exactly what the uninterrupted run drew: a checkpoint needs only the
LoRA, the optimiser and the step, no RNG state. For the same reason a step's draws can be computed by
different processes (`distributed`: the base sharded over GPUs), giving the LoRA one process gives. Nor
do the draws depend on whether a stage 2 follows, so a finished stage 1 is reusable (`Stage1Cache`): a
run on the same clip, model and stage-1 settings that only adds or changes edited later frames starts
from it.

Crash safety: a checkpoint folder appears by one rename and is never modified after, so a process
killed at any instant leaves the previous checkpoint whole; the final LoRA files are written atomically
before the checkpoints are removed, and `train_log.json` records the run's key, so `--resume` after a
finished run (say an `edit` killed while sampling) reuses its LoRA instead of training again. A
non-finite or exploding loss, or a non-finite gradient, stops training before the optimiser step, so
no checkpoint ever holds a damaged LoRA.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoints, distributed, lora_io
from .backends.base import EncodedSample, Expert
from .cache import content_key
from .conditioning import stage2_schedule
from .config import TrainConfig  # noqa: F401 (re-exported: the loop's settings)
from .errors import Cancelled, InputError, Interrupted, LoraEditError, setting
from .media import atomic_path
from .performance import checkpointed_blocks, set_attention, set_gradient_checkpointing

#: A loss this many times the median of the phase's losses so far means training diverged (flow-matching
#: losses on normalised latents stay within a small factor of each other across noise levels).
EXPLODING_LOSS_FACTOR = 100.0
EXPLODING_LOSS_MIN_HISTORY = 8  # losses seen in the phase before the test applies


@dataclass(frozen=True)
class Phase:
    """One stretch of training: a stage on one expert, with its samples and one epoch's sample order."""

    stage: int
    expert: Expert
    schedule: tuple[int, ...]  # indices into the phase's samples, one epoch
    steps: int


@dataclass(frozen=True)
class TrainProgress:
    """Where a run stands, for a live display (the web app's progress bar and loss curve).

    `phases` and `losses` have `train_log.json`'s layout, so `report.loss_curve_svg(progress.log())` draws
    the curve while training runs exactly as the report draws it afterwards.
    """

    done: int  # steps done in the whole run (a reused stage 1 counts as done)
    total: int
    phases: tuple[dict, ...]  # {"stage", "expert", "steps"} per phase
    losses: tuple[tuple[float, ...], ...]  # per phase, the losses so far

    def log(self) -> dict:
        return {"phases": list(self.phases), "losses": [list(values) for values in self.losses]}


# ---- flow matching (the paper's Eq. 2, as in the authors' code) -------------------------------------


def sample_sigma(generator: torch.Generator, low: float, high: float, how: str, shift: float) -> torch.Tensor:
    """One noise level in [low, high): uniform (authors), logit-normal, or uniform then shifted."""
    if how == "uniform":
        u = torch.rand(1, generator=generator)
    elif how == "logit-normal":
        u = torch.sigmoid(torch.randn(1, generator=generator))
    elif how == "shifted":
        u = torch.rand(1, generator=generator)
        u = shift * u / (1 + (shift - 1) * u)
    else:
        raise InputError(f"unknown timestep sampling {how!r}: choose uniform, logit-normal or shifted")
    return low + (high - low) * u


def flow_matching_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted and the true velocity (noise - x0), mean over *all* latent elements.

    No loss mask, as in the authors' code: the model is also trained to reproduce the kept region, so
    the loss scale does not depend on the mask's area.
    """
    return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())


# ---- the loop ---------------------------------------------------------------------------------------


def stage2_steps(cfg: TrainConfig, num_motion: int, num_edited: int) -> int:
    """Stage 2's length: `cfg.stage2_steps` if given, else `stage2_epochs` epochs of its schedule (each motion
    sample once, each edited frame `stage2_repeats` times): the authors' 100 steps for one edited frame and
    one motion sample, 190 for two edited frames."""
    if cfg.stage2_steps is not None:
        return cfg.stage2_steps
    return cfg.stage2_epochs * len(stage2_schedule(num_motion, num_edited, cfg.stage2_repeats))


def plan_phases(experts: list[Expert], num_motion: int, num_edited: int, cfg: TrainConfig) -> list[Phase]:
    phases = []
    for expert in experts:
        phases.append(Phase(1, expert, tuple(range(num_motion)), cfg.stage1_steps))
        steps = stage2_steps(cfg, num_motion, num_edited) if num_edited else 0
        if steps:  # --stage2-steps 0 trains stage 1 only
            order = stage2_schedule(num_motion, num_edited, cfg.stage2_repeats)
            phases.append(Phase(2, expert, tuple(order), steps))
    return phases


def train_lora(backend, motion: list[EncodedSample], edited: list[EncodedSample], cfg: TrainConfig,
               out_dir: Path, *, resume: bool = False, progress: bool = True,
               stage1_cache: Path | None = None,
               on_step: Callable[[TrainProgress], None] | None = None,
               motion_variants: list[list[EncodedSample]] | None = None,
               parallel: distributed.Parallel | None = None) -> dict[str, Path]:
    """Train the LoRA(s) and write `lora.safetensors` (and `lora_2.safetensors` for a second expert).

    Returns {expert name: LoRA path}. `out_dir/checkpoints/` holds the resumable state; `stage1_cache`, a
    folder of finished stage-1 LoRAs by content (`Stage1Cache`), skips a stage 1 trained before. How the step runs
    (memory mode, attention, compile, gradient checkpointing) is the backend's `perf`: it changes no
    result beyond rounding, so it is not part of the run's key and may change between a crash and --resume.
    `on_step`, if given, is called with a `TrainProgress` before the first step and after every step.
    `motion_variants` (with `cfg.appearance_augment` > 0): for each motion sample, that many recoloured
    versions (`appearance.appearance_variants`, encoded); a step that picks a motion sample trains on
    one of its variants, drawn from the step's generator, never on the original appearance.
    `parallel` (default: the job this process joined, `distributed.active()`): with several processes the
    base is sharded over them, each computes its share of a step's `cfg.draws_per_step` draws, the LoRA
    gradients are summed over them, and rank 0 alone writes files (`distributed` says why).
    """
    out_dir = Path(out_dir)
    if cfg.targets is None:  # the model's own default, resolved before it enters the run's key
        cfg = replace(cfg, targets=backend.default_lora_targets)
    samples = motion + edited
    variants = _check_variants(motion, motion_variants, cfg)
    phases = plan_phases(backend.experts, len(motion), len(edited), cfg)
    phase_info = tuple({"stage": p.stage, "expert": p.expert.name, "steps": p.steps} for p in phases)
    parallel = parallel or distributed.active()
    run_key = content_key(json.dumps(cfg.key_fields(), sort_keys=True), backend.fingerprint(),
                          *[t for s in samples for t in (s.target, s.condition, s.text)])
    settings = lora_io.LoraSettings(cfg.rank, cfg.alpha, cfg.targets, backend.fingerprint(), backend.kind)
    stage1 = checkpoints.Stage1Cache(stage1_cache, cfg, backend.fingerprint(), motion) if stage1_cache is not None else None

    # 1. Attach a LoRA to every expert (its random init drawn from the seed, not the global RNG). The LoRA
    #    weights train in fp32 on the compute device whatever the base's storage (bf16, fp8, offloaded).
    #    Sharded over several processes, the base is placed after its LoRA is attached (FSDP2 must know which
    #    parameters to leave whole) and each rank moves only its shard to its GPU.
    if parallel.world == 1:
        backend.place_transformers()
    device = backend.device
    for i, expert in enumerate(backend.experts):
        transformer = backend.transformer(expert.name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_step_seed(cfg.seed, -1, i))
            lora_io.add_lora(transformer, settings, dtype=torch.float32, device=device)
        parallel.shard(transformer)
        checkpointed = set_gradient_checkpointing(transformer, checkpointed_blocks(backend.perf, device),
                                                  backend.perf.keep_attention)
        set_attention(transformer, backend.perf, device, training=True)
    if backend.perf.keep_attention and not checkpointed:
        print(f"loraedit: note: --keep-attention acts inside checkpointed blocks and none is checkpointed on "
              f"{device.type} by default: add --checkpoint-blocks all to use it", file=sys.stderr)

    # 2. Resume (from a checkpoint, or a finished run's LoRA files) or start fresh.
    backend.place_transformers()  # sharded: now, over the shards (one process: done above, a no-op)
    ckpt_dir = out_dir / "checkpoints"
    save_checkpoint = checkpoints.save_checkpoint if parallel.writes else (lambda *args: None)
    if parallel.writes:
        checkpoints.remove_leftovers(out_dir, ckpt_dir)
    state = checkpoints.TrainState(losses=[[] for _ in phases])
    latest = checkpoints.latest_checkpoint(ckpt_dir)
    finished = checkpoints.finished_lora_files(out_dir, backend, run_key) if resume and latest is None else None
    if finished is not None:
        for expert in backend.experts:
            lora_io.load_lora_state(backend.transformer(expert.name), lora_io.read_lora(finished[expert.name])[0])
            backend.transformer(expert.name).eval()
        print(f"loraedit: note: {out_dir} holds the finished LoRA of this same run: reusing it (--resume)",
              file=sys.stderr)
        return finished
    if latest is not None and not resume:
        raise InputError(f"{out_dir} holds a checkpoint of an earlier run ({latest.name}): pass {setting('resume')} "
                         "to continue it, or choose another output folder / delete it to start over")
    optimizer_state = None
    if latest is not None:
        state, optimizer_state = checkpoints.load_checkpoint(latest, backend, run_key)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    total = sum(p.steps for p in phases)
    done_before = sum(p.steps for p in phases[: state.phase]) + state.step
    bar = tqdm(total=total, initial=done_before, desc="training LoRA", disable=not (progress and parallel.writes),
               dynamic_ncols=True)

    def report() -> None:
        if on_step is not None:
            on_step(TrainProgress(done_before, total, phase_info, tuple(tuple(v) for v in state.losses)))

    report()

    for phase_index in range(state.phase, len(phases)):
        phase = phases[phase_index]
        transformer = backend.transformer(phase.expert.name)
        seeds = f"stage{phase.stage}:{phase.expert.name}"  # not the phase index: stage 1 draws alike with(out) stage 2
        reused = stage1.restore(phase.expert, transformer) if stage1 and phase.stage == 1 and state.step == 0 else None
        if reused is not None:  # this stage 1 was trained before: its LoRA, its losses, no steps
            state.step, state.losses[phase_index] = phase.steps, reused
            done_before += phase.steps
            bar.update(phase.steps)
            report()
        transformer.train()
        params = [p for p in transformer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                      fused=device.type == "cuda")
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            optimizer_state = None
        bar.set_description(f"training LoRA (stage {phase.stage}, {phase.expert.name})")

        try:
            for step in range(state.step, phase.steps):
                # 3-4. This rank's draws of the step (all of them in one process), each a flow-matching loss
                #      on its own sample, noise and noise level; the step's loss is their mean.
                optimizer.zero_grad(set_to_none=True)
                loss = torch.zeros((), device=device)
                for draw in parallel.draws(cfg.draws_per_step):
                    sample, noise, sigma = _draw(cfg, phase, seeds, step, draw, samples, variants, len(motion))
                    x0, noise, sigma = sample.target[None].to(device), noise.to(device), sigma.to(device)
                    noisy = (1 - sigma) * x0 + sigma * noise  # x_sigma = (1 - sigma) x0 + sigma noise; v = noise - x0
                    with autocast:
                        pred = backend.predict(
                            transformer, noisy.to(backend.dtype), sample.condition[None].to(device, backend.dtype),
                            (sigma * 1000).to(device), sample.text[None].to(device, backend.dtype),
                            None if sample.image is None else sample.image[None].to(device, backend.dtype))
                    draw_loss = flow_matching_loss(pred, x0, noise) / cfg.draws_per_step
                    draw_loss.backward()
                    loss += draw_loss.detach()
                loss = parallel.sum(loss)
                _stop_if_diverged("loss", loss, state.losses[phase_index], done_before + 1, phase, ckpt_dir, cfg)

                # 5. Update the LoRA only (never with a non-finite gradient: it would poison every checkpoint).
                parallel.sum_gradients(params)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                _stop_if_diverged("gradient norm", grad_norm, [], done_before + 1, phase, ckpt_dir, cfg)
                optimizer.step()

                state.step = step + 1
                state.losses[phase_index].append(round(loss.item(), 6))
                done_before += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                report()
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < phase.steps:
                    save_checkpoint(ckpt_dir, backend, state, optimizer, run_key)
        except Cancelled:  # a progress callback asked to stop (the web app's Cancel): resumable like Ctrl-C
            save_checkpoint(ckpt_dir, backend, state, optimizer, run_key)
            raise Cancelled(f"cancelled at step {done_before}; saved a checkpoint in {ckpt_dir}: the same run "
                            "with resume continues it") from None
        except KeyboardInterrupt:
            save_checkpoint(ckpt_dir, backend, state, optimizer, run_key)
            raise Interrupted(f"interrupted at step {done_before}; saved a checkpoint in {ckpt_dir}: "
                              f"run the same command with {setting('resume')} to continue") from None
        transformer.eval()
        if stage1 is not None and phase.stage == 1 and reused is None and parallel.writes:
            stage1.store(phase.expert, transformer, state.losses[phase_index])
        state.phase, state.step = phase_index + 1, 0
        if phase_index + 1 < len(phases):
            save_checkpoint(ckpt_dir, backend, state, None, run_key)
    bar.close()

    # 6. Final LoRA files (ComfyUI keys) and the loss log, by rank 0 of a job (the others wait for them).
    with parallel.writer_first():
        if parallel.writes:
            _write_results(out_dir, backend, settings, phase_info, state, cfg, run_key, ckpt_dir)
    return _result_paths(out_dir, backend)


def _result_paths(out_dir: Path, backend) -> dict[str, Path]:
    """{expert name: its LoRA file}: `lora.safetensors`, then `lora_2.safetensors` for a second expert."""
    return {expert.name: out_dir / ("lora.safetensors" if i == 0 else f"lora_{i + 1}.safetensors")
            for i, expert in enumerate(backend.experts)}


def _write_results(out_dir: Path, backend, settings: lora_io.LoraSettings, phase_info: tuple[dict, ...],
                   state: checkpoints.TrainState, cfg: TrainConfig, run_key: str, ckpt_dir: Path) -> None:
    """The LoRA files, then `train_log.json` (atomically), then the checkpoints removed (renamed first)."""
    paths = _result_paths(out_dir, backend)
    for expert in backend.experts:
        lora_io.save_lora(paths[expert.name], backend.transformer(expert.name), settings,
                          extra={"expert": expert.name, "sigma_range": [expert.sigma_low, expert.sigma_high]})
    log = {"phases": list(phase_info), "losses": state.losses, "config": asdict(cfg), "run_key": run_key,
           "lora_files": {name: path.name for name, path in paths.items()}}
    with atomic_path(out_dir / "train_log.json") as tmp:
        tmp.write_text(json.dumps(log))
    if ckpt_dir.exists():  # renamed first, so a kill mid-delete never leaves a half-deleted checkpoint behind
        trash = out_dir / f".checkpoints-done-{run_key[:8]}"
        shutil.rmtree(trash, ignore_errors=True)
        ckpt_dir.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


def _draw(cfg: TrainConfig, phase: Phase, seeds: str, step: int, draw: int, samples: list[EncodedSample],
          variants: list[list[EncodedSample]] | None, num_motion: int):
    """Draw `draw` of step `step`: (sample, noise, sigma), a function of (seed, phase, step, draw) alone.

    The samples run through one shuffled epoch after another, `draws_per_step` a step; draw 0 uses the
    generator a step has always used, so one draw a step is the original recipe, bit for bit.
    """
    gen = torch.Generator().manual_seed(_step_seed(cfg.seed, seeds if draw == 0 else f"{seeds}:draw{draw}", step))
    epoch, position = divmod(step * cfg.draws_per_step + draw, len(phase.schedule))
    order = torch.randperm(len(phase.schedule),
                           generator=torch.Generator().manual_seed(_step_seed(cfg.seed, seeds, -1 - epoch)))
    index = int(phase.schedule[order[position]])
    sample = samples[index]
    if variants and index < num_motion:  # appearance augmentation: a random variant, not the original
        sample = variants[index][int(torch.randint(len(variants[index]), (1,), generator=gen))]
    noise = torch.randn(sample.target[None].shape, generator=gen)
    sigma = sample_sigma(gen, phase.expert.sigma_low, phase.expert.sigma_high, cfg.timestep_sampling,
                         cfg.timestep_shift)
    return sample, noise, sigma


def _check_variants(motion: list[EncodedSample], variants: list[list[EncodedSample]] | None,
                    cfg: TrainConfig) -> list[list[EncodedSample]] | None:
    """The motion samples' appearance variants, checked against the config (a caller's mistake, not input)."""
    if not cfg.appearance_augment:
        return None
    if variants is None or len(variants) != len(motion) or any(len(v) != cfg.appearance_augment for v in variants):
        raise ValueError(f"appearance_augment={cfg.appearance_augment} needs that many variants of each of the "
                         f"{len(motion)} motion samples (appearance.appearance_variants, encoded)")
    return variants


def _stop_if_diverged(what: str, value: torch.Tensor, history: list[float], step: int, phase: Phase,
                      ckpt_dir: Path, cfg: TrainConfig) -> None:
    """Raise before the optimiser step when `value` is not finite or (a loss) has exploded.

    The LoRA in memory is then still the one of the previous step; the last checkpoint on disk is good.
    Training is deterministic, so --resume would only repeat the step: the message says to start over.
    """
    value = float(value.detach())
    exploded = (len(history) >= EXPLODING_LOSS_MIN_HISTORY
                and value > EXPLODING_LOSS_FACTOR * float(torch.tensor(history).median()))
    if math.isfinite(value) and not exploded:
        return
    why = f"became {value}" if not math.isfinite(value) else (
        f"exploded to {value:.4g}, over {EXPLODING_LOSS_FACTOR:g}x its median so far")
    latest = checkpoints.latest_checkpoint(ckpt_dir)
    kept = (f"the last good checkpoint ({latest.name}) is kept in {ckpt_dir}" if latest
            else "no checkpoint was written yet")
    raise LoraEditError(f"training stopped at step {step} (stage {phase.stage}, {phase.expert.name}): the {what} "
                        f"{why}; {kept}. Resuming would repeat this step (training is deterministic): start again "
                        f"in a new {setting('out')} folder with a lower {setting('learning_rate')} "
                        f"(e.g. {cfg.learning_rate / 3:.2g})")


def _step_seed(seed: int, phase: int | str, step: int) -> int:
    return int(content_key(seed, phase, step)[:15], 16)
