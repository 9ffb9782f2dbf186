"""What a run will do on a GPU, before any weight loads: tokens, steps, and per memory mode the modelled peak
memory against the GPU's free memory and the modelled minutes; the mode to pick and why.

A 14B model takes minutes to load; an out-of-memory found after that, or after the encoders ran, costs
those minutes every attempt. Everything here comes from the model folder's configs (`read_wan_folder`)
and `perfmodel`'s analytic model, never from weights, so `loraedit plan`, `--dry-run` and the check before
`edit` / `train` / `sample` answer in a second. The numbers are a model, not a measurement (no GPU has
measured Wan 14B for this project yet; bench/gpu.py does when one is at hand), so fitting asks for
`HEADROOM` to spare and the refusal names `--no-memory-check`.

Wan2.2's two experts: in the modes that keep weights on the GPU both transformers sit there (the
pipeline switches between them every sampling run); each trains its own LoRA in its own phases, so
training steps double and the idle expert's LoRA stays attached (fp32 weights, no optimiser state).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from . import devices, media, perfmodel
from .step_cache import taylorseer_full_steps
from .config import TrainConfig
from .train import stage2_steps
from .backends.wan_folder import WanFolder

MODES = ("full", "fp8", "offload", "fp8+offload")  # fastest first: what `pick` prefers among those that fit
HEADROOM = 0.05  # share of free GPU memory kept back: allocator fragmentation, the CUDA context's own growth
GIB = perfmodel.GIB


@dataclass(frozen=True)
class RunShape:
    """The numbers of a run that set its cost."""

    frames: int
    size: tuple[int, int]  # (width, height)
    trains: bool = True
    samples: bool = True
    train_frames: int | None = None  # frames of a training clip (--low-cost); None = all of them
    rank: int = 16
    train_steps: int = 100  # per expert: stage 1 + stage 2
    sample_steps: int = 30
    sample_full_steps: int | None = None  # steps that run every block (a TaylorSeer interval); None = all of them
    train_size: tuple[int, int] | None = None  # (width, height) the motion trains at (--train-size); None = size
    guidance: bool = True  # classifier-free guidance: two forwards a sampling step
    checkpoint_blocks: int | None = None  # None = every block (the GPU default)
    keep_attention: bool = False
    attention: str = "flash"  # "flash" (any fused kernel, SDPA included) or "math" (textbook, quadratic)


@dataclass(frozen=True)
class ModeCost:
    mode: str
    train_gib: float | None  # peak GPU memory while training (None: the run does not train)
    sample_gib: float | None
    host_gib: float  # pinned CPU memory of offloaded weights
    train_min: float | None  # None: unknown speed (a card without catalogue figures)
    sample_min: float | None
    fits: bool

    @property
    def peak_gib(self) -> float:
        return max(v for v in (self.train_gib, self.sample_gib, 0.0) if v is not None)

    @property
    def minutes(self) -> float | None:
        """Training plus sampling, or None when the GPU's speed is unknown."""
        parts = [minutes for minutes, runs in ((self.train_min, self.train_gib), (self.sample_min, self.sample_gib))
                 if runs is not None]
        return None if None in parts else sum(parts)


@dataclass(frozen=True)
class Plan:
    model: WanFolder = field(repr=False)
    shape: RunShape
    gpu: devices.Gpu | None
    host_free_gib: float | None  # this machine's, when the GPU is this machine's
    tokens: int  # video tokens of the sampled clip
    train_tokens: int  # video tokens of a training clip
    lora_parameters: int  # per expert
    modes: tuple[ModeCost, ...]
    pick: ModeCost | None
    reason: str


def plan_run(model: WanFolder, shape: RunShape, gpu: devices.Gpu | None) -> Plan:
    """The modelled cost of `shape` on `gpu` in every memory mode, and the mode to use."""
    dims = perfmodel.WanDims.from_folder(model, model.experts[0])
    width, height = shape.size
    tokens = perfmodel.video_tokens(dims, shape.frames, height, width, model.spatial_factor, model.temporal_factor)
    train_width, train_height = shape.train_size or shape.size
    train_tokens = perfmodel.video_tokens(dims, shape.train_frames or shape.frames, train_height, train_width,
                                          model.spatial_factor, model.temporal_factor)
    host_free = devices.host_available_gib() if gpu is not None and gpu.detected else None
    costs = tuple(_mode_cost(model, dims, shape, mode, tokens, train_tokens, gpu, host_free) for mode in MODES)
    pick, reason = _pick(costs, gpu)
    return Plan(model, shape, gpu, host_free, tokens, train_tokens,
                perfmodel.lora_parameters(dims, shape.rank), costs, pick, reason)


def _mode_cost(model: WanFolder, dims: perfmodel.WanDims, shape: RunShape, mode: str, tokens: int,
               train_tokens: int, gpu: devices.Gpu | None, host_free: float | None) -> ModeCost:
    experts = len(model.experts)
    params = perfmodel.parameter_counts(dims)
    fp8, offload = "fp8" in mode, "offload" in mode
    weight_bytes = params["fp8"] * (1 if fp8 else 2) + (params["total"] - params["fp8"]) * 2  # one expert
    idle_weights = 0.0 if offload else (experts - 1) * weight_bytes / GIB  # the other expert, resident
    lora = perfmodel.lora_parameters(dims, shape.rank)
    device = gpu.device if gpu is not None else None
    train_gib = sample_gib = train_min = sample_min = None
    if shape.trains:
        clip = perfmodel.Clip(train_tokens, image_tokens=model.image_tokens, rank=shape.rank)
        memory = perfmodel.train_step_memory(dims, clip, mode, shape.checkpoint_blocks, shape.attention,
                                             shape.keep_attention)
        train_gib = memory["peak"] + idle_weights + (experts - 1) * lora * 4 / GIB
        if device is not None:
            flops = perfmodel.train_step_flops(dims, clip, shape.checkpoint_blocks, shape.attention == "flash",
                                               shape.keep_attention)["total"]
            passes = 3 if (shape.checkpoint_blocks is None or shape.checkpoint_blocks > 0) else 2
            step = perfmodel.step_seconds(flops, device, passes * weight_bytes if offload else 0.0)
            train_min = experts * shape.train_steps * step / 60
    if shape.samples:
        clip = perfmodel.Clip(tokens, image_tokens=model.image_tokens, rank=shape.rank)
        batch = 2 if shape.guidance else 1
        memory = perfmodel.sample_step_memory(dims, clip, mode, batch=batch)
        sample_gib = memory["peak"] + idle_weights + (experts * lora * 2 / GIB if shape.trains else 0.0)
        if device is not None:
            flops = perfmodel.sample_step_flops(dims, clip, shape.guidance)
            full = shape.sample_steps if shape.sample_full_steps is None else shape.sample_full_steps
            sample_min = full * perfmodel.step_seconds(flops, device, weight_bytes if offload else 0) / 60
    host_gib = experts * weight_bytes / GIB if offload else 0.0
    peak = max(v for v in (train_gib, sample_gib, 0.0) if v is not None)
    fits = gpu is not None and peak <= gpu.free_gib * (1 - HEADROOM) and (host_free is None or host_gib <= host_free)
    return ModeCost(mode, train_gib, sample_gib, host_gib, train_min, sample_min, fits)


def _pick(costs: tuple[ModeCost, ...], gpu: devices.Gpu | None) -> tuple[ModeCost | None, str]:
    if gpu is None:
        return None, "no GPU detected: give --gpu NAME (or --gpu-memory GIB) to plan for one"
    fitting = [c for c in costs if c.fits]
    usable = gpu.free_gib * (1 - HEADROOM)
    if not fitting:
        leanest = min(costs, key=lambda c: (c.peak_gib, c.host_gib))
        return None, (f"no memory mode fits: the leanest, {leanest.mode}, needs {leanest.peak_gib:.1f} GiB and "
                      f"{gpu.name} has {gpu.free_gib:.1f} GiB free ({usable:.1f} usable)")
    timed = [c for c in fitting if c.minutes is not None]
    # Equal minutes (offloading overlaps its transfers with compute): the one pinning less RAM, then the first.
    best = min(timed, key=lambda c: (c.minutes, c.host_gib)) if timed else fitting[0]
    pinned = f", {best.host_gib:.1f} GiB of pinned RAM" if best.host_gib else ""
    if best is costs[0]:
        return best, f"full fits ({best.peak_gib:.1f} of {usable:.1f} usable GiB) and is the fastest"
    earlier = costs[:costs.index(best)]
    why = [f"{c.mode} needs {c.peak_gib:.1f} of {usable:.1f} usable GiB" for c in earlier if not c.fits]
    why += [f"{c.mode} fits too but pins {c.host_gib:.1f} GiB of RAM" for c in earlier if c.fits]
    return best, "; ".join([*why, f"{best.mode} fits ({best.peak_gib:.1f} GiB{pinned})"])


def smaller_settings(model: WanFolder, shape: RunShape, gpu: devices.Gpu, low_cost_frames: int = 13) -> list[str]:
    """The closest settings that fit when nothing does: --low-cost, fewer --frames, a smaller --size."""
    fits = lambda s: plan_run(model, s, gpu).pick is not None  # noqa: E731
    found = []
    if shape.trains and shape.train_frames is None and shape.frames > low_cost_frames \
            and fits(replace(shape, train_frames=low_cost_frames)):
        found.append(f"--low-cost (trains on {low_cost_frames}-frame clips)")
    step = model.temporal_factor
    for frames in range(shape.frames - step, step, -step):
        train_frames = None if shape.train_frames is None else min(shape.train_frames, frames)
        if fits(replace(shape, frames=frames, train_frames=train_frames)):
            found.append(f"--frames {frames}")
            break
    for scale in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
        size = media.scaled_size(shape.size, scale, model.size_multiple)
        if size != shape.size and fits(replace(shape, size=size)):
            found.append(f"--size {size[0]}x{size[1]}")
            break
    return found


def memory_problems(plan: Plan, mode: str) -> list[str]:
    """One line when the chosen `--memory-mode` will not fit the GPU: the mode that does, or what would."""
    chosen = next(c for c in plan.modes if c.mode == mode)
    gpu = plan.gpu
    if gpu is None or chosen.fits:
        return []
    need = (f"--memory-mode {mode} needs about {chosen.peak_gib:.1f} GiB of GPU memory"
            + (f" and {chosen.host_gib:.1f} GiB of RAM" if chosen.host_gib else "")
            + f" but {gpu.name} has {gpu.free_gib:.1f} GiB free"
            + (f" (and {plan.host_free_gib:.1f} GiB of RAM)" if chosen.host_gib and plan.host_free_gib else ""))
    escape = "; the model is an estimate: --no-memory-check runs anyway"
    if plan.pick is not None:
        return [f"{need}: use --memory-mode {plan.pick.mode} (about {plan.pick.peak_gib:.1f} GiB){escape}"]
    options = smaller_settings(plan.model, plan.shape, gpu)
    leanest = min(plan.modes, key=lambda c: (c.peak_gib, c.host_gib))
    fix = f"use --memory-mode {leanest.mode} with " + " or ".join(options) if options else \
        "no smaller setting loraedit can choose fits: use a GPU with more free memory"
    return [f"{need}, and no memory mode fits: {fix}{escape}"]


# ---- printing -----------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def describe(plan: Plan, command: str = "edit") -> list[str]:
    """The run in words: model, frames, size, tokens, steps, the GPU."""
    m, s = plan.model, plan.shape
    experts = f"{len(m.experts)} expert{'s' if len(m.experts) > 1 else ''}"
    lines = [f"{command} with {m.path.name} ({m.kind}, {experts}, fingerprint {m.fingerprint})",
             f"  {s.frames} frames at {s.size[0]}x{s.size[1]} ({plan.tokens:,} video tokens"
             + (f", {m.image_tokens} CLIP" if m.image_tokens else "") + " and 512 text tokens a forward); "
             f"working size from {m.working_size_source}"]
    if s.trains:
        clips = f"{s.train_frames}-frame clips ({plan.train_tokens:,} tokens)" if s.train_frames else "the whole clip"
        lines.append(f"  training: {s.train_steps} steps per expert on {clips}, LoRA rank {s.rank} "
                     f"({plan.lora_parameters / 1e6:.1f}M parameters per expert)")
    if s.samples:
        lines.append(f"  sampling: {s.sample_steps} steps, " + ("CFG (two forwards a step, batched)" if s.guidance
                                                                 else "no CFG (one forward a step)")
                     + (f"; TaylorSeer runs every block in {s.sample_full_steps} of them" if s.sample_full_steps
                        is not None else ""))
    return lines


def gpu_line(gpu: devices.Gpu | None) -> str:
    if gpu is None:
        return "GPU: none detected"
    where = "this machine's" if gpu.detected else "planned, assumed empty"
    speed = (f"{gpu.spec.bf16_flops / 1e12:.0f} TFLOP/s bf16 at {perfmodel.ASSUMED_UTILISATION:.0%} use, host link "
             f"{gpu.spec.host_bytes_per_s / 1e9:.0f} GB/s" if gpu.spec else "no speed figures: minutes not modelled")
    return f"GPU: {gpu.name} ({where}): {gpu.free_gib:.1f} GiB free; {speed}"


def format_plans(plans: list[Plan], command: str = "edit") -> str:
    """One description, then one markdown table of every (frames, GPU, mode), then each pick and why."""
    lines = describe(plans[0], command)
    gpus = list(dict.fromkeys(gpu_line(p.gpu) for p in plans))
    lines += [f"  {g}" for g in gpus]
    lines += ["", "| frames | GPU | memory mode | train GPU GiB | sample GPU GiB | host GiB | fits | train min | "
              "sample min | total min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        gpu = p.gpu.name if p.gpu else "-"
        for c in p.modes:
            mark = " **(pick)**" if c is p.pick else ""
            fits = "-" if p.gpu is None else "yes" if c.fits else "no"
            lines.append(f"| {p.shape.frames} | {gpu} | {c.mode}{mark} | {_num(c.train_gib)} | {_num(c.sample_gib)} | "
                         f"{_num(c.host_gib)} | {fits} | {_num(c.train_min)} | "
                         f"{_num(c.sample_min)} | {_num(c.minutes)} |")
    lines.append("")
    for p in plans:
        label = f"{p.shape.frames} frames on {p.gpu.name if p.gpu else 'no GPU'}"
        lines.append(f"pick for {label}: " + (f"{p.pick.mode}: " if p.pick else "none: ") + p.reason)
        if p.pick is None and p.gpu is not None:
            options = smaller_settings(p.model, p.shape, p.gpu)
            if options:
                lines.append(f"  closest that fits: {', or '.join(options)}")
    ckpt = plans[0].shape.checkpoint_blocks
    lines.append(f"modelled, not measured (perfmodel.py; gradient checkpointing on "
                 f"{'every block' if ckpt is None else f'{ckpt} blocks'}; {HEADROOM:.0%} of free memory kept back); "
                 "not included: loading the weights, encoding and decoding")
    return "\n".join(lines)


def as_json(plans: list[Plan]) -> list[dict]:
    out = []
    for p in plans:
        out.append({"model": str(p.model.path), "kind": p.model.kind, "shape": asdict(p.shape), "tokens": p.tokens,
                    "train_tokens": p.train_tokens, "gpu": None if p.gpu is None else {
                        "name": p.gpu.name, "free_gib": p.gpu.free_gib, "detected": p.gpu.detected},
                    "modes": [asdict(c) | {"peak_gib": c.peak_gib, "minutes": c.minutes} for c in p.modes],
                    "pick": p.pick.mode if p.pick else None, "reason": p.reason})
    return json.loads(json.dumps(out))


# ---- from a command's options ---------------------------------------------------------------------------------


def shape_for(model: WanFolder, command: str, frames: int, size: tuple[int, int], opts, cfg=None, scfg=None,
              edited_frames: int = 0, train_size: tuple[int, int] | None = None) -> RunShape:
    """The RunShape of `loraedit {command}` with these RunOptions / TrainConfig / SampleConfig (api's types);
    `train_size`: --train-size resolved (`CheckedRun.train_size`)."""
    trains = command != "sample" and cfg is not None and opts.mode in ("mask-aware", "naive")
    samples = command != "train" and scfg is not None
    guidance = scfg.guidance if scfg is not None and scfg.guidance is not None else model.guidance
    perf = opts.performance
    return RunShape(
        frames=frames, size=size, trains=trains, samples=samples,
        train_frames=min(opts.low_cost_clip_frames, frames) if trains and opts.low_cost else None,
        rank=cfg.rank if cfg is not None else 16,
        train_steps=(cfg.stage1_steps + (stage2_steps(cfg, 1, edited_frames) if edited_frames else 0))
        if cfg is not None else 0,
        sample_steps=scfg.steps if scfg is not None else 0, guidance=(5.0 if guidance is None else guidance) > 1,
        sample_full_steps=taylorseer_full_steps(scfg.steps, scfg.taylorseer) if scfg is not None and scfg.taylorseer
        else None, train_size=train_size,
        checkpoint_blocks=perf.checkpoint_blocks, keep_attention=perf.keep_attention,
        attention="math" if perf.attention == "_native_math" else "flash")


def gpu_memory_problems(model: WanFolder, shape: RunShape, mode: str, device: str | None) -> list[str]:
    """The check before a run: nothing on a CPU; on a GPU, one line if `mode` will not fit (`memory_problems`)."""
    gpu = devices.detect_gpu(device)
    if gpu is None:
        return []
    return memory_problems(plan_run(model, shape, gpu), mode)


# ---- the commands -------------------------------------------------------------------------------------------


def gpus_for(names: list[str] | None, memory_gib: float | None, device: str | None) -> list[devices.Gpu | None]:
    """`--gpu NAME...` / `--gpu-memory GIB` as GPUs to plan for, else the GPU here (or None on a CPU)."""
    if names:
        return [devices.named_gpu(name, memory_gib) for name in names]
    if memory_gib is not None:
        return [devices.memory_only_gpu(memory_gib)]
    return [devices.detect_gpu(device)]


def plan_command(args) -> str:
    """`loraedit plan`: the model folder's configs only (no clip needed), every frames x GPU asked for."""
    from .errors import InputError
    from .backends import read_model_folder, resolve_model_dir

    model = read_model_folder(resolve_model_dir(args.model))
    size = args.size or model.working_size
    problems = []
    for frames in args.frames or [model.default_frames]:
        if frames < model.temporal_factor + 1 or (frames - 1) % model.temporal_factor:
            problems.append(f"--frames {frames} is not {model.temporal_factor}k+1 and at least "
                            f"{model.temporal_factor + 1}: use e.g. 49 or 81")
    if min(size) <= 0 or size[0] % model.size_multiple or size[1] % model.size_multiple:
        problems.append(f"--size {size[0]}x{size[1]} is not a multiple of {model.size_multiple} on both sides: "
                        "use e.g. 832x480")
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        problems.append(f"--gpu-memory {args.gpu_memory} is not a positive number of GiB")
    if problems:
        raise InputError(*problems)
    gpus = gpus_for(args.gpu, args.gpu_memory, args.device)
    plans = []
    for frames in args.frames or [model.default_frames]:
        trains, samples = args.run_command != "sample", args.run_command != "train"
        shape = RunShape(frames, size, trains=trains, samples=samples,
                         train_frames=min(args.low_cost_clip_frames, frames) if args.low_cost and trains else None,
                         rank=args.rank,
                         train_steps=args.stage1_steps + (stage2_steps(
                             TrainConfig(stage2_steps=args.stage2_steps), 1, args.edited_frames)
                             if args.edited_frames else 0),
                         sample_steps=args.steps, guidance=_guidance(args.guidance, model.guidance) > 1,
                         sample_full_steps=taylorseer_full_steps(args.steps, args.taylorseer) if args.taylorseer
                         else None, train_size=media.resolve_size(args.train_size, size, model.size_multiple))
        plans += [plan_run(model, shape, gpu) for gpu in gpus]
    return json.dumps(as_json(plans), indent=1) if args.json else format_plans(plans, args.run_command)


def _guidance(given: float | None, model_default: float | None) -> float:
    """The CFG scale a run would use: the option (0 included), else the model's own, else the authors' 5."""
    return given if given is not None else model_default if model_default is not None else 5.0
