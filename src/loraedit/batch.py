"""`loraedit batch`: many edits, each checked up front, run as Ray tasks, resumable, summarised.

A batch is a list of `Job`s (what `loraedit edit` would run, one per output video). Before anything runs,
every job goes through the same `validate.check_run` the command line uses (no model loads), so a bad
job is reported in one line and the others still run. Jobs are then planned:

- done before: the output video, its metrics and its `<out>.batch.json` exist and the sidecar's key
  matches the job (its settings and the contents of its input files). Running the same command again
  after a crash or a failure therefore runs only what is missing or changed.
- stage-1 groups: jobs that train on the same clip with the same stage-1 settings share one stage-1 LoRA
  through the cache folder (`checkpoints.Stage1Cache`, keyed by content). The first job of a group runs
  alone; the others start when it is finished and find the LoRA there (train once, sample many). The
  group key is computed from paths and settings, not contents: a wrong grouping only costs time, since
  the cache itself is keyed by content.

Jobs always run with `--resume` semantics (a retried or re-run job continues from its checkpoint) and
without progress bars (the batch has its own, over jobs). Scheduling, retries and the Ray session are
`ray_batch`'s; this module knows loraedit's jobs and nothing of Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path

from . import report
from .config import TRAINING_MODES, ClipInputs, RunOptions, SampleConfig, TrainConfig
from .errors import InputError, LoraEditError

#: Test seam: a folder in which a file `<job name>.kill` makes the worker running that job SIGKILL itself
#: after its first training step (once: the file is removed first), as a pre-empted node or the kernel's
#: out-of-memory killer would. Unset (always, outside the tests), nothing is looked at.
KILL_DIR_ENV = "LORAEDIT_BATCH_KILL_DIR"

#: RunOptions fields that do not change a job's result (where it caches, how it shows progress, the device,
#: speed/memory settings that change nothing beyond rounding): left out of the job key.
_OPTS_NOT_IN_KEY = ("cache_dir", "progress", "resume", "device", "performance", "memory_check")


@dataclass(frozen=True)
class Job:
    """One edit of a batch: `loraedit edit`'s arguments, parsed (paths absolute, so any worker can use them)."""

    name: str
    model: str
    inputs: ClipInputs
    edited_first_frame: Path
    out: Path
    opts: RunOptions = RunOptions()
    cfg: TrainConfig = TrainConfig()
    scfg: SampleConfig = SampleConfig()


@dataclass(frozen=True)
class BadJob:
    """A job refused while reading the batch file (unknown option, bad value, missing input): its error."""

    name: str
    error: str


@dataclass(frozen=True)
class Planned:
    """A checked job that will run: its done-key (written beside the output when it succeeds) and its stage-1
    group (None: trains nothing, or shares with no one)."""

    index: int  # the job's place in the batch file (the summary keeps that order)
    job: Job
    key: str
    group: str | None


def sidecar_path(out: Path) -> Path:
    """`<out stem>.batch.json`: written last, after every output of the job, so it means 'done'."""
    return Path(out).with_suffix(".batch.json")


def row(name: str, status: str, *, out: Path | None = None, error: str = "", tries: int = 0,
        minutes: float | None = None, bg_psnr: float | None = None) -> dict:
    """One line of the summary (the table and the JSON): status is done, done before, failed or invalid."""
    return {"job": name, "status": status, "tries": tries, "minutes": minutes, "bg_psnr": bg_psnr,
            "out": None if out is None else str(out), "error": error}


# ---- checking and planning (the driver; nothing loads) -------------------------------------------------


def plan_jobs(jobs: list[Job | BadJob]) -> tuple[list[Planned], dict[int, dict]]:
    """Check every job as `loraedit edit` would; (the jobs to run, the summary row of each job not to run, by
    its index in `jobs`).

    Refused: jobs the batch file already refused, jobs `check_run` refuses (all their problems in one line),
    a name or an output used by an earlier job. Skipped: jobs done before with the same key.
    """
    from .api import work_dir_for
    from .validate import check_run

    planned: list[Planned] = []
    rows: dict[int, dict] = {}
    names: set[str] = set()
    outs: dict[Path, str] = {}
    for i, job in enumerate(jobs):
        if job.name in names:
            rows[i] = row(job.name, "invalid", error=f"job name {job.name!r} is used twice: give each job its own name")
            continue
        names.add(job.name)
        if isinstance(job, BadJob):
            rows[i] = row(job.name, "invalid", error=job.error)
            continue
        out = Path(job.out).resolve()
        if out in outs:
            rows[i] = row(job.name, "invalid", out=job.out, error=f"out {job.out} is also job {outs[out]!r}'s "
                          "output: give each job its own out")
            continue
        outs[out] = job.name
        trains = job.opts.mode in TRAINING_MODES
        try:
            run = check_run("edit", job.model, job.inputs, job.opts, cfg=job.cfg, scfg=job.scfg,
                            edited_first_frame=job.edited_first_frame, video_out=job.out,
                            train_dir=work_dir_for(job.out) if trains else None)
            key = job_key(job, run.model.fingerprint, run.frames, run.size)
        except LoraEditError as exc:
            rows[i] = row(job.name, "invalid", out=job.out, error=one_line(exc))
            continue
        except OSError as exc:  # an input read by the key but not by the checks (e.g. a folder's stray file)
            rows[i] = row(job.name, "invalid", out=job.out, error=f"cannot read an input of the job ({exc}): "
                          "check its files")
            continue
        before = done_before(job, key)
        if before is not None:
            rows[i] = before
            continue
        group = stage1_group(job, run.model.fingerprint, run.frames, run.size) if trains else None
        planned.append(Planned(i, job, key, group))
    return planned, rows


def one_line(exc: BaseException) -> str:
    """An error as one line: InputError's problems joined by '; ', anything else as its type and message."""
    if isinstance(exc, InputError):
        return "; ".join(" ".join(p.split()) for p in exc.problems)
    text = " ".join(str(exc).split())
    return text if isinstance(exc, LoraEditError) else f"{type(exc).__name__}: {text}"[:500]


def job_key(job: Job, model_fingerprint: str, frames: int, size: tuple[int, int]) -> str:
    """What makes the job's result: the model, its settings and the *contents* of its input files (paths left
    out, so moving the inputs does not re-run a job; a changed file does)."""
    opts = {f.name: getattr(job.opts, f.name) for f in fields(job.opts) if f.name not in _OPTS_NOT_IN_KEY}
    settings = {"model": model_fingerprint, "frames": frames, "size": list(size),
                "inputs": _with_digests(replace(job.inputs, frames=None, size=None)),
                "edited_first_frame": _digest(job.edited_first_frame), "opts": _plain(opts),
                "scfg": _with_digests(job.scfg)}
    if job.opts.mode in TRAINING_MODES:
        settings["cfg"] = _plain(asdict(job.cfg))
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]


def stage1_group(job: Job, model_fingerprint: str, frames: int, size: tuple[int, int]) -> str:
    """Jobs with the same value here train the same stage-1 LoRA (`checkpoints.Stage1Cache`'s inputs: model,
    clip, masks, mode and its condition, training prompt, stage-1 settings) into the same cache folder."""
    from .checkpoints import Stage1Cache

    o = job.opts
    train_prompt = o.train_prompt if o.train_prompt is not None else o.prompt
    cfg = {k: v for k, v in asdict(job.cfg).items() if k not in Stage1Cache._NOT_STAGE1}  # noqa: SLF001
    parts = [model_fingerprint, str(job.inputs.video), str(job.inputs.mask), frames, list(size), o.mode, o.low_cost,
             o.low_cost_clip_frames, o.mask_mode, o.clip_view, o.concept_token, train_prompt, str(o.caption),
             str(o.cache_dir), _plain(cfg)]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def done_before(job: Job, key: str) -> dict | None:
    """The summary row of a job whose outputs exist and whose sidecar holds this key, else None."""
    metrics_path = report.result_paths(job.out)["metrics"]
    try:
        record = json.loads(sidecar_path(job.out).read_text())
        metrics = json.loads(metrics_path.read_text())["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not Path(job.out).is_file() or not isinstance(record, dict) or record.get("key") != key:
        return None
    return row(job.name, "done before", out=job.out, tries=0, minutes=record.get("minutes"),
               bg_psnr=metrics.get("bg_psnr") if isinstance(metrics, dict) else None)


def _digest(path: Path | None) -> str | None:
    """sha256 of a file's bytes, or of a folder's files (names and bytes, in name order)."""
    if path is None:
        return None
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else "").encode() + b"\0")
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _with_digests(value):
    """A dataclass (or list/tuple/dict of them) as plain data, every Path replaced by its contents' digest."""
    if isinstance(value, Path):
        return _digest(value)
    if is_dataclass(value):
        return {f.name: _with_digests(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_with_digests(v) for v in value]
    if isinstance(value, dict):
        return {k: _with_digests(v) for k, v in value.items()}
    return value


def _plain(value):
    """JSON-able: paths as strings, tuples as lists (no file is read)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if is_dataclass(value):
        return _plain(asdict(value))
    return value


# ---- one job (a Ray worker) ---------------------------------------------------------------------------


def run_job(planned: Planned) -> dict:
    """Run one job as `loraedit edit --resume` would, then write its sidecar; never raises an Exception.

    The result is a summary row plus `retry`: whether running it again might help (not for an input error,
    which would fail the same way). A worker that dies (killed, out of memory, node lost) returns nothing;
    the scheduler counts that as a failed try to retry.
    """
    from . import api

    job, started = planned.job, time.perf_counter()

    def minutes() -> float:
        return round((time.perf_counter() - started) / 60, 3)

    try:
        api.edit(job.model, job.inputs, job.edited_first_frame, job.out, job.opts, job.cfg, job.scfg,
                 on_step=_kill_hook(job.name))
        metrics = json.loads(report.result_paths(job.out)["metrics"].read_text())["metrics"]
        report.write_json(sidecar_path(job.out), {"job": job.name, "key": planned.key, "minutes": minutes(),
                                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "metrics": metrics})
    except Exception as exc:  # noqa: BLE001 (every failure becomes the job's row; the batch goes on)
        return row(job.name, "failed", out=job.out, error=one_line(exc), minutes=minutes()) | {
            "retry": not isinstance(exc, InputError)}
    finally:
        _free_gpu_memory()
    return row(job.name, "done", out=job.out, minutes=minutes(), bg_psnr=metrics.get("bg_psnr")) | {"retry": False}


def _free_gpu_memory() -> None:
    """Hand the job's cached GPU blocks back, in case Ray runs another job in this worker."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _kill_hook(name: str):
    """`on_step` for `api.edit` that kills this process once (`KILL_DIR_ENV`); None when the seam is off."""
    folder = os.environ.get(KILL_DIR_ENV)
    if not folder:
        return None
    marker = Path(folder) / f"{name}.kill"

    def on_step(progress) -> None:
        if progress.done >= 1 and marker.is_file():
            marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


# ---- the summary --------------------------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
    """The summary as a fixed-width table (job, status, tries, minutes, background PSNR, output), then one line
    per job that did not finish, with its error."""
    head = ("job", "status", "tries", "minutes", "bg PSNR", "output")
    lines = [(r["job"], r["status"], str(r["tries"]) if r["tries"] else "-",
              f"{r['minutes']:.2f}" if r["minutes"] is not None else "-",
              f"{r['bg_psnr']:.2f} dB" if r["bg_psnr"] is not None else "-", r["out"] or "-") for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *lines)]
    text += [f"{r['job']}: {r['status']}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(text)


def counts(rows: list[dict]) -> dict[str, int]:
    """How many jobs ended in each status (the summary's last line and its JSON)."""
    found: dict[str, int] = {}
    for r in rows:
        found[r["status"]] = found.get(r["status"], 0) + 1
    return found


def write_summary(path: Path, rows: list[dict], info: dict) -> None:
    """The summary JSON (atomically: a reader never sees half of it), rewritten as each job ends."""
    report.write_json(path, info | {"counts": counts(rows), "jobs": rows})


# ---- the whole batch ----------------------------------------------------------------------------------


def run_batch(jobs: list[Job | BadJob], summary: Path, *, address: str | None = None, retries: int = 1,
              num_cpus: int | None = None, progress: bool = True, source: str = "",
              dry_run: bool = False) -> list[dict]:
    """Check and plan every job, run the rest on Ray (`ray_batch`), keep `summary` (JSON) current as each job
    ends; the summary rows in batch-file order. Ray is not started when nothing is left to run. `dry_run`:
    only check and plan (the rows say "would run"; nothing is written)."""
    from .ray_batch import Item, ray_session, run_tasks

    started = time.perf_counter()
    planned, rows = plan_jobs(jobs)
    for p in planned:
        rows[p.index] = row(p.job.name, "would run" if dry_run else "pending", out=p.job.out)
    if dry_run:
        return [rows[i] for i in sorted(rows)]
    info = {"batch": source, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "retries": retries, "ray": None}

    def save() -> None:
        write_summary(summary, [rows[i] for i in sorted(rows)], info | {
            "seconds": round(time.perf_counter() - started, 1)})

    save()
    if planned:
        by_name = {p.job.name: p for p in planned}
        with ray_session(address, num_cpus) as session:
            info["ray"] = asdict(session)

            def ended(item: Item, result: dict) -> None:
                p = by_name[item.name]
                rows[p.index] = row(p.job.name, result["status"], out=p.job.out) | result
                save()

            run_tasks([Item(p.job.name, p, p.group) for p in planned], run_job, session, retries=retries,
                      progress=progress, on_result=ended)
    save()
    return [rows[i] for i in sorted(rows)]
