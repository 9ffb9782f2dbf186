"""`loraedit batch JOBS.toml`: the batch file read into jobs, and the command's options and output.

A batch file is TOML: an optional `[defaults]` table and one `[[job]]` table per edit. Every key is a long
option of `loraedit edit` (dashes or underscores, as in `edit --config`), read by that option's own parser
(`options.toml_option_values`), so the batch has no option list of its own; a job's keys win over the
defaults. `name` names a job (default: its output's stem). Relative paths are relative to the batch file,
so the batch runs the same from any folder and on any worker that sees the same files. A job that cannot
be read becomes a `BadJob` with its one-line error; the others still run.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from ..batch import BadJob, Job, counts, format_table, run_batch
from ..config import EditedFrame, ExtraLora
from ..errors import InputError, LoraEditError
from .options import add_edit_options, configs, preset_defaults, toml_option_values

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: Options a job must give (the command line's required ones, and the output: a default would collide).
REQUIRED = ("video", "mask", "edited_first_frame", "out")
#: `edit` options the batch decides for every job: jobs always resume and run without progress bars.
DECIDED_BY_BATCH = ("resume", "quiet", "dry_run", "debug")


def add_batch_parser(sub) -> None:
    p = sub.add_parser("batch", help="run a TOML file of edits as Ray tasks (one GPU each), resumable; needs the "
                       "batch extra: pip install 'loraedit[batch]'")
    p.add_argument("jobs", type=Path, metavar="JOBS.toml", help="[defaults] and one [[job]] table per edit; keys are "
                   "`loraedit edit`'s long options (video, mask, edited_first_frame, out, model, prompt, mode, "
                   "steps, ...), relative paths relative to the file")
    p.add_argument("--address", help="Ray cluster to run on (ray://HEAD:10001); default: start a local Ray "
                   "instance on this machine")
    p.add_argument("--retries", type=int, default=1, metavar="N", help="try a failed job (it raised, or its worker "
                   "died) up to N more times, from its last checkpoint (default 1; input errors are not retried)")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the local Ray instance (default: all); on a "
                   "machine without a GPU that is how many jobs run at once")
    p.add_argument("--dry-run", action="store_true", help="check every job and show which would run, which are "
                   "done and which are refused; nothing runs and Ray is not started")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run_batch_command(args: argparse.Namespace) -> None:
    """Read, check and run the batch; print the summary table; exit 1 if a job failed, 2 if one was refused."""
    if args.retries < 0:
        raise InputError(f"--retries {args.retries} is invalid: give 0 or more")
    if args.num_cpus is not None and (args.num_cpus < 1 or args.address):
        raise InputError(f"--num-cpus {args.num_cpus} is invalid: give at least 1" if args.num_cpus < 1 else
                         "--num-cpus sizes the local Ray instance: drop it with --address (the cluster has its own)")
    jobs = read_jobs(args.jobs)
    summary = summary_path(args.jobs)
    rows = run_batch(jobs, summary, address=args.address, retries=args.retries, num_cpus=args.num_cpus,
                     progress=not args.quiet, source=str(args.jobs), dry_run=args.dry_run)
    print(format_table(rows))
    seen = counts(rows)
    print(", ".join(f"{n} {status}" for status, n in seen.items()) +
          ("; dry run: nothing ran (drop --dry-run to run)" if args.dry_run else f"; wrote {summary}"))
    failed, invalid = seen.get("failed", 0), seen.get("invalid", 0)
    if failed:
        raise LoraEditError(f"{failed} of {len(rows)} jobs failed: see their errors above, fix them and run the same "
                            "command again (done jobs are skipped)")
    if invalid:
        raise InputError(f"{invalid} of {len(rows)} jobs were refused before running: fix them and run the same "
                         "command again (done jobs are skipped)")


def summary_path(jobs_file: Path) -> Path:
    """`<batch stem>.summary.json` beside the batch file."""
    return Path(jobs_file).with_suffix(".summary.json")


def read_jobs(path: Path) -> list[Job | BadJob]:
    """The batch file's jobs; one InputError when the file itself is unusable (missing, not TOML, no jobs)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"batch file {path} does not exist: check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"batch file {path} is not valid TOML ({exc}): fix its syntax") from None
    unknown = sorted(set(data) - {"defaults", "job"})
    if unknown:
        raise InputError(f"batch file {path} has top-level key(s) {', '.join(unknown)}: put options in [defaults] "
                         "or a [[job]] table")
    defaults, tables = data.get("defaults", {}), data.get("job")
    if not isinstance(defaults, dict):
        raise InputError(f"batch file {path}: defaults must be a table: write [defaults] above its options")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise InputError(f"batch file {path} has no jobs: add one [[job]] table per edit (video, mask, "
                         "edited_first_frame, out)")
    parser = argparse.ArgumentParser(prog="loraedit batch job", add_help=False)
    add_edit_options(parser)
    actions = {a.dest: a for a in parser._actions}  # noqa: SLF001 (argparse has no public API)
    return [read_job(path, i, defaults | table, actions) for i, table in enumerate(tables)]


def read_job(path: Path, index: int, table: dict, actions: dict[str, argparse.Action]) -> Job | BadJob:
    """One [[job]] table (merged over [defaults]) into a Job, or a BadJob with the first problem."""
    table = dict(table)
    out = table.get("out")
    name = table.pop("name", None)
    name = str(name) if name is not None else (Path(out).stem if isinstance(out, str) and out else f"job {index + 1}")
    where = f"batch file {path}, job {name!r}"
    try:
        decided = [k for k in table if k.replace("-", "_") in DECIDED_BY_BATCH]
        if decided:
            raise InputError(f"{where} sets {', '.join(decided)}, which the batch decides (jobs always resume and "
                             "run without progress bars): drop it")
        values = toml_option_values(actions, table, where, "edit")
        missing = [k for k in REQUIRED if k not in values]
        if missing:
            raise InputError(f"{where} has no {', '.join(missing)}: add {missing[0]} = \"...\" to it or to [defaults]")
        base = path.resolve().parent
        preset = preset_defaults(actions) if values.get("fast") else {}  # `fast = true`: the job's keys still win
        namespace = ({a.dest: a.default for a in actions.values()} | preset
                     | {k: _anchored(v, base) for k, v in values.items()})
        if (base / namespace["model"]).exists():  # a folder beside the batch file; otherwise a name or a path
            namespace["model"] = os.path.normpath(base / namespace["model"])
        args = argparse.Namespace(**namespace)
        inputs, opts, cfg, scfg = configs(args)
    except InputError as exc:
        return BadJob(name, "; ".join(exc.problems))
    return Job(name=name, model=str(args.model), inputs=inputs, edited_first_frame=args.edited_first_frame,
               out=args.out, opts=replace(opts, resume=True, progress=False), cfg=cfg, scfg=scfg)


def _anchored(value, base: Path):
    """Relative paths (also inside edited frames and extra LoRAs, and in lists) made relative to `base`."""
    if isinstance(value, Path):
        value = value.expanduser()
        return value if value.is_absolute() else Path(os.path.normpath(base / value))  # no "dir/../" in messages
    if isinstance(value, EditedFrame):
        return replace(value, image=_anchored(value.image, base),
                       mask=None if value.mask is None else _anchored(value.mask, base))
    if isinstance(value, ExtraLora):
        return replace(value, path=_anchored(value.path, base))
    if isinstance(value, list):
        return [_anchored(v, base) for v in value]
    return value
