"""Command line: parse options (and an optional TOML file) into frozen configs, call `api`, report errors.

Every option may also come from `--config FILE.toml` (keys are option names, dashes or underscores);
options given on the command line win. Every input is checked before any model loads (`validate`), and
all problems are reported at once: one line each, under a header when there are several. Exit codes:
2 bad usage or input, 1 runtime failure, 130 interrupted (after saving a checkpoint); `--debug` shows
the traceback instead of the message.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from . import __version__
from .errors import InputError, LoraEditError, error_text

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 832x480") from None
    return w, h


def _blocks(text: str) -> int:
    from .performance import ALL_BLOCKS

    if text == "all":
        return ALL_BLOCKS
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--checkpoint-blocks {text!r} is not a number of blocks or all") from None


def _edited_frame(text: str):
    from .api import EditedFrame

    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].isdigit():
        raise argparse.ArgumentTypeError(f"--edited-frame {text!r} is not IDX:IMAGE[:MASK], e.g. 24:frame24_edit.png")
    return EditedFrame(int(parts[0]), Path(parts[1]), Path(parts[2]) if len(parts) == 3 else None)


def _frame_prefix(text: str, option: str, form: str) -> tuple[int | None, list[float]]:
    """`[N:]v,v,...` -> (N or None, the numbers); an ArgumentTypeError names the option and the form."""
    frame, _, values = text.rpartition(":")
    try:
        numbers = [float(v) for v in values.split(",")]
        return (int(frame) if frame else None), numbers
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option} {text!r} is not {form}") from None


def _point(text: str) -> tuple[int | None, float, float, int]:
    frame, v = _frame_prefix(text, "--points", "[FRAME:]x,y[,label], e.g. 320,240 or 12:320,240,0")
    if len(v) not in (2, 3) or (len(v) == 3 and v[2] not in (0, 1)):
        raise argparse.ArgumentTypeError(f"--points {text!r} is not [FRAME:]x,y[,label] with label 1 (on the object) "
                                         "or 0 (not on it)")
    return frame, v[0], v[1], int(v[2]) if len(v) == 3 else 1


def _box(text: str) -> tuple[int | None, tuple[float, float, float, float]]:
    frame, v = _frame_prefix(text, "--box", "[FRAME:]x0,y0,x1,y1, e.g. 100,80,300,260 or 24:100,80,300,260")
    if len(v) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r} is not [FRAME:]x0,y0,x1,y1 (four numbers)")
    return frame, (v[0], v[1], v[2], v[3])


def _modes(text: str) -> tuple[str, ...]:
    from .quality import ALL_MODES

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in ALL_MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {', '.join(unknown) or '(none given)'}: use "
                                         f"{', '.join(ALL_MODES)}")
    return modes


def _caption(text: str) -> Path:
    kind, sep, folder = text.partition(":")
    if kind != "florence2" or not sep or not folder:
        raise argparse.ArgumentTypeError(f"--caption {text!r} is not florence2:DIR (a local Florence-2 folder)")
    return Path(folder)


def _add_clip_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input clip")
    g.add_argument("--model", default="toy", help="local diffusers Wan2.1/2.2-I2V or HunyuanVideo-I2V (latent_concat, "
                   "33 channels) folder, or 'toy' / 'toy-wan2.2' for the embedded toy-world model (default: toy)")
    g.add_argument("--video", type=Path, required=True, help="input video (mp4/mov/webm/mkv) or folder of frames")
    g.add_argument("--mask", type=Path, required=True, help="edit masks: a video, a folder of PNGs (white = edit) "
                   "or PNGs with alpha, one per input frame")
    g.add_argument("--frames", type=int, help="frames to work with, 4k+1, sampled uniformly (default: the model's, "
                   "49 for Wan and HunyuanVideo)")
    g.add_argument("--size", type=_size, help="working size WxH, multiples of 16 (default: the model's working size; "
                   "832x480 for Wan, 624x368 for HunyuanVideo)")
    g.add_argument("--prompt", default="", help="caption of the edited first frame (the concept token is prefixed)")
    g.add_argument("--train-prompt", help="caption of the input's first frame for training (default: --prompt)")
    g.add_argument("--concept-token", default="p3rs0n,", help="rare token prefixed to every prompt (default: p3rs0n,)")
    g.add_argument("--caption", type=_caption, metavar="florence2:DIR", help="caption the first frame (training) and "
                   "the edited first frame (sampling) with a local Florence-2 folder (<DETAILED_CAPTION>, 'The image "
                   "shows' stripped); --prompt / --train-prompt override it; cached with the latents")
    g.add_argument("--mode", default="mask-aware", choices=["mask-aware", "naive", "no-lora", "mask-no-lora"],
                   help="mask-aware (the method), naive (LoRA on the standard I2V condition), no-lora (stock "
                   "I2V), mask-no-lora (mask-aware condition on the base model)")
    g.add_argument("--mask-mode", default="maxpool", choices=["maxpool", "nearest"],
                   help="pixel -> latent mask: maxpool (no edited pixel is ever kept) or nearest (the authors')")
    g.add_argument("--strict", action="store_true", help="refuse edited images of another aspect ratio than the "
                   "video instead of resizing them to cover and centre-cropping")
    g.add_argument("--allow-empty-mask-frames", action="store_true", help="accept frames whose mask marks nothing "
                   "to edit (the object leaves the picture); otherwise they are an error")
    g.add_argument("--allow-full-mask-frames", action="store_true", help="accept frames whose mask marks every "
                   "pixel (nothing of them is kept); otherwise they are an error")
    g.add_argument("--cache-dir", type=Path, help="where encoded latents/embeddings are cached "
                   "(default: ~/.cache/loraedit/encoded, or $LORAEDIT_CACHE/encoded)")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--memory-mode", default="full", choices=["full", "fp8", "offload", "fp8+offload"],
                   help="base weights: full (bf16 on the GPU), fp8 (stored in float8, half the memory), offload "
                   "(kept in CPU memory, streamed layer by layer), fp8+offload (for 24 GB cards); default full")
    g.add_argument("--attention", default="auto", help="attention backend: auto (FlashAttention 3/2 if installed, "
                   "else PyTorch SDPA), native, flash, _flash_3, _native_cudnn, _native_math, sage (sampling only)")
    g.add_argument("--compile", action="store_true", help="torch.compile each transformer block (about a minute "
                   "once; faster steps on a GPU)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    g.add_argument("--config", type=Path, help="TOML file of options (command-line options win)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the authors')")
    g.add_argument("--edited-frame", dest="edited_frames", action="append", type=_edited_frame, default=[],
                   metavar="IDX:IMG[:MASK]", help="an edited later frame (source frame index, image, optional mask) "
                   "for stage 2; repeatable")
    g.add_argument("--low-cost", action="store_true", help="train on overlapping short clips (less memory)")
    g.add_argument("--low-cost-clip-frames", type=int, default=13, help="clip length for --low-cost (default 13)")
    g.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    g.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; scale = alpha/rank (default 16)")
    g.add_argument("--targets", help="peft regex of the Linear layers to adapt (default: every block Linear "
                   "except the CLIP key/value projections)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    g.add_argument("--stage1-steps", type=int, default=100, help="steps on the input video (motion; default 100)")
    g.add_argument("--stage2-steps", type=int, default=100, help="steps on edited frames (only with --edited-frame)")
    g.add_argument("--stage2-repeats", type=int, default=9, help="repeats of each edited frame per stage-2 epoch")
    g.add_argument("--appearance-augment", type=int, default=0, metavar="N", help="train on N recoloured versions "
                   "of the clip (one random colour transform each, drawn per step) instead of its own colours, so a "
                   "long training cannot paint the original object back over the edit (ours; default 0 = the paper)")
    g.add_argument("--appearance-region", choices=["path", "frame"], default="path", help="where --appearance-augment "
                   "recolours: the mask's path over the clip (default) or the whole frame")
    g.add_argument("--timestep-sampling", default="uniform", choices=["uniform", "logit-normal", "shifted"],
                   help="noise-level distribution in training (default uniform, as the authors)")
    g.add_argument("--checkpoint-every", type=int, default=25, help="checkpoint interval in steps (0 = never)")
    g.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory "
                   "(= --checkpoint-blocks 0)")
    g.add_argument("--checkpoint-blocks", type=_blocks, help="gradient checkpointing on the first N transformer "
                   "blocks, or all (default: all on a GPU, none on a CPU; memory grows with the blocks left out)")
    g.add_argument("--keep-attention", action="store_true", help="checkpointed blocks keep their self-attention "
                   "output, so the recomputed forward skips the attention (faster at long clips; 7.9 GiB more for "
                   "Wan 14B at 49 frames)")
    g.add_argument("--timestep-shift", type=float, default=3.0, help="shift for --timestep-sampling shifted "
                   "(default 3)")
    g.add_argument("--train-seed", type=int, default=0, help="seed of LoRA init, sample order, noise")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")


def _add_sample_options(p: argparse.ArgumentParser, with_lora: bool) -> None:
    g = p.add_argument_group("sampling (defaults: the authors')")
    g.add_argument("--edited-first-frame", type=Path, required=True, help="the edited first frame (any image format)")
    if with_lora:
        g.add_argument("--lora", dest="loras", action="append", type=Path, default=[],
                       help="LoRA file from `loraedit train` (twice for Wan2.2: lora.safetensors, lora_2.safetensors)")
    g.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's own; 5 for "
                   "Wan folders, as the authors; 1 for HunyuanVideo-I2V, as its official sampler; 1 for the toy world)")
    g.add_argument("--guidance-2", type=float, help="guidance of Wan2.2's low-noise expert (default: --guidance)")
    g.add_argument("--shift", type=float, default=5.0, help="flow shift of the sampler (default 5, the authors' for "
                   "Wan; HunyuanVideo-I2V's own sampler uses 7 to 17)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--first-block-cache", type=float, default=0.0, metavar="T", help="reuse the blocks after the "
                   "first across sampling steps while the first block's output changes by less than T (diffusers' "
                   "First Block Cache; faster, approximate; 0.1 skipped about half in the toy world; default 0 = off)")
    g.add_argument("--negative-prompt", help="negative prompt (default: the model's own; Wan's standard one "
                   "for Wan folders, HunyuanVideo-I2V's for its folders)")
    g.add_argument("--paste-background", action="store_true", help="copy the input's pixels back outside the mask, "
                   "bit-exact beyond --paste-feather (off by default, so the method itself is what you see)")
    g.add_argument("--paste-feather", type=int, default=3, metavar="PX", help="with --paste-background: the pasted "
                   "input fades in over this many pixels outside the mask (default 3; 0 = a hard seam)")
    g.add_argument("--no-batched-cfg", action="store_true", help="run the conditional and unconditional "
                   "predictions as two forwards (default: one batched forward; same result)")
    g.add_argument("--vae-tiling", action="store_true", help="decode the video in spatial tiles (less memory "
                   "for large frames)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraedit", description="First-frame-guided video editing with mask-aware "
                                     "LoRA fine-tuning of an image-to-video model.")
    parser.add_argument("--version", action="version", version=f"loraedit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edit", help="train the LoRA on the clip, then generate the edit (the whole method)")
    _add_clip_options(p)
    _add_train_options(p)
    _add_sample_options(p, with_lora=False)
    p.add_argument("--out", type=Path, default=Path("out/edit.mp4"), help="output mp4 (default out/edit.mp4); the "
                   "contact sheet goes beside it, the LoRA and logs into <stem>.work/")

    p = sub.add_parser("train", help="train the LoRA only (reuse it for any number of edited first frames)")
    _add_clip_options(p)
    _add_train_options(p)
    p.add_argument("--out", type=Path, default=Path("out/lora"), help="output folder for lora.safetensors")

    p = sub.add_parser("sample", help="generate an edit with a trained LoRA (the fast path: no retraining)")
    _add_clip_options(p)
    _add_sample_options(p, with_lora=True)
    p.add_argument("--out", type=Path, default=Path("out/edit.mp4"), help="output mp4 (default out/edit.mp4)")

    p = sub.add_parser("bench", help="measure the method: `bench quality` scores every mode against toy-world "
                       "ground truth")
    p.add_argument("which", choices=["quality"], help="quality: every mode on held-out toy-world scenarios")
    p.add_argument("--model", default="toy", help="model (default: the embedded toy model)")
    p.add_argument("--scenarios", type=int, default=12, help="held-out scenarios (default 12)")
    p.add_argument("--seed", type=int, default=0, help="which held-out scenarios (disjoint sets per seed)")
    p.add_argument("--level", type=int, choices=[1, 2, 3], default=3, help="toy-world difficulty: 1 slow smooth "
                   "motion, 2 adds spin/scale/occlusion/cards, 3 the first world (default 3)")
    p.add_argument("--json", type=Path, help="also write the summary JSON here")
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="folder for JSON, table, chart, contact "
                   "sheets (default docs/results)")
    p.add_argument("--stage1-steps", type=int, default=100, help="LoRA steps on the clip (default 100)")
    p.add_argument("--stage2-steps", type=int, default=100, help="LoRA steps with the edited later frame")
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (default 1e-3, the toy world's; "
                   "the authors' 1e-4 leaves its tiny model's LoRA undertrained, docs/RESULTS.md)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--recolour-copies", type=int, default=0, help="appearance augmentation: recoloured copies "
                   "of the clip in mask-aware training (ours; default 0 = the paper)")
    p.add_argument("--appearance-augment", type=int, default=None, metavar="N", help="mask-aware training on N "
                   "recoloured versions of the clip, one drawn per step (ours; default: the toy world's setting)")
    p.add_argument("--appearance-region", choices=["path", "frame"], help="where --appearance-augment recolours "
                   "(default: the toy world's setting)")
    p.add_argument("--timestep-sampling", choices=["uniform", "logit-normal", "shifted"], default="shifted",
                   help="LoRA training noise levels (default shifted by 3, the toy world's; the authors: uniform)")
    p.add_argument("--modes", type=_modes, help="comma-separated subset of the rows to run (default all: "
                   "no-lora,mask-no-lora,naive,mask-aware,mask-aware+frames,low-cost,mask-aware+paste,"
                   "codec-ceiling,static-first-frame); a lever study needs only naive,mask-aware")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--guidance", type=float, help="CFG scale (default: the model's own; 1 for the toy world, "
                   "5 for Wan)")
    p.add_argument("--shift", type=float, default=5.0, help="sampler flow shift (default 5)")
    p.add_argument("--first-block-cache", type=float, default=0.0, metavar="T", help="sample every mode with "
                   "diffusers' First Block Cache at threshold T (default 0 = off)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    _add_mask_parser(sub)
    _add_eval_parser(sub)

    _add_ui_parser(sub)

    p = sub.add_parser("demo", help="run the whole method on a generated toy-world clip")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--model", default="toy", help="model (default: the embedded toy model)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    return parser


def _add_mask_parser(sub) -> None:
    p = sub.add_parser("mask", help="make edit masks: track a clicked object with SAM2, or interpolate key-frame boxes")
    p.add_argument("--video", type=Path, required=True, help="the input video (or folder of frames)")
    p.add_argument("--points", type=_point, nargs="+", action="extend", default=[], metavar="[N:]x,y[,label]",
                   help="clicks on the object in source-video pixels (label 1 = object, 0 = not; frame N default "
                   "--frame); needs --sam")
    p.add_argument("--box", type=_box, action="append", default=[], metavar="[N:]x0,y0,x1,y1",
                   help="a box around the object on frame N (default --frame): a SAM2 prompt with --sam, else a key "
                   "frame (boxes are interpolated linearly between key frames); repeatable")
    p.add_argument("--frame", type=int, default=0, help="frame of --points/--box without N: (default 0)")
    p.add_argument("--sam", type=Path, help="local SAM2 (or SAM3 tracker) folder in transformers' safetensors layout; "
                   "without it, --box key frames are interpolated")
    p.add_argument("--shape", default="box", choices=["box", "outline"], help="with --sam: box = per component its "
                   "box grown 10%%, specks dropped (the authors'); outline = the tracked outline (default box)")
    p.add_argument("--dilate", type=float, default=0.0, help="with --sam: grow the outline by this many pixels first")
    p.add_argument("--min-area", type=float, default=50, help="with --shape box: drop components under this many "
                   "pixels (default 50, the authors')")
    p.add_argument("--out", type=Path, required=True, help="output folder: masks/ (PNGs for `loraedit edit --mask`), "
                   "preview.mp4, masks.json")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--config", type=Path, help="TOML file of options (command-line options win)")


def _add_ui_parser(sub) -> None:
    p = sub.add_parser("ui", help="the web app: load a clip, make masks, train with a live loss curve, sample, "
                       "download (needs the ui extra: pip install 'loraedit[ui]')")
    p.add_argument("--model", default="toy", help="local diffusers Wan or HunyuanVideo-I2V folder, or 'toy' (default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "0.0.0.0 opens the app, which has no login, to the network)")
    p.add_argument("--port", type=int, help="port (default: 7860, or the next free one)")
    p.add_argument("--work", type=Path, help="folder for the sessions' uploads and results (default: ui/ beside "
                   "the encoded cache, ~/.cache/loraedit/ui)")
    p.add_argument("--sam", type=Path, help="local SAM2 (or SAM3 tracker) folder: click the object and it is tracked; "
                   "without it masks come from key-frame boxes or uploads")
    p.add_argument("--caption", type=_caption, metavar="florence2:DIR", help="local Florence-2 folder: a button "
                   "captions the first frame and the edited first frame")
    p.add_argument("--cache-dir", type=Path, help="encoded latents/embeddings cache (default: "
                   "~/.cache/loraedit/encoded)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score an edited video (CLIP score, input similarity, background PSNR/SSIM, "
                       "temporal consistency), or a folder of cases with --suite")
    p.add_argument("--input", type=Path, help="the input video")
    p.add_argument("--output", type=Path, help="the edited video")
    p.add_argument("--mask", type=Path, help="edit masks of the input (background = outside them)")
    p.add_argument("--edited-first-frame", type=Path, help="the edited first frame (default: the output's frame 0)")
    p.add_argument("--reference", type=Path, help="a ground-truth edited video: adds PSNR/SSIM against it")
    p.add_argument("--suite", type=Path, help="a folder of cases (CASE/source.mp4, CASE/edited/*.png, optional "
                   "CASE/mask/, CASE/outputs/<edit>.mp4): scores every case and prints a table")
    p.add_argument("--outputs", type=Path, help="with --suite: where the outputs are (OUTPUTS/CASE/<edit>.mp4) "
                   "instead of CASE/outputs/")
    p.add_argument("--clip", type=Path, help="local CLIP folder (transformers layout, e.g. clip-vit-large-patch14); "
                   "without it the CLIP metrics are skipped")
    p.add_argument("--frame-set", default="after-first", choices=["after-first", "all"],
                   help="frames scored: after-first (default: frame 0 is the given edit) or all")
    p.add_argument("--deqa-json", type=Path, help="DeQA-Score results from tools/deqa_score.py (run in its own "
                   "environment) to merge in")
    p.add_argument("--json", type=Path, help="write the metrics JSON here")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--config", type=Path, help="TOML file of options (command-line options win)")


def _apply_toml(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv, with the values of `--config FILE.toml` as the subcommand's defaults."""
    path = _config_path(argv)
    subparsers = parser._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no public API)
    command = next((a for a in argv if a in subparsers), None)
    if path is None or command is None:
        return parser.parse_args(argv)
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist: check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {path} is not valid TOML ({exc}): fix its syntax") from None
    sub = subparsers[command]
    actions = {a.dest: a for a in sub._actions}  # noqa: SLF001
    defaults = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        dest = {"edited_frame": "edited_frames", "lora": "loras"}.get(dest, dest)
        action = actions.get(dest)
        if action is None or dest in ("help", "config"):
            raise InputError(f"config file {path} sets unknown option {key!r}: valid keys are the long options of "
                             f"`loraedit {command} --help`")
        convert = action.type if action.type is not None else (lambda v: v)
        try:
            if isinstance(value, list):
                defaults[dest] = [convert(str(v)) if action.type else v for v in value]
            elif isinstance(value, str) and action.type is not None:
                defaults[dest] = convert(value)
            else:
                defaults[dest] = value
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise InputError(f"config file {path}: {key} = {value!r} is invalid ({exc})") from None
        action.required = False
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


def _config_path(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def _configs(args: argparse.Namespace):
    from .api import ClipInputs, RunOptions, SampleConfig
    from .performance import PerformanceConfig
    from .train import TrainConfig

    inputs = ClipInputs(video=args.video, mask=args.mask, frames=args.frames, size=args.size,
                        edited_frames=tuple(getattr(args, "edited_frames", ()) or ()), strict=args.strict,
                        allow_empty_mask_frames=args.allow_empty_mask_frames,
                        allow_full_mask_frames=args.allow_full_mask_frames)
    opts = RunOptions(
        mode=args.mode, low_cost=getattr(args, "low_cost", False),
        low_cost_clip_frames=getattr(args, "low_cost_clip_frames", 13), mask_mode=args.mask_mode,
        prompt=args.prompt, train_prompt=args.train_prompt, concept_token=args.concept_token,
        cache_dir=args.cache_dir or default_cache_dir(), progress=not args.quiet,
        resume=getattr(args, "resume", False), device=args.device,
        performance=_performance(args, PerformanceConfig), caption=args.caption)
    cfg = TrainConfig(
        rank=args.rank, alpha=args.alpha, targets=args.targets, learning_rate=args.lr,
        stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, stage2_repeats=args.stage2_repeats,
        timestep_sampling=args.timestep_sampling, timestep_shift=args.timestep_shift,
        appearance_augment=args.appearance_augment, appearance_region=args.appearance_region,
        checkpoint_every=args.checkpoint_every,
        seed=args.train_seed) if hasattr(args, "rank") else None
    scfg = SampleConfig(
        steps=args.steps, guidance=args.guidance, guidance_2=args.guidance_2, shift=args.shift, seed=args.seed,
        negative_prompt=args.negative_prompt, paste_background=args.paste_background,
        paste_feather=args.paste_feather,
        first_block_cache=args.first_block_cache) if hasattr(args, "steps") else None
    return inputs, opts, cfg, scfg


def _performance(args: argparse.Namespace, config_class):
    """The speed/memory options of the command (training-only and sampling-only ones where it has them)."""
    blocks = getattr(args, "checkpoint_blocks", None)
    if getattr(args, "no_gradient_checkpointing", False):
        blocks = 0
    return config_class(memory_mode=args.memory_mode, attention=args.attention, compile=args.compile,
                        checkpoint_blocks=blocks, keep_attention=getattr(args, "keep_attention", False),
                        batched_cfg=not getattr(args, "no_batched_cfg", False),
                        vae_tiling=getattr(args, "vae_tiling", False))


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("LORAEDIT_CACHE", Path.home() / ".cache" / "loraedit")) / "encoded"


def run(args: argparse.Namespace) -> None:
    from . import api

    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, model=args.model, progress=not args.quiet)
        return
    if args.command == "bench":
        _bench_quality(args)
        return
    if args.command == "mask":
        _mask(args)
        return
    if args.command == "eval":
        _eval(args)
        return
    if args.command == "ui":
        _ui(args)
        return
    inputs, opts, cfg, scfg = _configs(args)
    if args.command == "edit":
        api.edit(args.model, inputs, args.edited_first_frame, args.out, opts, cfg, scfg)
        print(f"wrote {args.out} and {args.out.with_suffix('.contact.png')} (LoRA in {api.work_dir_for(args.out)})")
    elif args.command == "train":
        paths = api.train(args.model, inputs, args.out, opts, cfg)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    elif args.command == "sample":
        api.sample(args.model, inputs, args.edited_first_frame, args.out, args.loras, opts, scfg)
        print(f"wrote {args.out} and {args.out.with_suffix('.contact.png')}")


def _mask(args: argparse.Namespace) -> None:
    from .masks import MaskRequest, make_masks

    req = MaskRequest(
        video=args.video, out=args.out, sam=args.sam, shape=args.shape, dilate=args.dilate, min_pixels=args.min_area,
        points=tuple((args.frame if f is None else f, x, y, label) for f, x, y, label in args.points),
        boxes=tuple((args.frame if f is None else f, box) for f, box in args.box), device=args.device,
        progress=not args.quiet)
    info = make_masks(req)
    if info["empty_frames"]:
        print(f"loraedit: note: {len(info['empty_frames'])} frame(s) have an empty mask (e.g. frame "
              f"{info['empty_frames'][0]}); `loraedit edit` refuses them unless --allow-empty-mask-frames",
              file=sys.stderr)
    print(f"wrote {args.out / 'masks'} ({info['frames']} PNGs), {args.out / 'preview.mp4'} and "
          f"{args.out / 'masks.json'} in {info['seconds']} s; use them with `loraedit edit --mask {args.out / 'masks'}`")


def _ui(args: argparse.Namespace) -> None:
    try:
        from .ui.app import serve
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        raise InputError("the web app needs Gradio: pip install 'loraedit[ui]'") from None
    from .ui.steps import AppConfig

    cache = args.cache_dir or default_cache_dir()
    cfg = AppConfig(model=args.model, work=args.work or default_cache_dir().parent / "ui", sam=args.sam,
                    caption=args.caption, cache_dir=cache, device=args.device)
    serve(cfg, host=args.host, port=args.port)


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import EvalConfig, EvalInputs, evaluate, format_table, run_suite, write_json

    cfg = EvalConfig(clip=args.clip, frame_set=args.frame_set, device=args.device, progress=not args.quiet,
                     deqa_json=args.deqa_json)
    if args.suite is not None:
        single = [f"--{n.replace('_', '-')}" for n in ("input", "output", "mask", "edited_first_frame", "reference")
                  if getattr(args, n) is not None]
        if single:
            raise InputError(f"--suite scores the cases in its folder: drop {', '.join(single)}")
        result = run_suite(args.suite, cfg, outputs=args.outputs)
        print(format_table(result["rows"], result["mean"]))
    else:
        given = (("--input", args.input), ("--output", args.output), ("--mask", args.mask))
        missing = [option for option, value in given if value is None]
        if missing:
            raise InputError(f"loraedit eval needs {', '.join(missing)} (or --suite DIR for a folder of cases)")
        inputs = EvalInputs(args.input, args.output, args.mask, args.edited_first_frame, args.reference)
        result = evaluate(inputs, cfg)
        print(format_table([result["metrics"] | {"case": args.output.name}]))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")


def _bench_quality(args: argparse.Namespace) -> None:
    import json

    from .api import load_backend
    from .quality import TOY_WORLD_TRAIN, QualityConfig, run_quality

    train = replace(TOY_WORLD_TRAIN, rank=args.rank, alpha=float(args.rank), learning_rate=args.lr,
                    stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                    timestep_sampling=args.timestep_sampling)
    if args.appearance_augment is not None:
        train = replace(train, appearance_augment=args.appearance_augment)
    if args.appearance_region is not None:
        train = replace(train, appearance_region=args.appearance_region)
    cfg = QualityConfig(scenarios=args.scenarios, seed=args.seed, level=args.level, train=train, steps=args.steps,
                        guidance=args.guidance, shift=args.shift, recolour_copies=args.recolour_copies,
                        first_block_cache=args.first_block_cache)
    if args.modes:
        cfg = replace(cfg, modes=args.modes)
    summary = run_quality(lambda: load_backend(args.model), cfg, args.out, progress=not args.quiet)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"modes": summary["modes"], "scenarios": summary["scenarios"]}, indent=1))
    print((args.out / "table.md").read_text())
    print(f"wrote {args.out}/quality.json, table.md, chart.png and sheets/ in {summary['seconds']} s")


def _quiet_libraries() -> None:
    """Keep the libraries' own warnings and loading bars out of the user's terminal."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    _quiet_libraries()
    debug = "--debug" in argv
    try:
        args = _apply_toml(parser, argv)
        run(args)
    except LoraEditError as exc:
        if debug:
            raise
        print(error_text(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("loraedit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment failure: one line, the traceback behind --debug
        if debug:
            raise
        print(f"loraedit: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
