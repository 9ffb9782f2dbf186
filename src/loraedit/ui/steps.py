"""The web app's steps as plain functions over a `Session`: no Gradio here, so each is tested directly.

Each step takes the session and what the user entered, does its work through the library (`api` for
training and sampling, `masks` for tracked or key-frame masks, `evaluate` for the metrics, `captions` for
Florence-2) and returns what the page shows. Bad input raises `InputError` with a one-line message (the page
shows it); nothing here builds a path from a name the browser sent (see `session`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import masks, media
from ..api import EditedFrame, SampleConfig
from ..backends import ModelFolder, read_model_folder, resolve_model_dir
from ..errors import InputError
from ..config import TrainConfig
from .session import Session, store_frames_zip, store_mask_frames, store_upload

EXAMPLE_FPS = 8.0  # the toy world has no clock; 8 fps makes a 17-frame clip last two seconds
DISPLAY_PX = 384  # a frame to click on is enlarged to about this size (whole multiples, nearest)
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")

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
class Clip:
    """A loaded clip as the page shows it."""

    video: Path
    frames: int
    info: str


@dataclass(frozen=True)
class Example:
    """The toy-world example: the clip, its masks, its edit, its captions and the settings it suits."""

    clip: Clip
    mask_preview: Path
    edited_first: Path
    edited_frames: str
    settings: Settings


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


# ---- the model --------------------------------------------------------------------------------------


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


# ---- the clip ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _frames(path: str) -> np.ndarray:
    """A stored clip's frames as uint8 [T, H, W, 3] (stored files never change: their names are new)."""
    video, _ = media.read_video(path)
    return media.to_uint8(video)


def _clip(video: Path, fps: float) -> Clip:
    count, height, width = _frames(str(video)).shape[:3]
    return Clip(video, count, f"{count} frames at {width}x{height}, {fps:g} fps")


def load_video(s: Session, received: str | Path) -> Clip:
    """An uploaded video becomes the session's clip; masks, prompts and edited frames of the last one go."""
    path = store_upload(s, received, "input", "video")
    _, fps = media.read_video(path)  # refuses an unreadable file now, not at training time
    s.video, s.masks, s.reference, s.edited_frames = path, None, None, {}
    s.clear_prompts()
    return _clip(path, fps)


def load_frames_zip(cfg: AppConfig, s: Session, received: str | Path) -> Clip:
    """A zip of frame images (a frames folder, zipped) becomes the session's clip, read at the folder rate."""
    folder = store_frames_zip(s, received, "frame", cfg.max_files)
    _, fps = media.read_video(folder)  # one size, readable images: refused now, not at training time
    s.video, s.masks, s.reference, s.edited_frames = folder, None, None, {}
    s.clear_prompts()
    return _clip(folder, fps)


def example_scenario(cfg: AppConfig, seed: int = 0):
    """Held-out toy-world scenario `seed` (never seen in pretraining) at the model's frames and size."""
    from ..toyworld.scenes import HELDOUT_SEED_BASE, generate

    facts = model_facts(cfg.model)
    return generate(HELDOUT_SEED_BASE + _int(seed, "example seed", low=0), frames=facts.default_frames,
                    size=facts.working_size)


def load_example(cfg: AppConfig, s: Session, seed: int = 0) -> Example:
    """Fill every input with a toy-world clip at the model's size (`example_scenario`): frames, box masks, the
    edited first frame (and a later one for a turning card), captions and the ground-truth edit for the metrics."""
    scenario = example_scenario(cfg, seed)
    folder = s.place(f"example-{s.bump()}")
    media.write_video(folder / "input.mp4", scenario.video, fps=EXAMPLE_FPS)
    media.write_video(folder / "ground_truth.mp4", scenario.edited_video, fps=EXAMPLE_FPS)
    masks.write_mask_folder(folder / "masks", scenario.box_masks)
    masks.write_preview(folder / "preview.mp4", scenario.video, scenario.box_masks, EXAMPLE_FPS)
    media.write_image(folder / "edited_first_frame.png", scenario.edited_first_frame)
    s.video, s.masks, s.reference = folder / "input.mp4", folder / "masks", folder / "ground_truth.mp4"
    s.edited_first, s.edited_frames = folder / "edited_first_frame.png", {}
    s.clear_prompts()
    if scenario.later_frame is not None:
        later = folder / f"edited_frame_{scenario.later_frame}.png"
        media.write_image(later, scenario.edited_later_frame)
        s.edited_frames[scenario.later_frame] = EditedFrame(scenario.later_frame, later)
    settings = replace(default_settings(cfg), train_prompt=scenario.caption, prompt=scenario.edited_caption)
    return Example(_clip(s.video, EXAMPLE_FPS), folder / "preview.mp4", s.edited_first,
                   edited_frames_text(s.edited_frames), settings)


# ---- prompts and masks ------------------------------------------------------------------------------


def display_scale(s: Session) -> int:
    """How many times the frame to click on is enlarged: a small clip (the toy world's 96 px) would be a
    stamp to aim at, and the page reports clicks in the shown image's pixels, never enlarging it itself."""
    frames = _frames(str(s.require_clip()))
    return max(1, DISPLAY_PX // max(frames.shape[1], frames.shape[2]))


def frame_view(s: Session, index: int) -> np.ndarray:
    """Frame `index` of the clip, enlarged by `display_scale`, with this frame's prompts drawn on it: points,
    the box, a box's first corner."""
    from PIL import Image, ImageDraw

    frames = _frames(str(s.require_clip()))
    index = min(max(_int(index, "frame"), 0), frames.shape[0] - 1)
    k = display_scale(s)
    image = Image.fromarray(frames[index]).resize((frames.shape[2] * k, frames.shape[1] * k), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    radius = max(3, min(image.size) // 60)
    for frame, x, y, label in s.points:
        if frame == index:
            draw.ellipse((k * x - radius, k * y - radius, k * x + radius, k * y + radius), outline="white",
                         fill=(0, 200, 0) if label else (230, 0, 0))
    if index in s.boxes:
        draw.rectangle(tuple(k * v for v in s.boxes[index]), outline=(255, 220, 0), width=max(2, radius // 2))
    if s.corner is not None and s.corner[0] == index:
        _, x, y = s.corner
        draw.line((k * x - radius, k * y, k * x + radius, k * y), fill=(255, 220, 0), width=2)
        draw.line((k * x, k * y - radius, k * x, k * y + radius), fill=(255, 220, 0), width=2)
    return np.asarray(image)


def click(cfg: AppConfig, s: Session, index: int, x: float, y: float, tool: str) -> np.ndarray:
    """A click on the shown frame `index` at (x, y) of `frame_view`'s image: a point on (or off) the object,
    or a box corner (two make a box); stored in the clip's own pixels."""
    frames = _frames(str(s.require_clip()))
    index = _int(index, "frame")
    k = display_scale(s)
    x, y = round(float(x) / k, 1), round(float(y) / k, 1)
    if tool not in cfg.tools:
        raise InputError(f"the tool {tool!r} is not available: use {' or '.join(cfg.tools)}"
                         + ("" if cfg.sam else " (clicks on the object need the app started with --sam DIR)"))
    if tool != BOX:
        s.points.append((index, x, y, 1 if tool == OBJECT else 0))
    elif s.corner is None or s.corner[0] != index:
        s.corner = (index, x, y)
    else:
        _, x0, y0 = s.corner
        box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
        s.corner = None
        masks.require(masks.box_problems(box, (frames.shape[2], frames.shape[1]), f"the box on frame {index}"))
        s.boxes[index] = box
    return frame_view(s, index)


def prompts_text(s: Session) -> str:
    """The prompts so far as `loraedit mask` options (what the app runs, and what a user can rerun)."""
    parts = [f"--points {f}:{x:g},{y:g},{label}" for f, x, y, label in s.points]
    parts += [f"--box {f}:" + ",".join(f"{v:g}" for v in box) for f, box in sorted(s.boxes.items())]
    if s.corner is not None:
        parts.append(f"(first corner of a box on frame {s.corner[0]}: click the opposite corner)")
    return "\n".join(parts) or "no prompts yet: click on the frame"


def make_masks(cfg: AppConfig, s: Session, shape: str = "box", dilate: float = 0.0) -> tuple[Path, str]:
    """Masks from the prompts (`masks.make_masks`): tracked with SAM2, or key-frame boxes interpolated.

    Returns the overlay preview and a one-line summary.
    """
    video = s.require_clip()
    if not s.points and not s.boxes:
        raise InputError("no prompts yet: " + ("click on the object, or " if cfg.sam else "") +
                         "draw a box (two clicks: opposite corners) on one or more key frames")
    out = s.place(f"tracked-{s.bump()}")
    request = masks.MaskRequest(video=video, out=out, points=tuple(s.points), boxes=tuple(sorted(s.boxes.items())),
                                sam=cfg.sam, shape=shape if cfg.sam else "box", dilate=dilate if cfg.sam else 0.0,
                                device=cfg.device, progress=False)
    info = masks.make_masks(request)
    s.masks = out / "masks"
    empty = f"; {len(info['empty_frames'])} frame(s) have an empty mask" if info["empty_frames"] else ""
    return out / "preview.mp4", f"{info['frames']} masks ({info['method']}) in {info['seconds']} s{empty}"


def load_masks(s: Session, received: list[str | Path], cfg: AppConfig = AppConfig()) -> tuple[Path, str]:
    """Uploaded masks (one mask video, or one PNG per frame) become the session's; returns the preview."""
    video = s.require_clip()
    if not received:
        raise InputError("no mask files: upload one mask video or one PNG per frame (white = edit)")
    if len(received) > cfg.max_files:
        raise InputError(f"{len(received)} mask files: this app takes at most {cfg.max_files} in one upload "
                         "(give one mask video instead)")
    s.masks = None
    if len(received) == 1 and Path(received[0]).suffix.lower() in VIDEO_SUFFIXES:
        path = store_upload(s, received[0], "masks", "mask")
    elif len(received) == 1 and Path(received[0]).suffix.lower() == ".zip":
        path = store_frames_zip(s, received[0], "mask-frame", cfg.max_files)
    else:
        path = store_mask_frames(s, received)
    frames, fps = media.read_video(video)
    found = media.read_masks(path)
    media.check_masks_match(found, frames, path.name)
    preview = s.place(f"mask-preview-{s.bump()}.mp4")
    size = (frames.shape[-1], frames.shape[-2])
    masks.write_preview(preview, frames, media.cover_crop(found, size, mode="nearest"), fps)
    s.masks = path
    return preview, f"{found.shape[0]} masks uploaded"


# ---- edited frames, ground truth, captions ----------------------------------------------------------


def load_edited_first(s: Session, received: str | Path) -> tuple[Path, str]:
    """The user's edit of the first frame. A ground truth from the example belongs to the example's edit, so
    it is dropped (the metrics against it would mean nothing); returns the stored image and a note."""
    path = store_upload(s, received, "edited-first-frame", "image")
    media.read_image(path)
    had_truth = s.reference is not None
    s.edited_first, s.reference = path, None
    return path, ("new edited first frame; the ground truth belonged to the previous edit, so the metrics will "
                  "compare with the input only" if had_truth else "new edited first frame")


def load_reference(s: Session, received: str | Path) -> str:
    """A ground-truth edited video: the metrics add PSNR/SSIM against it."""
    path = store_upload(s, received, "ground-truth", "video")
    media.read_video(path)
    s.reference = path
    return "ground truth loaded: the metrics will compare the result with it"


def add_edited_frame(s: Session, index: int, received_image: str | Path,
                     received_mask: str | Path | None = None) -> str:
    """An edited later frame (source frame `index`, optionally its own mask) for stage 2 of training."""
    frames = _frames(str(s.require_clip())).shape[0]
    index = _int(index, "edited frame index")
    if index == 0:
        raise InputError("frame 0 is the edited first frame: give a later frame's index (1 or more)")
    masks.require(masks.frame_problems(index, frames, f"edited frame {index}"))
    if received_image is None:
        raise InputError(f"no image for edited frame {index}: upload your edit of that frame")
    image = store_upload(s, received_image, f"edited-frame-{index}", "image")
    media.read_image(image)
    mask = store_upload(s, received_mask, f"edited-frame-{index}-mask", "mask") if received_mask else None
    s.edited_frames[index] = EditedFrame(index, image, mask)
    return edited_frames_text(s.edited_frames)


def clear_edited_frames(s: Session) -> str:
    s.edited_frames = {}
    return edited_frames_text(s.edited_frames)


def edited_frames_text(edited: dict[int, EditedFrame]) -> str:
    if not edited:
        return "no edited later frames (optional: they teach a side the first frame does not show)"
    return "edited later frames: " + ", ".join(
        f"frame {i}" + (" (own mask)" if f.mask else "") for i, f in sorted(edited.items()))


def captions(cfg: AppConfig, s: Session) -> tuple[str, str]:
    """Florence-2 captions of the clip's first frame (training) and of the edited first frame (sampling)."""
    if cfg.caption is None:
        raise InputError("no captioner: start the app with --caption florence2:DIR, or type the captions")
    from ..captions import Florence2Captioner

    captioner = Florence2Captioner(cfg.caption, cfg.cache_dir, cfg.device)
    first, _ = media.read_video(s.require_clip())
    train = captioner.caption(first[0])
    edited = captioner.caption(media.read_image(s.edited_first)) if s.edited_first is not None else ""
    captioner.free()
    return train, edited


def _int(value, what: str, low: int | None = None) -> int:
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


def _float(value, what: str) -> float:
    """A finite number from a form field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number):
        raise InputError(f"{what} {value!r} is not a number: give one")
    return number
