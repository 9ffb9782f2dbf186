"""The web app's GPU jobs over a `Session`: train and edit, sample with the trained LoRA; no Gradio here.

Every job runs on the process's resident model (`models.MODELS`): the first job loads the base, later ones
(any tab) reuse it, and the job leaves no LoRA on it. Training can be cancelled between steps
(`request_cancel`): it saves a checkpoint, and *Train and edit* with the same inputs and settings resumes
from it instead of starting over.
"""

from __future__ import annotations

import queue
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from .. import api, lora_checks, media
from ..api import ClipInputs, RunOptions, SampleConfig
from ..conditioning import TRAINING_MODES
from ..config import TrainConfig
from ..errors import Cancelled, InputError
from ..results import EditResult
from ..train import TrainProgress
from .history import Edit, repeat_command
from .models import MODELS, ModelHolder
from .session import Session, Trained, store_upload
from .settings import AppConfig, Result, Settings, finite_number, model_facts, whole_number

_CANCELS: dict[str, threading.Event] = {}  # by session id: set by the Cancel button, read between steps
_CANCELS_LOCK = threading.Lock()


def _cancel_flag(s: Session) -> threading.Event:
    with _CANCELS_LOCK:
        return _CANCELS.setdefault(s.id, threading.Event())


def start_job(s: Session) -> None:
    """A job was asked for (a click, before it waits in the queue): forget an earlier Cancel."""
    _cancel_flag(s).clear()


def request_cancel(s: Session) -> None:
    """Stop this session's job: a running training after its current step, a job still waiting in the queue
    as soon as its turn comes (it then ends without touching the model)."""
    _cancel_flag(s).set()


def forget(session_ids: list[str]) -> None:
    """Drop the cancel flags of sessions that are gone (`cleanup.remove_old_sessions`)."""
    with _CANCELS_LOCK:
        for session_id in session_ids:
            _CANCELS.pop(session_id, None)


def _check_not_cancelled(s: Session) -> None:
    if _cancel_flag(s).is_set():
        raise Cancelled("cancelled while waiting in the queue: nothing ran")


def train_and_edit(cfg: AppConfig, s: Session, settings: Settings,
                   on_step: Callable[[TrainProgress], None] | None = None, models: ModelHolder = MODELS) -> Result:
    """The whole method (`api.edit`) on the resident model: train the LoRA on the clip, then sample the edit.

    A run cancelled earlier with the same inputs and settings resumes from its checkpoint.
    """
    inputs, first, opts = _clip_inputs(s, settings), s.require_edited_first(), _run_options(cfg, settings)
    _check_not_cancelled(s)
    flag = _cancel_flag(s)
    plan = (inputs, first, settings)
    if s.cancelled is not None and s.cancelled[1] == plan:
        out, opts = s.cancelled[0], replace(opts, resume=True)
    else:
        out = s.next_result()
    s.cancelled = None

    def step(progress: TrainProgress) -> None:
        if on_step is not None:
            on_step(progress)
        if flag.is_set():
            raise Cancelled("cancelled before the first training step")

    started, tcfg, scfg = time.perf_counter(), _train_config(settings), _sample_config(settings)
    try:
        with models.use(cfg.model, cfg.device, opts.performance) as backend:
            made = api.edit(cfg.model, inputs, first, out, opts, tcfg, scfg, on_step=step, backend=backend)
    except Cancelled:
        if (api.work_dir_for(out) / "checkpoints").is_dir():
            s.cancelled = (out, plan)  # the next Train and edit with the same plan resumes
        raise
    if settings.mode in TRAINING_MODES:
        s.trained = Trained(inputs, made.loras, settings.mode)
    result = _result(s, inputs, made, time.perf_counter() - started)
    command = repeat_command(cfg.model, inputs, first, Path(out.name), opts, scfg, tcfg)
    s.edits.append(Edit(out, "train and edit", _summary(settings, tcfg), result.metrics, result.seconds, command))
    return result


def sample_with_lora(cfg: AppConfig, s: Session, settings: Settings, models: ModelHolder = MODELS) -> Result:
    """The fast path (`api.sample` on the resident model): the session's LoRA with the current edited first frame."""
    if s.trained is None:
        raise InputError("no trained LoRA in this session yet: click Train and edit first")
    first = s.require_edited_first()
    _check_not_cancelled(s)
    opts = replace(_run_options(cfg, settings), mode=s.trained.mode)
    started, out, scfg = time.perf_counter(), s.next_result(), _sample_config(settings)
    with models.use(cfg.model, cfg.device, opts.performance) as backend:
        made = api.sample(cfg.model, s.trained.inputs, first, out, list(s.trained.loras), opts, scfg, backend=backend)
    result = _result(s, s.trained.inputs, made, time.perf_counter() - started)
    command = repeat_command(cfg.model, s.trained.inputs, first, Path(out.name), opts, scfg, loras=s.trained.loras)
    s.edits.append(Edit(out, "sample with a LoRA", _summary(settings), result.metrics, result.seconds, command))
    return result


def _summary(settings: Settings, tcfg: TrainConfig | None = None) -> str:
    """The settings an edit was made with, in one line."""
    trained = (f"rank {tcfg.rank}, lr {tcfg.learning_rate:g}, {tcfg.stage1_steps}+"
               f"{'10 epochs' if tcfg.stage2_steps is None else tcfg.stage2_steps} training steps, ") if tcfg else ""
    return (f"{settings.mode}, {trained}{settings.steps} sampling steps, seed {settings.seed}, "
            f"prompt {settings.prompt.strip()!r}")


def train_in_thread(cfg: AppConfig, s: Session, settings: Settings, outcome: dict) -> Iterator[TrainProgress]:
    """Run `train_and_edit` in a thread and yield its progress as it comes (the newest when several
    arrived); `outcome` receives the result or the exception."""
    updates: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            outcome["result"] = train_and_edit(cfg, s, settings, on_step=updates.put)
        except BaseException as exc:  # noqa: BLE001 (handed to the page's error display)
            outcome["error"] = exc
        finally:
            updates.put(None)

    threading.Thread(target=work, name="loraedit-train", daemon=True).start()
    yield from _latest(updates)


def _latest(updates: queue.Queue) -> Iterator[TrainProgress]:
    """The newest progress report each time one or more arrived, until the worker's end mark (None)."""
    while True:
        item = updates.get()
        while item is not None and not updates.empty():
            newer = updates.get_nowait()
            if newer is None:
                yield item
                return
            item = newer
        if item is None:
            return
        yield item


def load_lora_files(cfg: AppConfig, s: Session, received: list[str | Path], settings: Settings) -> str:
    """LoRA file(s) from an earlier training (one per expert, in name order: lora, lora_2) become the session's,
    for *Sample* with the session's clip and masks; refused with the reason when they do not fit the model
    (`lora_checks.lora_file_problems`, from the headers, before any tensor is read)."""
    if not received:
        raise InputError("no LoRA file: upload lora.safetensors from an earlier training (and lora_2 for Wan2.2)")
    inputs = _clip_inputs(s, settings)  # the clip and masks to sample with must be there first
    ordered = sorted((Path(p) for p in received), key=lambda p: media.natural_key(p.name))
    stored = [store_upload(s, p, "uploaded-lora", "lora") for p in ordered]
    problems = lora_checks.lora_file_problems(model_facts(cfg.model), stored)
    if problems:
        for path in stored:
            path.unlink(missing_ok=True)
        named = []
        for problem in problems:  # the names the user sent, not the server's paths
            for path, sent in zip(stored, ordered, strict=True):
                problem = problem.replace(str(path), sent.name)
            named.append(problem.removeprefix("--lora: "))
        raise InputError(*named)
    mode = settings.mode if settings.mode in TRAINING_MODES else TRAINING_MODES[0]
    s.trained = Trained(inputs, tuple(stored), mode)
    return (f"LoRA {', '.join(p.name for p in ordered)} fits this model: *Sample with the trained LoRA* uses it "
            f"with this clip and masks ({mode})")


def _result(s: Session, inputs: ClipInputs, made: EditResult, seconds: float) -> Result:
    """What the page shows of a run (`api`'s `EditResult`: its files, LoRAs and prompts), with the metrics
    `loraedit eval` gives (against the ground truth too)."""
    from ..evaluate import EvalConfig, EvalInputs, evaluate

    paths = made.files
    scored = evaluate(EvalInputs(inputs.video, made.out, inputs.mask, s.edited_first, s.reference),
                      EvalConfig(progress=False))
    return Result(made.out, paths["side_by_side"], paths["contact"], paths["report"], paths["metrics"], made.loras,
                  scored["metrics"], made.prompts, round(seconds, 1), _bundle(paths))


def _bundle(paths: dict[str, Path]) -> Path:
    """The report page with the files it links (by their bare names) in one zip, beside them: the page is served
    as a download, never as a page, so it is read unzipped (the LoRA has its own download)."""
    out = paths["video"].with_suffix(".zip")
    with media.atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for path in paths.values():
            z.write(path, path.name)
    return out


def _clip_inputs(s: Session, settings: Settings) -> ClipInputs:
    size = None
    if settings.width or settings.height:
        size = (whole_number(settings.width, "width", low=1), whole_number(settings.height, "height", low=1))
    return ClipInputs(video=s.require_clip(), mask=s.require_masks(),
                      frames=whole_number(settings.frames, "frames", low=1) if settings.frames else None, size=size,
                      edited_frames=tuple(f for _, f in sorted(s.edited_frames.items())))


def _run_options(cfg: AppConfig, settings: Settings) -> RunOptions:
    return RunOptions(mode=settings.mode, prompt=settings.prompt.strip(),
                      train_prompt=settings.train_prompt.strip() or None, cache_dir=cfg.cache_dir, progress=False,
                      device=cfg.device, caption=cfg.caption)


def _train_config(settings: Settings) -> TrainConfig:
    return TrainConfig(rank=whole_number(settings.rank, "rank"), learning_rate=finite_number(settings.learning_rate, "learning rate"),
                       stage1_steps=whole_number(settings.stage1_steps, "stage-1 steps"),
                       stage2_steps=None if settings.stage2_steps is None else whole_number(settings.stage2_steps,
                                                                                     "stage-2 steps"))


def _sample_config(settings: Settings) -> SampleConfig:
    own = {"negative_prompt": settings.negative_prompt} if settings.negative_prompt.strip() else {}  # else the default
    if settings.guidance is not None and str(settings.guidance).strip():
        own["guidance"] = finite_number(settings.guidance, "guidance")
    if settings.first_block_cache:
        own["first_block_cache"] = finite_number(settings.first_block_cache, "first-block cache")
    return SampleConfig(steps=whole_number(settings.steps, "sampling steps"), seed=whole_number(settings.seed, "seed"), **own)


