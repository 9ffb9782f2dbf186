"""Marking the object on the clip: clicks (SAM2 points) and key-frame boxes drawn on an enlarged frame, the
masks made from them (`masks.make_masks`) or uploaded instead, and the prompts as `loraedit mask` options.

Clicks arrive in the shown image's pixels and are stored in the clip's own (`display_scale`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .. import masks, media
from ..errors import InputError
from .settings import BOX, OBJECT, AppConfig, whole_number
from .session import Session, store_frames_zip, store_mask_frames, store_upload

DISPLAY_PX = 384  # a frame to click on is enlarged to about this size (whole multiples, nearest)
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")


@functools.lru_cache(maxsize=4)
def clip_frames(path: str) -> np.ndarray:
    """A stored clip's frames as uint8 [T, H, W, 3] (stored files never change: their names are new)."""
    video, _ = media.read_video(path)
    return media.to_uint8(video)


def display_scale(s: Session) -> int:
    """How many times the frame to click on is enlarged: a small clip (the toy world's 96 px) would be a
    stamp to aim at, and the page reports clicks in the shown image's pixels, never enlarging it itself."""
    frames = clip_frames(str(s.require_clip()))
    return max(1, DISPLAY_PX // max(frames.shape[1], frames.shape[2]))


def frame_view(s: Session, index: int) -> np.ndarray:
    """Frame `index` of the clip, enlarged by `display_scale`, with this frame's prompts drawn on it: points,
    the box, a box's first corner."""
    from PIL import Image, ImageDraw

    frames = clip_frames(str(s.require_clip()))
    index = min(max(whole_number(index, "frame"), 0), frames.shape[0] - 1)
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
    frames = clip_frames(str(s.require_clip()))
    index = whole_number(index, "frame")
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
