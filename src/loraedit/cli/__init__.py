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
from pathlib import Path

from .. import __version__
from ..errors import InputError, LoraEditError, error_text
from . import batch, commands, multi_gpu
from .flags import FLAGS
from .options import (add_clip_options, add_edit_options, add_sample_options, add_train_options, configs,
                      preset_defaults, toml_option_values)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraedit", description="First-frame-guided video editing with mask-aware "
                                     "LoRA fine-tuning of an image-to-video model.")
    parser.add_argument("--version", action="version", version=f"loraedit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_edit_options(sub.add_parser("edit", help="train the LoRA on the clip, then generate the edit (the whole "
                                    "method)"))

    p = sub.add_parser("train", help="train the LoRA only (reuse it for any number of edited first frames)")
    add_clip_options(p)
    add_train_options(p)
    multi_gpu.add_train_option(p)
    p.add_argument("--out", type=Path, default=Path("out/lora"), help="output folder for lora.safetensors")

    p = sub.add_parser("sample", help="generate an edit with a trained LoRA (the fast path: no retraining)")
    add_clip_options(p)
    add_sample_options(p, with_lora=True)
    multi_gpu.add_sample_option(p)
    p.add_argument("--out", type=Path, default=Path("out/edit.mp4"), help="output mp4 (default out/edit.mp4)")

    for add in (commands.add_bench_parser, commands.add_mask_parser, commands.add_eval_parser,
                commands.add_ui_parser, commands.add_doctor_parser, commands.add_plan_parser,
                commands.add_demo_parser, multi_gpu.add_plan_gpus_parser, batch.add_batch_parser):
        add(sub)
    return parser


def _apply_toml(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv over two layers of defaults: `--fast`'s preset, then the values of `--config FILE.toml` (so
    the command line beats the file, and the file beats the preset)."""
    path = _config_path(argv)
    subparsers = parser._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no public API)
    command = next((a for a in argv if a in subparsers), None)
    if command is None:
        return parser.parse_args(argv)
    sub = subparsers[command]
    actions = {a.dest: a for a in sub._actions}  # noqa: SLF001
    values = {}
    if path is not None:
        try:
            table = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"config file {path} does not exist: check the path") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"config file {path} is not valid TOML ({exc}): fix its syntax") from None
        values = toml_option_values(actions, table, f"config file {path}", command)
    if "fast" in actions and ("--fast" in argv or values.get("fast")):
        sub.set_defaults(**preset_defaults(actions))
    for dest in values:
        actions[dest].required = False
    sub.set_defaults(**values)
    return parser.parse_args(argv)


def _config_path(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        from ..tools.demo import run_demo

        run_demo(args.out, model=args.model, progress=not args.quiet)
        return
    if args.command == "batch":
        batch.run_batch_command(args)
        return
    if args.command == "bench":
        commands.run_bench_quality(args)
        return
    if args.command == "mask":
        commands.run_mask(args)
        return
    if args.command == "eval":
        commands.run_eval(args)
        return
    if args.command == "ui":
        commands.run_ui(args)
        return
    if args.command == "plan":
        from ..plan import plan_command

        print(plan_command(args))
        return
    if args.command == "plan-gpus":
        print(multi_gpu.run_plan_gpus(args))
        return
    if args.command == "doctor":
        import json

        from .. import doctor

        rows = doctor.collect(args.device, args.cache_dir)
        print(json.dumps(doctor.as_json(rows), indent=1) if args.json else doctor.format_rows(rows))
        return
    with multi_gpu.job(args) as parallel:
        inputs, opts, cfg, scfg = configs(args)
        if args.dry_run:
            _dry_run(args, inputs, opts, cfg, scfg)
        else:
            _run_job(args, inputs, opts, cfg, scfg, parallel.writes)


def _run_job(args: argparse.Namespace, inputs, opts, cfg, scfg, prints: bool) -> None:
    """edit / train / sample; `prints`: this process says what it wrote (rank 0 of a torchrun job)."""
    from .. import api

    if args.command == "edit":
        api.edit(args.model, inputs, args.edited_first_frame, args.out, opts, cfg, scfg)
        print(f"wrote {args.out} and {args.out.with_suffix('.contact.png')} (LoRA in {api.work_dir_for(args.out)})")
    elif args.command == "train":
        paths = api.train(args.model, inputs, args.out, opts, cfg)
        if prints:
            print("wrote " + ", ".join(str(p) for p in paths.values()))
    elif args.command == "sample":
        api.sample(args.model, inputs, args.edited_first_frame, args.out, args.loras, opts, scfg)
        if prints:
            print(f"wrote {args.out} and {args.out.with_suffix('.contact.png')}")


def _dry_run(args: argparse.Namespace, inputs, opts, cfg, scfg) -> None:
    """The checks and the plan of edit / train / sample, with the paths api would give check_run."""
    from ..api import TRAINING_MODES, work_dir_for
    from ..api import dry_run

    if args.command == "train":
        kwargs = {"cfg": cfg, "train_dir": args.out}
    else:
        kwargs = {"scfg": scfg, "edited_first_frame": args.edited_first_frame, "video_out": args.out}
        if args.command == "sample":
            kwargs["loras"] = tuple(args.loras)
        else:
            kwargs |= {"cfg": cfg, "train_dir": work_dir_for(args.out) if opts.mode in TRAINING_MODES else None}
    print(dry_run(args.command, args.model, inputs, opts, **kwargs))


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
        print(error_text(exc, FLAGS), file=sys.stderr)  # settings worded as their flags
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
