"""How the web app was started (`AppConfig`), what the user set on the page (`Settings`) and what a job
hands back (`Result`), with the model's facts and the form fields' number parsing that every step shares.

No Gradio and no work here: `steps` (the clip, edited frames, captions), `prompts` (clicks, boxes, masks) and
`jobs` (train and sample) build on these. (The library's own settings are `loraedit.config`.)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import masks
from ..api import SampleConfig
from ..backends import ModelFolder, read_model_folder, resolve_model_dir
from ..config import TrainConfig
from ..errors import InputError

# Prompt tools: what a click on the frame means.
OBJECT, NOT_OBJECT, BOX = "click: on the object", "click: not the object", "box: two corners"


@dataclass(frozen=True)
class AppConfig:
    """How `loraedit ui` was started: the model, where sessions live, and the optional helper models."""

    model: str = "toy"
    work: Path = Path("loraedit-ui")
    sam: Path | None = None  # local SAM2 folder: click the object and it is tracked
    caption: Path | None = None  # local Florence-2 folder: captions on request
    cache_dir: Path | None = None  # encoded latents/embeddings and finished stage-1 LoRAs
    device: str | None = None
    concurrency: int = 1  # GPU jobs at once (each beyond the first loads its own copy of the model)
    max_upload_mb: int | None = None  # largest upload (None: uploads.py's per-kind limits)
    max_files: int = 1000  # most frame or mask images in one upload (PNGs, or a zip)
    keep_hours: float = 72.0  # a session unused this long is removed (0: never)

    @property
    def tools(self) -> tuple[str, ...]:
        """The prompt tools this app offers: clicks need the SAM2 tracker, boxes work without it."""
        return (OBJECT, NOT_OBJECT, BOX) if self.sam is not None else (BOX,)


@dataclass(frozen=True)
class Settings:
    """What the user set on the page; the defaults are the library's (the authors')."""

    frames: int | None = None  # None: the model's
    width: int | None = None
    height: int | None = None
    mode: str = "mask-aware"
    train_prompt: str = ""  # caption of the input's first frame ("": the caption of the edit, or Florence-2's)
    prompt: str = ""  # caption of the edited first frame
    stage1_steps: int = TrainConfig.stage1_steps
    stage2_steps: int | None = TrainConfig.stage2_steps  # None (an empty field): the authors' 10 epochs
    rank: int = TrainConfig.rank
    learning_rate: float = TrainConfig.learning_rate
    steps: int = SampleConfig.steps
    guidance: float | None = SampleConfig.guidance  # None (an empty field): the model's own
    seed: int = SampleConfig.seed
    negative_prompt: str = ""  # "": the model's own (Wan's standard list; the empty caption for the toy world)
    first_block_cache: float = SampleConfig.first_block_cache  # 0: exact sampling


@dataclass(frozen=True)
class Result:
    """One edited video and what goes with it."""

    video: Path
    side_by_side: Path  # input | output
    contact: Path  # input, mask, output rows
    report: Path
    metrics_json: Path
    loras: tuple[Path, ...]
    metrics: dict[str, float]
    prompts: dict[str, str] = field(default_factory=dict)  # the prompts the run used (captions included)
    seconds: float = 0.0
    bundle: Path | None = None  # a zip of the report with its video, side-by-side, contact sheet and metrics


@functools.lru_cache(maxsize=8)
def model_facts(model: str) -> ModelFolder:
    """The model folder's facts (working size, frames), read from its configs without loading it."""
    return read_model_folder(resolve_model_dir(model))


def check_config(cfg: AppConfig) -> ModelFolder:
    """Every problem with how the app was started (model, SAM2 and Florence-2 folders), at once, before it serves."""
    problems: list[str] = []
    facts = None
    try:
        facts = model_facts(cfg.model)
    except InputError as exc:
        problems += [f"--model: {p}" for p in exc.problems]
    if cfg.sam is not None:
        from ..sam2_tracker import folder_problems

        problems += folder_problems(cfg.sam)
    if cfg.caption is not None:
        from ..captions import folder_problems

        problems += folder_problems(cfg.caption)
    masks.require(problems)
    return facts


def default_settings(cfg: AppConfig) -> Settings:
    """The page's starting values: the model's frames and size, the authors' training and sampling."""
    facts = model_facts(cfg.model)
    return Settings(frames=facts.default_frames, width=facts.working_size[0], height=facts.working_size[1])


def whole_number(value, what: str, low: int | None = None) -> int:
    """A whole number from a form field (Gradio sends floats, or None for an empty field)."""
    try:
        number = float(value)
        whole = number.is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise InputError(f"{what} {value!r} is not a whole number: give one")
    number = int(number)
    if low is not None and number < low:
        raise InputError(f"{what} {number} is too small: give {low} or more")
    return number


def finite_number(value, what: str) -> float:
    """A finite number from a form field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number):
        raise InputError(f"{what} {value!r} is not a number: give one")
    return number
