"""The three jobs a user runs: train a LoRA on a clip, sample an edit with it, or both (edit).

Each function runs the steps in order and nothing else: check every input and read the media once
(`validate`, before any model loads), build the method's samples (`conditioning`), encode them once
(`cache`), free the encoders, train (`train`), sample (the backend's Wan pipeline with our condition),
write the outputs (`media`). A GPU out-of-memory in any step becomes a message naming what to try.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import conditioning, distributed, long_video, media, report
from .backends import Backend
from .backends import load_backend as _load_backend
from .encoding import Encoder, encode_appearance_variants
from .conditioning import TRAINING_MODES
# The settings live in `config`; they are importable from here too, where the jobs that take them are.
from .config import (CONCEPT_TOKEN, ClipInputs, EditedFrame, ExtraLora, RunOptions, SampleConfig,  # noqa: F401
                     TrainConfig)
from .errors import out_of_memory_advice, setting
from .lora_io import inspect_lora, load_lora, remove_lora
from .performance import ALL_BLOCKS, PerformanceConfig
from .results import EditResult
from .sampling import PreparedSampling, attach_extra_loras, sample_windows
from .train import TrainProgress, train_lora
from .validate import CheckedRun, Clip, check_run

# ---- model and media ------------------------------------------------------------------------------------


def load_backend(model: str | Path, device: str | None = None, perf: PerformanceConfig | None = None) -> Backend:
    """`--model` (a name or a local folder) loaded as its family's backend (`backends.load_backend`)."""
    return _load_backend(model, device, perf=perf)


def _backend_for(run: CheckedRun, opts: RunOptions, resident: Backend | None) -> Backend:
    """The run's backend: `resident` (already loaded by a caller that keeps it, e.g. the web app) or a new one."""
    if resident is not None:
        return resident
    return load_backend(run.model.path, opts.device, opts.performance)


def _done_encoding(backend: Backend, resident: bool) -> None:
    """After the last encoding: a one-shot run drops its encoders (they are not needed again); a resident
    backend keeps them for the next job and only places its transformers (more memory, no reload)."""
    if resident:
        backend.place_transformers()
    else:
        backend.free_encoders()


def detach_loras(backend: Backend) -> None:
    """Remove every LoRA (the edit LoRA and any `--extra-lora`) from the backend's transformers, leaving the
    base exactly as loaded (a resident backend is handed back this way after every job, finished, failed or
    cancelled)."""
    for expert in backend.experts:
        transformer = backend.transformer(expert.name)
        for adapter in list(getattr(transformer, "peft_config", None) or {}):
            remove_lora(transformer, adapter)


def _print_notes(run: CheckedRun) -> None:
    if not distributed.active().writes:  # every rank of a torchrun job checks the same inputs: rank 0 says so
        return
    for note in run.notes:
        print(f"loraedit: note: {note}", file=sys.stderr)


def _memory_advice(run: CheckedRun, opts: RunOptions, cfg: TrainConfig | None = None) -> str:
    """What lowers GPU memory for this run, most effective first, with concrete smaller values."""
    fewer = max(5, (run.frames * 2 // 3 - 1) // 4 * 4 + 1)
    m = run.model.size_multiple
    smaller = "x".join(str(max(m, round(v * 0.75 / m) * m)) for v in run.size)
    tips = []
    perf = opts.performance
    if cfg is not None and perf.checkpoint_blocks is not None and perf.checkpoint_blocks < ALL_BLOCKS:
        tips.append(f"turn gradient checkpointing on in every block ({setting('checkpoint_blocks')} all)")
    if cfg is not None and perf.keep_attention:
        tips.append(f"drop {setting('keep_attention')}")
    if not perf.offload:
        tips.append(f"add {setting('memory_mode')} "
                    + ("fp8+offload" if perf.fp8_base else "fp8 (or fp8+offload on a 24 GB card)"))
    if cfg is not None and not opts.low_cost:
        tips.append(f"add {setting('low_cost')} (trains on {opts.low_cost_clip_frames}-frame clips)")
    if run.frames > 5:
        tips.append(f"use fewer {setting('frames')} (e.g. {fewer} instead of {run.frames})")
    tips.append(f"use a smaller {setting('size')} (e.g. {smaller} instead of {run.size[0]}x{run.size[1]})")
    tail = (f"; {setting('memory_mode')} and gradient checkpointing may change on {setting('resume')}, any other "
            "changed setting starts a new run") if cfg else ""
    return "try to " + ", or ".join(tips) + "; close other programs using the GPU" + tail


def compose_prompt(token: str, caption: str) -> str:
    """The paper's prompt: the fixed concept token, then the caption."""
    return " ".join(part for part in (token.strip(), caption.strip()) if part)


def with_captions(run: CheckedRun, opts: RunOptions, training: bool, sampling: bool) -> RunOptions:
    """Fill the prompts the user left out with Florence-2 captions (`--caption`), before the video model loads.

    Training gets the caption of the input's first frame unless --train-prompt is given, and each edited
    later frame its own caption unless one was given (the authors' stage 2); sampling the caption of the
    edited first frame unless --prompt is given (METHOD.md: c and c-tilde). Edited later frames' captions
    are written into `run`.
    """
    if opts.caption is None:
        return opts
    from .captions import Florence2Captioner

    captioner = Florence2Captioner(opts.caption, opts.cache_dir, opts.device)
    changes = {}
    if training and opts.train_prompt is None:
        changes["train_prompt"] = captioner.caption(run.clip.video[0])
        print(f"loraedit: note: caption of the input's first frame: {changes['train_prompt']!r}", file=sys.stderr)
    if training and any(ef.caption is None for ef in run.edited_frames):
        run.edited_frames = tuple(ef if ef.caption is not None else replace(ef, caption=captioner.caption(ef.image))
                                  for ef in run.edited_frames)
        for ef in run.edited_frames:
            print(f"loraedit: note: caption of edited frame {ef.index}: {ef.caption!r}", file=sys.stderr)
    if sampling and not opts.prompt:
        changes["prompt"] = captioner.caption(run.edited_first_frame)
        print(f"loraedit: note: caption of the edited first frame: {changes['prompt']!r}", file=sys.stderr)
    captioner.free()
    return replace(opts, **changes)


# ---- the jobs -------------------------------------------------------------------------------------------


def training_samples(run: CheckedRun, opts: RunOptions, train_size: tuple[int, int] | None = None):
    """The method's training samples for the chosen mode: (motion samples, edited-frame samples).

    `train_size` (width, height): the clip's motion samples at that smaller size (`TrainConfig.train_size`)."""
    prompt = compose_prompt(opts.concept_token, opts.train_prompt if opts.train_prompt is not None else opts.prompt)
    edited = tuple(conditioning.EditedFrameSample(
        ef.index, ef.frame, ef.image, ef.mask, compose_prompt(opts.concept_token, ef.caption) if ef.caption else None)
        for ef in run.edited_frames)
    clip_frames = opts.low_cost_clip_frames if opts.low_cost else None
    if run.frames > run.window:  # a long clip: one LoRA over overlapping windows (long_video)
        clip_frames = min(clip_frames or run.window, run.window)
    video, masks = media.shrink_clip(run.clip.video, run.clip.masks, train_size)
    return conditioning.training_samples(opts.mode, video, masks, prompt, edited_frames=edited,
                                         low_cost_clip_frames=clip_frames)


def train(model: str, inputs: ClipInputs, out_dir: Path, opts: RunOptions = RunOptions(),
          cfg: TrainConfig = TrainConfig(), on_step: Callable[[TrainProgress], None] | None = None,
          backend: Backend | None = None) -> dict[str, Path]:
    """Train the LoRA for a clip (stage 1, then stage 2 if edited frames are given). Returns LoRA paths.

    `on_step` receives a `TrainProgress` before the first step and after each (a live progress display).
    `backend`: an already-loaded backend of `model` to use and hand back unchanged (no LoRA left on it).
    """
    out_dir = Path(out_dir)
    run = check_run("train", model, inputs, opts, cfg=cfg, train_dir=out_dir)
    _print_notes(run)
    opts = with_captions(run, opts, training=True, sampling=False)
    resident = backend is not None
    backend = _backend_for(run, opts, backend)
    try:
        paths = _train(backend, run, out_dir, opts, cfg, on_step, resident)
    finally:
        if resident:
            detach_loras(backend)
    if distributed.active().writes:  # under torchrun (--fsdp) rank 0 alone writes
        report.write_training_report(out_dir, _settings(run, opts, cfg))
    return paths


def _train(backend: Backend, run: CheckedRun, out_dir: Path, opts: RunOptions, cfg: TrainConfig,
           on_step: Callable[[TrainProgress], None] | None = None, resident: bool = False) -> dict[str, Path]:
    motion, edited = training_samples(run, opts, run.train_size)
    encoder = Encoder(backend, opts.cache_dir, opts.mask_mode, opts.clip_view)
    with out_of_memory_advice("encoding the training samples", _memory_advice(run, opts)), \
            distributed.active().writer_first():  # the other ranks of a job read rank 0's cache entries
        encoded_motion = [encoder.sample(s) for s in motion]
        encoded_edited = [encoder.sample(s) for s in edited]
        variants = encode_appearance_variants(encoder, motion, cfg)
    _done_encoding(backend, resident)  # training needs none of them: text/CLIP dropped, VAE parked on CPU
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with out_of_memory_advice("training the LoRA", _memory_advice(run, opts, cfg)):
        paths = train_lora(backend, encoded_motion, encoded_edited, cfg, out_dir, resume=opts.resume,
                           progress=opts.progress, on_step=on_step, motion_variants=variants,
                           stage1_cache=opts.cache_dir / "stage1" if opts.cache_dir is not None else None)
    if distributed.active().writes:
        _write_json(out_dir / "train_info.json", {
            "model": str(run.model.path), "kind": backend.kind, "mode": opts.mode, "frames": run.frames,
            "size": list(run.size), "low_cost": opts.low_cost, "edited_frames": [ef.index for ef in run.edited_frames],
            "seconds": round(time.perf_counter() - started, 2), "cache_hits": encoder.cache.hits,
            "cache_misses": encoder.cache.misses, "train_config": asdict(cfg), "performance": asdict(opts.performance),
            "processes": distributed.active().world})
    return paths


def prepare_sampling(backend: Backend, run: CheckedRun, opts: RunOptions, scfg: SampleConfig) -> PreparedSampling:
    """Build the mode's inference condition from the checked clip and edited first frame, and encode it."""
    clip, first = run.clip, run.edited_first_frame
    prompt = compose_prompt(opts.concept_token, opts.prompt)
    windows = long_video.plan_windows(run.frames, run.window, scfg.window_overlap)
    condition = long_video.window_condition(opts.mode, clip.video, clip.masks, windows[0], first[None], prompt)
    encoder = Encoder(backend, opts.cache_dir, opts.mask_mode, opts.clip_view)
    with out_of_memory_advice("encoding the inference condition", _memory_advice(run, opts)), \
            distributed.active().writer_first():
        negative = backend.default_negative_prompt if scfg.negative_prompt is None else scfg.negative_prompt
        return PreparedSampling(clip, first, encoder.sample(condition), encoder.prompt(negative), windows, prompt)


def generate(backend: Backend, run: CheckedRun, prepared: PreparedSampling, out: Path, loras: list[Path],
             opts: RunOptions, scfg: SampleConfig, cfg: TrainConfig | None = None) -> EditResult:
    """Attach the LoRA file(s), sample, optionally paste the background back, write the outputs.

    `cfg`: how the LoRA was trained in this same run (`edit`), recorded with the result's settings."""
    if scfg.guidance is None:  # resolved here, so that the settings written with the video say the number
        scfg = replace(scfg, guidance=backend.default_guidance)
    if scfg.sampler is None:  # likewise the sampler
        scfg = replace(scfg, sampler=backend.default_sampler)
    if opts.mode in TRAINING_MODES:
        for path, expert in zip(loras, backend.experts, strict=True):
            load_lora(Path(path), backend.transformer(expert.name), backend.fingerprint(), dtype=backend.dtype,
                      device=backend.device)
    attach_extra_loras(backend, scfg, edit_lora=opts.mode in TRAINING_MODES)
    backend.set_progress(opts.progress)
    with out_of_memory_advice("sampling the edit", _memory_advice(run, opts)):
        video = sample_windows(backend, prepared, opts, scfg)
    if scfg.paste_background:
        video = conditioning.paste_background(video, prepared.clip.video, prepared.clip.masks, scfg.paste_feather)
    log = Path(loras[0]).with_name("train_log.json") if loras else None
    settings = _settings(run, opts, cfg, scfg)
    if scfg.extra_loras:
        settings["extra_loras"] = [{"path": str(e.path), "weight": e.weight, "layout": inspect_lora(e.path).layout}
                                   for e in scfg.extra_loras]
    if scfg.step_cache is not None:  # how much the approximation skipped, beside its setting
        settings["step_cache_skipped"] = round(backend.last_block_counter.skipped_fraction, 3)
    if distributed.active().writes:  # every rank of a context-parallel job holds the same video
        write_outputs(Path(out), video, prepared.clip, settings, log)
    return EditResult(video, Path(out), settings, tuple(Path(p) for p in loras))


def sample(model: str, inputs: ClipInputs, edited_first_frame: Path, out: Path, loras: list[Path] = (),
           opts: RunOptions = RunOptions(), scfg: SampleConfig = SampleConfig(),
           backend: Backend | None = None) -> EditResult:
    """Generate the edited video from the edited first frame (with trained LoRA(s) unless no-lora modes).

    `backend`: an already-loaded backend of `model` to use and hand back unchanged (no LoRA left on it).
    """
    out, loras = Path(out), [Path(p) for p in loras]
    run = check_run("sample", model, inputs, opts, scfg=scfg, edited_first_frame=Path(edited_first_frame),
                    loras=tuple(loras), video_out=out)
    _print_notes(run)
    opts = with_captions(run, opts, training=False, sampling=True)
    resident = backend is not None
    backend = _backend_for(run, opts, backend)
    try:
        prepared = prepare_sampling(backend, run, opts, scfg)
        _done_encoding(backend, resident)
        return generate(backend, run, prepared, out, loras, opts, scfg)
    finally:
        if resident:
            detach_loras(backend)


def edit(model: str, inputs: ClipInputs, edited_first_frame: Path, out: Path, opts: RunOptions = RunOptions(),
         cfg: TrainConfig = TrainConfig(), scfg: SampleConfig = SampleConfig(),
         on_step: Callable[[TrainProgress], None] | None = None, backend: Backend | None = None) -> EditResult:
    """The whole method: encode everything once, free the encoders, train the LoRA, sample the edit.

    `on_step` receives a `TrainProgress` before the first training step and after each (it may raise to stop
    training between steps; the checkpoint then allows `resume`). `backend`: an already-loaded backend of
    `model` to use and hand back unchanged (no LoRA left on it).
    """
    out = Path(out)
    trains = opts.mode in TRAINING_MODES
    run = check_run("edit", model, inputs, opts, cfg=cfg, scfg=scfg, edited_first_frame=Path(edited_first_frame),
                    video_out=out, train_dir=work_dir_for(out) if trains else None)
    _print_notes(run)
    opts = with_captions(run, opts, training=trains, sampling=True)
    resident = backend is not None
    backend = _backend_for(run, opts, backend)
    try:
        prepared = prepare_sampling(backend, run, opts, scfg)
        loras: list[Path] = []
        if trains:
            loras = list(_train(backend, run, work_dir_for(out), opts, cfg, on_step, resident).values())
            detach_loras(backend)  # sample through the saved files, exactly what the user keeps
        _done_encoding(backend, resident)
        return generate(backend, run, prepared, out, loras, opts, scfg, cfg if trains else None)
    finally:
        if resident:
            detach_loras(backend)


def work_dir_for(out: Path) -> Path:
    """Where `edit` keeps its LoRA, checkpoints and logs: `<out stem>.work/` beside the output video."""
    return out.with_name(out.stem + ".work")


def write_outputs(out: Path, video: torch.Tensor, clip: Clip, settings: dict | None = None,
                  train_log: Path | None = None) -> None:
    """The edited mp4 and, beside it, a contact sheet (input | mask | output), input | output side by side,
    the metrics JSON and the HTML report (`report.write_result_report`)."""
    media.write_video(out, video, fps=clip.fps)
    media.write_contact_sheet(out.with_suffix(".contact.png"),
                              {"input": clip.video, "mask": clip.masks, "output": video})
    report.write_result_report(out, video, clip.video, clip.masks, clip.fps, settings or {}, train_log)


def _settings(run: CheckedRun, opts: RunOptions, cfg: TrainConfig | None = None,
              scfg: SampleConfig | None = None) -> dict:
    """What a report shows about how a result was made."""
    settings = {"model": str(run.model.path), "kind": run.model.kind, "mode": opts.mode, "frames": run.frames,
                "size": f"{run.size[0]}x{run.size[1]}", "prompt": compose_prompt(opts.concept_token, opts.prompt),
                "clip_view": opts.clip_view, "window": run.window}
    if cfg is not None:
        train_prompt = opts.train_prompt if opts.train_prompt is not None else opts.prompt
        settings |= {"train_prompt": compose_prompt(opts.concept_token, train_prompt),
                     "train_prompt_is": "the input's caption" if opts.train_prompt is not None
                     else "the edited caption (--prompt; no caption of the input was given)", "rank": cfg.rank,
                     "lr": cfg.learning_rate, "stage1_steps": cfg.stage1_steps, "stage2_steps": cfg.stage2_steps,
                     "appearance_augment": cfg.appearance_augment,
                     "train_size": "x".join(map(str, run.train_size)) if run.train_size else "the working size"}
        if run.edited_frames:  # stage 2's prompt per edited frame
            settings["edited_frame_prompts"] = {
                str(ef.index): compose_prompt(opts.concept_token, ef.caption) if ef.caption else "the training prompt"
                for ef in run.edited_frames}
    if scfg is not None:
        settings |= {"steps": scfg.steps, "guidance": scfg.guidance, "shift": scfg.shift, "sampler": scfg.sampler,
                     "seed": scfg.seed,
                     "paste_background": scfg.paste_background, "paste_feather": scfg.paste_feather,
                     "first_block_cache": scfg.first_block_cache, "taylorseer": scfg.taylorseer}
        if run.frames > run.window:
            settings |= {"window_overlap": scfg.window_overlap, "window_colour_match": scfg.window_colour_match}
    return settings


def _write_json(path: Path, data: dict) -> None:
    with media.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def dry_run(command: str, model, inputs, opts, cfg=None, scfg=None, **check_kwargs) -> str:
    """`--dry-run`: every input checked as the run would check it, then its plan on this machine; nothing loads.

    Exits like the run would: a run that would be refused for memory prints its plan, then the refusal.
    """
    from . import devices
    from .errors import InputError
    from .plan import format_plans, memory_problems, plan_run, shape_for

    run = check_run(command, model, inputs, replace(opts, memory_check=False), cfg=cfg, scfg=scfg, **check_kwargs)
    shape = shape_for(run.model, command, run.frames, run.size, opts, cfg, scfg, len(run.edited_frames))
    gpu = devices.detect_gpu(opts.device)
    plan = plan_run(run.model, shape, gpu)
    text = format_plans([plan], command)
    if gpu is None:
        text += "\nno GPU here: the run would compute on the CPU (fine for the toy models; the table is for a GPU)"
    problems = memory_problems(plan, opts.performance.memory_mode) if opts.memory_check else []
    if problems:
        print(text)
        raise InputError(*problems)
    return text + f"\ndry run: the inputs are fine; nothing was loaded (drop --dry-run to run with " \
                  f"--memory-mode {opts.performance.memory_mode})"
