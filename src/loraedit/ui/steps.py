"""The web app's input steps as plain functions over a `Session`: no Gradio here, so each is tested directly.

The clip (an uploaded video, a zip of frames, or the toy-world example with everything filled in), the edited
first frame and later frames, a ground truth for the metrics, and Florence-2 captions. Marking the object
(clicks, boxes, masks) is `prompts`; training and sampling are `jobs`; the values they share are `settings`.
Each step takes the session and what the user entered, does its work through the library and returns what
the page shows. Bad input raises `InputError` with a one-line message (the page shows it); nothing here
builds a path from a name the browser sent (see `session`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .. import masks, media
from ..api import EditedFrame
from ..errors import InputError
from .settings import AppConfig, Settings, default_settings, model_facts, whole_number
from .prompts import clip_frames
from .session import Session, store_frames_zip, store_upload

EXAMPLE_FPS = 8.0  # the toy world has no clock; 8 fps makes a 17-frame clip last two seconds


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


def _clip(video: Path, fps: float) -> Clip:
    count, height, width = clip_frames(str(video)).shape[:3]
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
    return generate(HELDOUT_SEED_BASE + whole_number(seed, "example seed", low=0), frames=facts.default_frames,
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
    frames = clip_frames(str(s.require_clip())).shape[0]
    index = whole_number(index, "edited frame index")
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
