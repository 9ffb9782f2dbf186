"""The command line's shared options: the value parsers and the clip / training / sampling option groups
that `edit`, `train` and `sample` share, and their translation into the api's frozen configs."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..cache import default_cache_dir
from ..errors import InputError
from ..config import APPEARANCE_REGIONS, CLIP_VIEWS, MASK_MODES, MODES, SAMPLERS, TIMESTEP_SAMPLING
from ..performance import MEMORY_MODES


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 832x480") from None
    return w, h


def parse_train_size(text: str) -> tuple[int, int] | float:
    """`--train-size`: WIDTHxHEIGHT, or a fraction of the working size (0.5)."""
    if "x" not in text.lower():
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--train-size {text!r} is not WIDTHxHEIGHT or a fraction of the "
                                             "working size, e.g. 416x240 or 0.5") from None
    return parse_size(text)


def parse_blocks(text: str) -> int:
    from ..performance import ALL_BLOCKS

    if text == "all":
        return ALL_BLOCKS
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--checkpoint-blocks {text!r} is not a number of blocks or all") from None


def parse_edited_frame(text: str):
    from ..api import EditedFrame

    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].isdigit():
        raise argparse.ArgumentTypeError(f"--edited-frame {text!r} is not IDX:IMAGE[:MASK], e.g. 24:frame24_edit.png")
    return EditedFrame(int(parts[0]), Path(parts[1]), Path(parts[2]) if len(parts) == 3 else None)


def parse_edited_caption(text: str) -> tuple[int, str]:
    index, sep, caption = text.partition(":")
    if not sep or not index.strip().isdigit() or not caption.strip():
        raise argparse.ArgumentTypeError(f"--edited-caption {text!r} is not IDX:TEXT, e.g. "
                                         "'24:a red car seen from behind'")
    return int(index), caption.strip()


def with_edited_captions(frames: tuple, captions: list[tuple[int, str]]) -> tuple:
    """The --edited-frame entries with their --edited-caption texts; a caption of no edited frame is refused."""
    by_index = dict(captions)
    unknown = sorted(set(by_index) - {ef.index for ef in frames})
    if unknown:
        raise InputError(f"--edited-caption {unknown[0]}:... names no --edited-frame: give the frame with "
                         f"--edited-frame {unknown[0]}:IMAGE, or drop the caption")
    return tuple(replace(ef, caption=by_index.get(ef.index, ef.caption)) for ef in frames)


def _frame_prefix(text: str, option: str, form: str) -> tuple[int | None, list[float]]:
    """`[N:]v,v,...` -> (N or None, the numbers); an ArgumentTypeError names the option and the form."""
    frame, _, values = text.rpartition(":")
    try:
        numbers = [float(v) for v in values.split(",")]
        return (int(frame) if frame else None), numbers
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option} {text!r} is not {form}") from None


def parse_point(text: str) -> tuple[int | None, float, float, int]:
    frame, v = _frame_prefix(text, "--points", "[FRAME:]x,y[,label], e.g. 320,240 or 12:320,240,0")
    if len(v) not in (2, 3) or (len(v) == 3 and v[2] not in (0, 1)):
        raise argparse.ArgumentTypeError(f"--points {text!r} is not [FRAME:]x,y[,label] with label 1 (on the object) "
                                         "or 0 (not on it)")
    return frame, v[0], v[1], int(v[2]) if len(v) == 3 else 1


def parse_box(text: str) -> tuple[int | None, tuple[float, float, float, float]]:
    frame, v = _frame_prefix(text, "--box", "[FRAME:]x0,y0,x1,y1, e.g. 100,80,300,260 or 24:100,80,300,260")
    if len(v) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r} is not [FRAME:]x0,y0,x1,y1 (four numbers)")
    return frame, (v[0], v[1], v[2], v[3])


def parse_modes(text: str) -> tuple[str, ...]:
    from ..tools.quality import ALL_MODES

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in ALL_MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {', '.join(unknown) or '(none given)'}: use "
                                         f"{', '.join(ALL_MODES)}")
    return modes


def parse_extra_lora(text: str):
    """`FILE[:WEIGHT]` -> ExtraLora (weight 1 when the part after the last colon is not a number)."""
    import math

    from ..config import ExtraLora

    head, sep, tail = text.rpartition(":")
    try:
        weight = float(tail) if sep else None
    except ValueError:
        weight = None
    if weight is None:
        return ExtraLora(Path(text), 1.0)
    if not head or not math.isfinite(weight):
        raise argparse.ArgumentTypeError(f"--extra-lora {text!r} is not FILE[:WEIGHT], e.g. distill.safetensors:0.8")
    return ExtraLora(Path(head), weight)


def parse_caption(text: str) -> Path:
    kind, sep, folder = text.partition(":")
    if kind != "florence2" or not sep or not folder:
        raise argparse.ArgumentTypeError(f"--caption {text!r} is not florence2:DIR (a local Florence-2 folder)")
    return Path(folder)


#: `--fast`: the speed levers measured in the toy world (docs/RESULTS.md section 10), as defaults that any
#: option given on the command line or in a --config file overrides; each command takes those it has. Half
#: the stage-1 steps at twice the authors' learning rate, 15 sampling steps, TaylorSeer every 3rd step:
#: modelled 12.0 -> 5.6 minutes for a 49-frame Wan 14B edit on an H100. `--train-size` is left out: it cost
#: the toy world's background 1.4-3 dB.
FAST_PRESET = {"stage1_steps": 50, "lr": 2e-4, "steps": 15, "taylorseer": 3}


def preset_defaults(actions: dict[str, argparse.Action]) -> dict:
    """The `--fast` values of the options a subcommand has (its parser's actions by dest)."""
    return {dest: value for dest, value in FAST_PRESET.items() if dest in actions}


def add_clip_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input clip")
    g.add_argument("--model", default="toy", help="local diffusers Wan2.1/2.2-I2V or HunyuanVideo-I2V (latent_concat, "
                   "33 channels) folder, or 'toy' / 'toy-wan2.2' for the embedded toy-world model (default: toy)")
    g.add_argument("--fast", action="store_true", help="the measured speed preset: " + ", ".join(
                   f"--{k.replace('_', '-')} {v}" for k, v in FAST_PRESET.items()) + " where the command has them "
                   "(options you give win; quality cost in docs/RESULTS.md section 10)")
    g.add_argument("--video", type=Path, required=True, help="input video (mp4/mov/webm/mkv) or folder of frames")
    g.add_argument("--mask", type=Path, required=True, help="edit masks: a video, a folder of PNGs (white = edit) "
                   "or PNGs with alpha, one per input frame")
    g.add_argument("--frames", type=int, help="frames to work with, 4k+1, sampled uniformly (default: the model's, "
                   "49 for Wan and HunyuanVideo)")
    g.add_argument("--window", type=int, help="frames the model samples at once, 4k+1 (default: the model's own; 81 "
                   "for Wan, 129 for HunyuanVideo, 17 for the toy world); a clip with more --frames is edited with one "
                   "LoRA over overlapping windows, then sampled window by window")
    g.add_argument("--size", type=parse_size, help="working size WxH, multiples of 16 (default: the model's working size; "
                   "832x480 for Wan, 624x368 for HunyuanVideo)")
    g.add_argument("--prompt", default="", help="caption of the edited first frame (the concept token is prefixed)")
    g.add_argument("--train-prompt", help="caption of the input's first frame for training (default: --prompt)")
    g.add_argument("--concept-token", default="p3rs0n,", help="rare token prefixed to every prompt (default: p3rs0n,)")
    g.add_argument("--caption", type=parse_caption, metavar="florence2:DIR", help="caption the first frame (training) and "
                   "the edited first frame (sampling) with a local Florence-2 folder (<DETAILED_CAPTION>, 'The image "
                   "shows' stripped); --prompt / --train-prompt override it; cached with the latents")
    g.add_argument("--mode", default="mask-aware", choices=list(MODES),
                   help="mask-aware (the method), naive (LoRA on the standard I2V condition), no-lora (stock "
                   "I2V), mask-no-lora (mask-aware condition on the base model)")
    g.add_argument("--mask-mode", default="maxpool", choices=MASK_MODES,
                   help="pixel -> latent mask: maxpool (no edited pixel is ever kept) or nearest (the authors')")
    g.add_argument("--clip-view", default="squash", choices=CLIP_VIEWS, help="how the image encoder sees a "
                   "non-square frame: squash the whole frame to its square (Wan's code, the authors'; default) or "
                   "crop its centre (diffusers' processor: misses the sides of a wide frame)")
    g.add_argument("--strict", action="store_true", help="refuse edited images of another aspect ratio than the "
                   "video instead of resizing them to cover and centre-cropping")
    g.add_argument("--allow-empty-mask-frames", action="store_true", help="accept frames whose mask marks nothing "
                   "to edit (the object leaves the picture); otherwise they are an error")
    g.add_argument("--allow-full-mask-frames", action="store_true", help="accept frames whose mask marks every "
                   "pixel (nothing of them is kept); otherwise they are an error")
    g.add_argument("--cache-dir", type=Path, help="where encoded latents/embeddings are cached "
                   "(default: ~/.cache/loraedit/encoded, or $LORAEDIT_CACHE/encoded)")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--memory-mode", default="full", choices=list(MEMORY_MODES),
                   help="base weights: full (bf16 on the GPU), fp8 (stored in float8, half the memory), offload "
                   "(kept in CPU memory, streamed layer by layer), fp8+offload (for 24 GB cards); default full")
    g.add_argument("--attention", default="auto", help="attention backend: auto (FlashAttention 3/2 if installed, "
                   "else PyTorch SDPA), native, flash, _flash_3, _native_cudnn, _native_math, sage (sampling only)")
    g.add_argument("--compile", action="store_true", help="torch.compile each transformer block (about a minute "
                   "once; faster steps on a GPU)")
    g.add_argument("--dry-run", action="store_true", help="check every input, print what the run would do on this "
                   "GPU (memory per mode, minutes, the mode to use) and stop before any model loads")
    g.add_argument("--no-memory-check", action="store_true", help="run even when the cost model says the run "
                   "will not fit the GPU (it is an estimate)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    g.add_argument("--config", type=Path, help="TOML file of options (command-line options win)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the authors')")
    g.add_argument("--edited-frame", dest="edited_frames", action="append", type=parse_edited_frame, default=[],
                   metavar="IDX:IMG[:MASK]", help="an edited later frame (source frame index, image, optional mask) "
                   "for stage 2; repeatable")
    g.add_argument("--edited-caption", dest="edited_captions", action="append", type=parse_edited_caption, default=[],
                   metavar="IDX:TEXT", help="what edited frame IDX shows, in words: its stage-2 prompt, as in the "
                   "authors' code (default: written by --caption's Florence-2, else the training prompt); repeatable")
    g.add_argument("--low-cost", action="store_true", help="train on overlapping short clips (less memory)")
    g.add_argument("--low-cost-clip-frames", type=int, default=13, help="clip length for --low-cost (default 13)")
    g.add_argument("--train-size", type=parse_train_size, metavar="WxH|F", help="train the motion at this smaller "
                   "size of the working size's aspect, or this fraction of it (0.5), and sample at the working size "
                   "(ours, faster: half size = 4x fewer tokens a step; default: the working size, the paper's)")
    g.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    g.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; scale = alpha/rank (default 16)")
    g.add_argument("--targets", help="peft regex of the Linear layers to adapt (default: every block Linear "
                   "except the CLIP key/value projections)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    g.add_argument("--stage1-steps", type=int, default=100, help="steps on the input video (motion; default 100)")
    g.add_argument("--stage2-steps", type=int, help="steps on edited frames (only with --edited-frame; default: "
                   "--stage2-epochs epochs, the authors' 100 steps for one edited frame, 190 for two)")
    g.add_argument("--stage2-epochs", type=int, default=10, help="stage-2 epochs when --stage2-steps is not given "
                   "(an epoch: the video once, each edited frame --stage2-repeats times; default 10)")
    g.add_argument("--stage2-repeats", type=int, default=9, help="repeats of each edited frame per stage-2 epoch")
    g.add_argument("--appearance-augment", type=int, default=0, metavar="N", help="train on N recoloured versions "
                   "of the clip (one random colour transform each, drawn per step) instead of its own colours, so a "
                   "long training cannot paint the original object back over the edit (ours; default 0 = the paper)")
    g.add_argument("--appearance-region", choices=APPEARANCE_REGIONS, default="path", help="where --appearance-augment "
                   "recolours: the mask's path over the clip (default) or the whole frame")
    g.add_argument("--timestep-sampling", default="uniform", choices=TIMESTEP_SAMPLING,
                   help="noise-level distribution in training (default uniform, as the authors)")
    g.add_argument("--checkpoint-every", type=int, default=25, help="checkpoint interval in steps (0 = never)")
    g.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory "
                   "(= --checkpoint-blocks 0)")
    g.add_argument("--checkpoint-blocks", type=parse_blocks, help="gradient checkpointing on the first N transformer "
                   "blocks, or all (default: all on a GPU, none on a CPU; memory grows with the blocks left out)")
    g.add_argument("--keep-attention", action="store_true", help="checkpointed blocks keep their self-attention "
                   "output, so the recomputed forward skips the attention (faster at long clips; 7.9 GiB more for "
                   "Wan 14B at 49 frames)")
    g.add_argument("--timestep-shift", type=float, default=3.0, help="shift for --timestep-sampling shifted "
                   "(default 3)")
    g.add_argument("--train-seed", type=int, default=0, help="seed of LoRA init, sample order, noise")
    g.add_argument("--draws-per-step", type=int, metavar="N", help="average the gradients of N draws (sample, noise, "
                   "noise level) per step (default 1, the paper's; with --fsdp: the number of GPUs, one draw each)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")


def add_sample_options(p: argparse.ArgumentParser, with_lora: bool) -> None:
    g = p.add_argument_group("sampling (defaults: the authors')")
    g.add_argument("--edited-first-frame", type=Path, required=True, help="the edited first frame (any image format)")
    if with_lora:
        g.add_argument("--lora", dest="loras", action="append", type=Path, default=[],
                       help="LoRA file from `loraedit train` (twice for Wan2.2: lora.safetensors, lora_2.safetensors)")
    g.add_argument("--extra-lora", dest="extra_loras", action="append", type=parse_extra_lora, default=[],
                   metavar="FILE[:WEIGHT]", help="another LoRA (step distillation, a style; loraedit's or another "
                   "tool's, see the README's table of layouts) attached beside the edit LoRA for sampling only, at WEIGHT (default 1); "
                   "repeatable; the edit LoRA is still trained on the plain base")
    g.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's own; 5 for "
                   "Wan folders, as the authors; 1 for HunyuanVideo-I2V, as its official sampler; 1 for the toy world)")
    g.add_argument("--guidance-2", type=float, help="guidance of Wan2.2's low-noise expert (default: --guidance)")
    g.add_argument("--shift", type=float, default=5.0, help="flow shift of the sampler (default 5, the authors' for "
                   "Wan; HunyuanVideo-I2V's own sampler uses 7 to 17)")
    g.add_argument("--sampler", choices=SAMPLERS, help="unipc (diffusers' multistep solver, the Wan folders' own) or "
                   "euler (flow-matching Euler: the authors' inference, HunyuanVideo's own); default: the folder's own")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--first-block-cache", type=float, default=0.0, metavar="T", help="reuse the blocks after the "
                   "first across sampling steps while the first block's output changes by less than T (diffusers' "
                   "First Block Cache; faster, approximate; 0.1 skipped about half in the toy world; default 0 = off)")
    g.add_argument("--taylorseer", type=int, default=0, metavar="N", help="run the blocks fully every N-th sampling "
                   "step (and the first 3) and extrapolate their outputs in between (diffusers' TaylorSeer, first "
                   "order; faster, approximate; default 0 = off)")
    g.add_argument("--negative-prompt", help="negative prompt (default: the model's own; Wan's standard one "
                   "for Wan folders, HunyuanVideo-I2V's for its folders)")
    g.add_argument("--paste-background", action="store_true", help="copy the input's pixels back outside the mask, "
                   "bit-exact beyond --paste-feather (off by default, so the method itself is what you see)")
    g.add_argument("--paste-feather", type=int, default=3, metavar="PX", help="with --paste-background: the pasted "
                   "input fades in over this many pixels outside the mask (default 3; 0 = a hard seam)")
    g.add_argument("--window-overlap", type=int, default=1, metavar="N", help="a clip longer than --window: each "
                   "window is given the last N frames generated by the one before, whole (default 1: its first frame)")
    g.add_argument("--window-colour-match", action="store_true", help="a clip longer than --window: set those "
                   "frames' edit region to the edited first frame's mean colour and spread before they condition the "
                   "next window (against colour drift; ours)")
    g.add_argument("--no-batched-cfg", action="store_true", help="run the conditional and unconditional "
                   "predictions as two forwards (default: one batched forward; same result)")
    g.add_argument("--vae-tiling", action="store_true", help="decode the video in spatial tiles (less memory "
                   "for large frames)")


def add_edit_options(p: argparse.ArgumentParser) -> None:
    """`loraedit edit`'s options (also the keys of a batch job, `cli/batch.py`)."""
    add_clip_options(p)
    add_train_options(p)
    add_sample_options(p, with_lora=False)
    p.add_argument("--out", type=Path, default=Path("out/edit.mp4"), help="output mp4 (default out/edit.mp4); the "
                   "contact sheet goes beside it, the LoRA and logs into <stem>.work/")


def configs(args: argparse.Namespace):
    from ..api import ClipInputs, RunOptions, SampleConfig
    from ..performance import PerformanceConfig
    from ..config import TrainConfig

    inputs = ClipInputs(video=args.video, mask=args.mask, frames=args.frames, size=args.size,
                        edited_frames=with_edited_captions(tuple(getattr(args, "edited_frames", ()) or ()),
                                                           getattr(args, "edited_captions", []) or []),
                        strict=args.strict,
                        allow_empty_mask_frames=args.allow_empty_mask_frames,
                        allow_full_mask_frames=args.allow_full_mask_frames)
    opts = RunOptions(
        mode=args.mode, low_cost=getattr(args, "low_cost", False),
        low_cost_clip_frames=getattr(args, "low_cost_clip_frames", 13), window=args.window, mask_mode=args.mask_mode,
        clip_view=args.clip_view,
        prompt=args.prompt, train_prompt=args.train_prompt, concept_token=args.concept_token,
        cache_dir=args.cache_dir or default_cache_dir(), progress=not args.quiet,
        resume=getattr(args, "resume", False), device=args.device,
        performance=performance(args, PerformanceConfig), caption=args.caption,
        memory_check=not args.no_memory_check)
    cfg = TrainConfig(
        rank=args.rank, alpha=args.alpha, targets=args.targets, learning_rate=args.lr,
        stage1_steps=args.stage1_steps, train_size=args.train_size, stage2_steps=args.stage2_steps,
        stage2_epochs=args.stage2_epochs,
        stage2_repeats=args.stage2_repeats,
        timestep_sampling=args.timestep_sampling, timestep_shift=args.timestep_shift,
        appearance_augment=args.appearance_augment, appearance_region=args.appearance_region,
        checkpoint_every=args.checkpoint_every,
        seed=args.train_seed,
        draws_per_step=1 if args.draws_per_step is None else args.draws_per_step) if hasattr(args, "rank") else None
    scfg = SampleConfig(
        steps=args.steps, guidance=args.guidance, guidance_2=args.guidance_2, shift=args.shift,
        sampler=args.sampler, seed=args.seed,
        negative_prompt=args.negative_prompt, paste_background=args.paste_background,
        paste_feather=args.paste_feather,
        first_block_cache=args.first_block_cache, taylorseer=args.taylorseer,
        extra_loras=tuple(getattr(args, "extra_loras", ()) or ()), window_overlap=args.window_overlap,
        window_colour_match=args.window_colour_match) if hasattr(args, "steps") else None
    return inputs, opts, cfg, scfg


def performance(args: argparse.Namespace, config_class):
    """The speed/memory options of the command (training-only and sampling-only ones where it has them)."""
    blocks = getattr(args, "checkpoint_blocks", None)
    if getattr(args, "no_gradient_checkpointing", False):
        blocks = 0
    return config_class(memory_mode=args.memory_mode, attention=args.attention, compile=args.compile,
                        checkpoint_blocks=blocks, keep_attention=getattr(args, "keep_attention", False),
                        batched_cfg=not getattr(args, "no_batched_cfg", False),
                        vae_tiling=getattr(args, "vae_tiling", False),
                        context_parallel=getattr(args, "context_parallel", None))


#: TOML keys that name an option by its flag where the option's destination is plural.
TOML_ALIASES = {"edited_frame": "edited_frames", "edited_caption": "edited_captions", "lora": "loras",
                "extra_lora": "extra_loras"}


def toml_option_values(actions: dict[str, argparse.Action], table: dict, where: str, command: str) -> dict:
    """A TOML table of option values (keys: long option names, dashes or underscores) -> {dest: value},
    converted by each option's own parser, so `--config` files and batch jobs read exactly like the
    command line. `where` names the table in messages (e.g. "config file edit.toml"); one InputError on the
    first bad key or value, naming it and the fix."""
    values = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        dest = TOML_ALIASES.get(dest, dest)
        action = actions.get(dest)
        if action is None or dest in ("help", "config"):
            raise InputError(f"{where} sets unknown option {key!r}: valid keys are the long options of "
                             f"`loraedit {command} --help`")
        values[dest] = _toml_value(action, key, value, where)
    return values


def _toml_value(action: argparse.Action, key: str, value, where: str):
    """One TOML value through its option's parser (strings, and each string of a list), type-checked."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
        if not isinstance(value, bool):
            raise InputError(f"{where}: {key} = {value!r} is invalid: give true or false")
        return value
    convert = action.type
    try:
        if isinstance(value, list):
            return [convert(str(v)) if convert else v for v in value]
        if isinstance(value, str) and convert is not None:
            value = convert(value)
        elif convert in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or (convert is int and isinstance(value, float))):
            raise ValueError(f"needs {'a whole number' if convert is int else 'a number'}")
        elif convert is float:
            value = float(value)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise InputError(f"{where}: {key} = {value!r} is invalid ({exc})") from None
    if action.choices is not None and value not in action.choices:
        raise InputError(f"{where}: {key} = {value!r} is invalid: choose one of {', '.join(map(str, action.choices))}")
    return value
