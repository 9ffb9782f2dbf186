"""The command line's tool subcommands (bench, demo, mask, eval, ui, doctor, plan): their options and runners.

The three jobs (edit, train, sample) are in the package's `__init__`; each tool here adds its parser with
`add_*_parser(sub)` and runs from `run_*(args)` (doctor and plan are run by the package's `run`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..cache import default_cache_dir
from ..config import APPEARANCE_REGIONS, SAMPLERS, TIMESTEP_SAMPLING
from ..errors import InputError
from .options import parse_box, parse_caption, parse_modes, parse_point, parse_size, parse_train_size


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure the method: `bench quality` scores every mode against toy-world "
                       "ground truth")
    p.add_argument("which", choices=["quality"], help="quality: every mode on held-out toy-world scenarios")
    p.add_argument("--model", default="toy", help="model (default: the embedded toy model)")
    p.add_argument("--scenarios", type=int, default=12, help="held-out scenarios (default 12)")
    p.add_argument("--seed", type=int, default=0, help="which held-out scenarios (disjoint sets per seed)")
    p.add_argument("--level", type=int, choices=[0, 1, 2, 3], help="toy-world difficulty: 0 one speed, static "
                   "camera, 1 slow smooth motion, 2 adds spin/scale/occlusion/cards, 3 the first world (default: the "
                   "level the model was pretrained on, as its folder says; 3 where it says none)")
    p.add_argument("--json", type=Path, help="also write the summary JSON here")
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="folder for JSON, table, chart, contact "
                   "sheets (default docs/results)")
    p.add_argument("--stage1-steps", type=int, default=100, help="LoRA steps on the clip (default 100)")
    p.add_argument("--train-size", type=parse_train_size, metavar="WxH|F", help="train the motion LoRAs at this "
                   "smaller size or fraction of the world's, sample at the world's (default: the world's 96x96)")
    p.add_argument("--stage2-steps", type=int, help="LoRA steps with the edited later frame (default: 10 epochs, "
                   "100 steps)")
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (default 1e-3, the toy world's; "
                   "the authors' 1e-4 leaves its tiny model's LoRA undertrained, docs/RESULTS.md)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--targets", help="peft regex of the layers the LoRA adapts (default: the model's; e.g. "
                   r"'blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)' for attention only)")
    p.add_argument("--recolour-copies", type=int, default=0, help="appearance augmentation: recoloured copies "
                   "of the clip in mask-aware training (ours; default 0 = the paper)")
    p.add_argument("--appearance-augment", type=int, default=None, metavar="N", help="mask-aware training on N "
                   "recoloured versions of the clip, one drawn per step (ours; default: the toy world's setting)")
    p.add_argument("--appearance-region", choices=APPEARANCE_REGIONS, help="where --appearance-augment recolours "
                   "(default: the toy world's setting)")
    p.add_argument("--timestep-sampling", choices=TIMESTEP_SAMPLING, default="shifted",
                   help="LoRA training noise levels (default shifted by 3, the toy world's; the authors: uniform)")
    p.add_argument("--modes", type=parse_modes, help="comma-separated subset of the rows to run (default all: "
                   "no-lora,mask-no-lora,naive,mask-aware,mask-aware+frames,low-cost,mask-aware+paste,"
                   "codec-ceiling,static-first-frame); a lever study needs only naive,mask-aware")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--guidance", type=float, help="CFG scale (default: the model's own; 1 for the toy world, "
                   "5 for Wan)")
    p.add_argument("--shift", type=float, default=5.0, help="sampler flow shift (default 5)")
    p.add_argument("--sampler", choices=SAMPLERS, help="sampler (default: the model folder's own)")
    p.add_argument("--first-block-cache", type=float, default=0.0, metavar="T", help="sample every mode with "
                   "diffusers' First Block Cache at threshold T (default 0 = off)")
    p.add_argument("--taylorseer", type=int, default=0, metavar="N", help="sample every mode with diffusers' "
                   "TaylorSeer cache, the blocks run every N-th step (default 0 = off)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole method on a generated toy-world clip")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--model", default="toy", help="model (default: the embedded toy model)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")


def add_mask_parser(sub) -> None:
    p = sub.add_parser("mask", help="make edit masks: track a clicked object with SAM2, or interpolate key-frame boxes")
    p.add_argument("--video", type=Path, required=True, help="the input video (or folder of frames)")
    p.add_argument("--points", type=parse_point, nargs="+", action="extend", default=[], metavar="[N:]x,y[,label]",
                   help="clicks on the object in source-video pixels (label 1 = object, 0 = not; frame N default "
                   "--frame); needs --sam")
    p.add_argument("--box", type=parse_box, action="append", default=[], metavar="[N:]x0,y0,x1,y1",
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


def add_ui_parser(sub) -> None:
    p = sub.add_parser("ui", help="the web app: load a clip, make masks, train with a live loss curve, sample, "
                       "download (needs the ui extra: pip install 'loraedit[ui]')")
    p.add_argument("--model", default="toy", help="local diffusers Wan or HunyuanVideo-I2V folder, or 'toy' (default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                   "any other address needs --auth or --auth-file, or --insecure-no-auth)")
    p.add_argument("--auth", action="append", metavar="USER:PASSWORD", help="a login the page asks for (repeatable)")
    p.add_argument("--auth-file", type=Path, metavar="FILE", help="logins, one USER:PASSWORD a line (# comments)")
    p.add_argument("--insecure-no-auth", action="store_true", help="serve a non-loopback --host without a login "
                   "(only on a network you trust)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="GPU jobs at once (default 1; the "
                   "others wait in the queue, each beyond the first loads its own copy of the model)")
    p.add_argument("--max-upload-mb", type=int, metavar="MB", help="largest upload accepted (default: 2048 for "
                   "videos, 64 for images)")
    p.add_argument("--max-files", type=int, default=1000, metavar="N", help="most frame or mask images in one upload (PNGs, or a zip)")
    p.add_argument("--keep-hours", type=float, default=72.0, metavar="H", help="remove a session's folder (uploads "
                   "and results) after H hours unused, never while a job of it runs (default 72; 0: never)")
    p.add_argument("--port", type=int, help="port (default: 7860, or the next free one)")
    p.add_argument("--work", type=Path, help="folder for the sessions' uploads and results (default: ui/ beside "
                   "the encoded cache, ~/.cache/loraedit/ui)")
    p.add_argument("--sam", type=Path, help="local SAM2 (or SAM3 tracker) folder: click the object and it is tracked; "
                   "without it masks come from key-frame boxes or uploads")
    p.add_argument("--caption", type=parse_caption, metavar="florence2:DIR", help="local Florence-2 folder: a button "
                   "captions the first frame and the edited first frame")
    p.add_argument("--cache-dir", type=Path, help="encoded latents/embeddings cache (default: "
                   "~/.cache/loraedit/encoded)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_doctor_parser(sub) -> None:
    p = sub.add_parser("doctor", help="this machine as loraedit sees it: torch, CUDA, GPU, bf16/fp8, attention "
                       "kernels, host memory, cache disk, extras; each with what it means (loads nothing)")
    p.add_argument("--device", help="torch device to check (default: cuda if available, else cpu)")
    p.add_argument("--cache-dir", type=Path, help="encoded cache whose disk to check (default: "
                   "~/.cache/loraedit/encoded)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="what a run would do on a GPU, from the model folder's configs: tokens, steps, "
                       "memory and minutes per --memory-mode, the mode to use and why (loads nothing)")
    p.add_argument("--model", required=True, help="local diffusers Wan I2V folder (or toy, toy-wan2.2)")
    p.add_argument("--run", dest="run_command", default="edit", choices=["edit", "train", "sample"],
                   help="the command to plan (default edit: training, then sampling)")
    p.add_argument("--frames", type=int, nargs="+", help="frames, 4k+1; several give one row group each "
                   "(default: the model's, 49)")
    p.add_argument("--size", type=parse_size, help="WxH, multiples of 16 (default: the model's working size)")
    p.add_argument("--gpu", nargs="+", metavar="NAME", help="plan for these cards instead of the one here, assumed "
                   "empty (rtx4090, l40s, a100, h100, h200, ...; `loraedit plan --gpu x` lists them)")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help="free GPU memory to plan for (with --gpu: "
                   "instead of the card's; alone: a card of that size, without minutes)")
    p.add_argument("--low-cost", action="store_true", help="train on --low-cost-clip-frames clips")
    p.add_argument("--low-cost-clip-frames", type=int, default=13, help="clip length for --low-cost (default 13)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--stage1-steps", type=int, default=100, help="training steps on the clip (default 100)")
    p.add_argument("--stage2-steps", type=int, help="training steps with edited frames (default: 10 epochs, the "
                   "authors' 100 for one edited frame)")
    p.add_argument("--edited-frames", type=int, default=0, metavar="N", help="edited later frames (stage 2 runs "
                   "when N > 0)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--taylorseer", type=int, default=0, metavar="N", help="TaylorSeer every N-th step: only those "
                   "steps (and the first 3) count as full forwards (default 0 = off)")
    p.add_argument("--train-size", type=parse_train_size, metavar="WxH|F", help="train the motion at this size or "
                   "fraction of the working size (default: the working size)")
    p.add_argument("--fast", action="store_true", help="plan `--fast`'s settings (the options it sets that you "
                   "do not give)")
    p.add_argument("--guidance", type=float, help="CFG scale (default: the model's; above 1 means two forwards)")
    p.add_argument("--device", help="torch device whose GPU to plan for (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the plans as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_eval_parser(sub) -> None:
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


def run_mask(args: argparse.Namespace) -> None:
    from ..masks import MaskRequest, make_masks

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


def run_ui(args: argparse.Namespace) -> None:
    try:
        from ..ui.app import serve
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        raise InputError("the web app needs Gradio: pip install 'loraedit[ui]'") from None
    from ..ui.steps import AppConfig

    cache = args.cache_dir or default_cache_dir()
    from ..ui.access import Access, parse_login, read_auth_file

    logins = tuple(parse_login(text) for text in args.auth or ())
    if args.auth_file is not None:
        logins += read_auth_file(args.auth_file)
    cfg = AppConfig(model=args.model, work=args.work or default_cache_dir().parent / "ui", sam=args.sam,
                    caption=args.caption, cache_dir=cache, device=args.device, concurrency=args.concurrency,
                    max_upload_mb=args.max_upload_mb, max_files=args.max_files,
                    keep_hours=args.keep_hours)
    serve(cfg, host=args.host, port=args.port, access=Access(args.host, logins, args.insecure_no_auth))


def run_eval(args: argparse.Namespace) -> None:
    from ..evaluate import EvalConfig, EvalInputs, evaluate, format_table, run_suite, write_json

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


def run_bench_quality(args: argparse.Namespace) -> None:
    import json

    from ..api import load_backend
    from ..tools.quality import TOY_WORLD_TRAIN, QualityConfig, run_quality

    train = replace(TOY_WORLD_TRAIN, rank=args.rank, alpha=float(args.rank), learning_rate=args.lr,
                    stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                    timestep_sampling=args.timestep_sampling, train_size=args.train_size)
    if args.appearance_augment is not None:
        train = replace(train, appearance_augment=args.appearance_augment)
    if args.targets is not None:
        train = replace(train, targets=args.targets)
    if args.appearance_region is not None:
        train = replace(train, appearance_region=args.appearance_region)
    cfg = QualityConfig(scenarios=args.scenarios, seed=args.seed, level=args.level, train=train, steps=args.steps,
                        guidance=args.guidance, shift=args.shift, sampler=args.sampler, recolour_copies=args.recolour_copies,
                        first_block_cache=args.first_block_cache, taylorseer=args.taylorseer)
    if args.modes:
        cfg = replace(cfg, modes=args.modes)
    summary = run_quality(lambda: load_backend(args.model), cfg, args.out, progress=not args.quiet)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"modes": summary["modes"], "scenarios": summary["scenarios"]}, indent=1))
    print((args.out / "table.md").read_text())
    print(f"wrote {args.out}/quality.json, table.md, chart.png and sheets/ in {summary['seconds']} s")
