"""Edit masks from a tracked outline or from boxes on key frames: the rules, the files, the preview.

Masks are [T, H, W] float32 in {0, 1}, 1 = the edit may change this pixel (white in the PNGs), the same
convention as `media`. Three ways to a mask video:

* `box_masks`: the authors' rule on a tracked outline. Every 8-connected component of a frame becomes
  its bounding box grown by 10% (5% of its width/height a side, at least one pixel), clipped to the
  frame; components under `min_pixels` (the authors': 50) are dropped as segmentation specks. A box
  leaves room for the edit to change the object's shape, which an outline would forbid.
* `dilate`: the exact outline grown by a disk of a chosen radius (a tight mask for edits that keep
  the shape: recolouring, retexturing).
* `interpolate_boxes` + `boxes_to_masks`: without a tracker, boxes drawn on a few key frames, linearly
  interpolated between them (held constant before the first and after the last).

Note on duplication: `toyworld/render.py` has its own `box_masks` (numpy, a minimum size as a fraction
of the frame) for the toy world's generated masks. It is owned by the toy world and imported there, so
it stays; `tests/test_masks.py` checks that both give identical masks on the same silhouettes, so the
two cannot drift apart unnoticed.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import media
from .errors import InputError

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels, x0 < x1, y0 < y1
AUTHORS_MIN_PIXELS = 50
OVERLAY_COLOUR = (1.0, -0.6, -0.6)  # red in [-1, 1]


# ---- the authors' box rule ----------------------------------------------------------------------------


def grow_box(y0: int, y1: int, x0: int, x1: int, height: int, width: int, grow: float = 0.10) -> tuple[int, ...]:
    """A component's pixel box [y0, y1) x [x0, x1) grown by `grow` of its size (half a side), >= 1 px, clipped."""
    gy = max(1, round(grow / 2 * (y1 - y0)))
    gx = max(1, round(grow / 2 * (x1 - x0)))
    return max(y0 - gy, 0), min(y1 + gy, height), max(x0 - gx, 0), min(x1 + gx, width)


def box_masks(outlines: torch.Tensor, min_pixels: float = AUTHORS_MIN_PIXELS, grow: float = 0.10) -> torch.Tensor:
    """[T, H, W] outlines -> [T, H, W] {0, 1}: per 8-connected component, its box grown by `grow` (see module)."""
    from scipy import ndimage  # slow to import; only the mask paths need it

    sil = outlines.detach().cpu().numpy() > 0.5
    frames, height, width = sil.shape
    out = np.zeros(sil.shape, dtype=np.float32)
    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal neighbours belong together
    for t in range(frames):
        labels, count = ndimage.label(sil[t], structure=structure)
        if not count:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        for i, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is None or sizes[i] < min_pixels:
                continue
            ys, xs = found
            y0, y1, x0, x1 = grow_box(ys.start, ys.stop, xs.start, xs.stop, height, width, grow)
            out[t, y0:y1, x0:x1] = 1.0
    return torch.from_numpy(out)


def dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Grow [T, H, W] masks by a disk of `radius` pixels (Euclidean: every pixel within `radius` of the mask)."""
    if radius <= 0:
        return (masks > 0.5).float()
    from scipy import ndimage

    out = []
    for frame in masks.detach().cpu().numpy() > 0.5:
        if not frame.any():
            out.append(np.zeros(frame.shape, dtype=np.float32))
            continue
        distance = ndimage.distance_transform_edt(~frame)  # distance of each pixel to the nearest mask pixel
        out.append((distance <= radius).astype(np.float32))
    return torch.from_numpy(np.stack(out))


# ---- key-frame boxes ----------------------------------------------------------------------------------


def interpolate_boxes(keys: Mapping[int, Box], frames: int) -> list[Box]:
    """One box per frame 0..frames-1: linear between key frames, the nearest key's box outside them."""
    if not keys:
        raise ValueError("interpolate_boxes needs at least one key frame")
    order = sorted(keys)
    boxes = []
    for t in range(frames):
        after = next((k for k in order if k >= t), order[-1])
        before = next((k for k in reversed(order) if k <= t), order[0])
        if after == before:
            boxes.append(tuple(float(v) for v in keys[before]))
            continue
        w = (t - before) / (after - before)  # 0 at `before`, 1 at `after`
        boxes.append(tuple((1 - w) * a + w * b for a, b in zip(keys[before], keys[after])))
    return boxes


def boxes_to_masks(boxes: list[Box], size: tuple[int, int]) -> torch.Tensor:
    """[T, H, W] masks with every pixel the box touches set: columns floor(x0)..ceil(x1)-1, clipped.

    Rounding outward means no pixel a box covers, even partly, is kept unedited.
    """
    width, height = size
    out = torch.zeros(len(boxes), height, width)
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        c0, c1 = max(math.floor(x0), 0), min(math.ceil(x1), width)
        r0, r1 = max(math.floor(y0), 0), min(math.ceil(y1), height)
        if c1 > c0 and r1 > r0:
            out[t, r0:r1, c0:c1] = 1.0
    return out


def box_problems(box: Box, size: tuple[int, int], what: str) -> list[str]:
    """Problems with a user's box on a frame of `size` = (width, height)."""
    x0, y0, x1, y1 = box
    width, height = size
    if not all(math.isfinite(v) for v in box):
        return [f"{what} {x0},{y0},{x1},{y1} has a value that is not a number: give x0,y0,x1,y1 in pixels"]
    if not (x0 < x1 and y0 < y1):
        return [f"{what} {x0:g},{y0:g},{x1:g},{y1:g} is empty: give the top-left corner first (x0 < x1, y0 < y1)"]
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return [f"{what} {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {width}x{height} video: give pixel "
                f"coordinates inside it"]
    return []


# ---- files a person looks at and `loraedit edit --mask` reads ----------------------------------------


def overlay(video: torch.Tensor, masks: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """[T, 3, H, W] in [-1, 1] with the mask region tinted red and its edge drawn solid."""
    m = (masks > 0.5).float().unsqueeze(1)  # [T, 1, H, W]
    colour = torch.tensor(OVERLAY_COLOUR).view(1, 3, 1, 1)
    tinted = video * (1 - alpha * m) + colour * (alpha * m)
    # edge: mask pixels with a non-mask neighbour (a 3x3 max-pool of the inverse picks them out)
    inside = torch.nn.functional.max_pool2d(1 - m, 3, stride=1, padding=1) * m
    return tinted * (1 - inside) + colour * inside


def write_mask_folder(folder: Path, masks: torch.Tensor) -> None:
    """Write one PNG per frame (white = edit) into `folder`, replacing any earlier masks there as a whole.

    The PNGs go into a temporary sibling folder that is renamed into place when complete, so `folder`
    never holds a mix of old and new masks (a reader takes every image in it as a frame).
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(2)}")
    try:
        for t in range(masks.shape[0]):
            media.write_image(tmp / f"{t:05d}.png", masks[t])
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(2)}")
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_preview(path: Path, video: torch.Tensor, masks: torch.Tensor, fps: float) -> None:
    """The overlay as an mp4 (input with the mask tinted), to check the masks at a glance."""
    media.write_video(path, overlay(video, masks), fps=fps)


def frame_problems(frame: int, frames: int, what: str) -> list[str]:
    if not 0 <= frame < frames:
        return [f"{what}: frame {frame} is outside the video (frames 0-{frames - 1}): give a frame index inside it"]
    return []


def require(problems: list[str]) -> None:
    if problems:
        raise InputError(*problems)


# ---- `loraedit mask` ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskRequest:
    """What `loraedit mask` was asked for; coordinates are pixels of the source video, frames its indices."""

    video: Path
    out: Path
    points: tuple[tuple[int, float, float, int], ...] = ()  # (frame, x, y, label: 1 object, 0 not the object)
    boxes: tuple[tuple[int, Box], ...] = ()  # (frame, box)
    sam: Path | None = None  # local SAM2 folder; None = key-frame boxes, interpolated
    shape: str = "box"  # with SAM2: "box" (the authors' rule) or "outline"
    dilate: float = 0.0  # with SAM2: grow the outline by this many pixels first
    min_pixels: float = AUTHORS_MIN_PIXELS  # with --shape box: drop smaller components
    device: str | None = None
    progress: bool = True


def make_masks(req: MaskRequest) -> dict:
    """Check everything, make the masks, write `out/masks/*.png`, `out/preview.mp4` and `out/masks.json`."""
    import json
    import time

    from . import diskspace

    started = time.perf_counter()
    # 1. Every input checked before a model loads, all problems at once.
    problems = _request_problems(req)
    video, fps = None, media.FOLDER_FPS
    try:
        video, fps = media.read_video(req.video)
    except InputError as exc:
        problems += [f"--video: {p}" for p in exc.problems]
    if video is not None:
        frames, size = video.shape[0], (video.shape[-1], video.shape[-2])
        for frame, x, y, _ in req.points:
            problems += frame_problems(frame, frames, f"--points {frame}:{x:g},{y:g}")
            if not (0 <= x < size[0] and 0 <= y < size[1]):
                problems.append(f"--points {frame}:{x:g},{y:g} lies outside the {size[0]}x{size[1]} video: give pixel "
                                "coordinates inside it")
        for frame, box in req.boxes:
            what = f"--box {frame}:{','.join(f'{v:g}' for v in box)}"
            problems += frame_problems(frame, frames, what) + box_problems(box, size, what)
    if req.sam is not None:
        from .sam2_tracker import folder_problems

        problems += folder_problems(req.sam)
    if Path(req.out).is_file():
        problems.append(f"--out {req.out} is a file: give a folder for the masks and the preview")
    elif why := diskspace.unwritable_reason(Path(req.out)):
        problems.append(f"--out {req.out}: cannot write there ({why}): choose a folder you can write to")
    require(problems)

    # 2. The masks: tracked outline -> (dilated) -> boxes, or key-frame boxes interpolated.
    info: dict = {"video": str(req.video), "frames": video.shape[0], "size": [video.shape[-1], video.shape[-2]],
                  "points": [list(p) for p in req.points], "boxes": [[f, list(b)] for f, b in req.boxes]}
    if req.sam is not None:
        from . import hf_folder
        from .sam2_tracker import Prompt, Sam2Tracker

        prompts = []
        for frame in sorted({f for f, *_ in req.points} | {f for f, _ in req.boxes}):
            box = next((b for f, b in req.boxes if f == frame), None)
            prompts.append(Prompt(frame, tuple((x, y, lab) for f, x, y, lab in req.points if f == frame), box))
        result = Sam2Tracker(req.sam, req.device).track(video, prompts, progress=req.progress)
        outline = dilate(result.outlines, req.dilate)
        masks = box_masks(outline, req.min_pixels) if req.shape == "box" else outline
        info.update(method=f"sam2 + {req.shape}", sam=str(req.sam), sam_fingerprint=hf_folder.fingerprint(req.sam),
                    dilate=req.dilate, min_pixels=req.min_pixels if req.shape == "box" else None,
                    seconds_per_frame=round(result.seconds_per_frame, 4))
    else:
        keys = dict(req.boxes)
        masks = boxes_to_masks(interpolate_boxes(keys, video.shape[0]), (video.shape[-1], video.shape[-2]))
        info.update(method="key-frame boxes, linear between key frames", key_frames=sorted(keys))

    # 3. The files: PNGs `loraedit edit --mask` reads, an overlay preview, and how they were made.
    out = Path(req.out)
    write_mask_folder(out / "masks", masks)
    write_preview(out / "preview.mp4", video, masks, fps)
    empty = [t for t in range(masks.shape[0]) if masks[t].sum() == 0]
    info.update(empty_frames=empty, seconds=round(time.perf_counter() - started, 2))
    with media.atomic_path(out / "masks.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return info


def _request_problems(req: MaskRequest) -> list[str]:
    problems = []
    if not req.points and not req.boxes:
        problems.append("loraedit mask needs a prompt: --points x,y (clicks on the object, with --sam) or --box "
                        "x0,y0,x1,y1 (on key frames, or as a prompt with --sam)")
    if req.sam is None:
        if req.points:
            problems.append("--points need the SAM2 tracker: pass --sam DIR (a local SAM2 folder), or draw --box "
                            "on key frames instead")
        if req.shape != "box" or req.dilate:
            problems.append("--shape outline and --dilate shape a tracked outline: pass --sam DIR, or drop them "
                            "(key-frame boxes are used as drawn)")
    if req.shape not in ("box", "outline"):
        problems.append(f"--shape {req.shape!r} is unknown: choose box (the authors' rule) or outline")
    if not (math.isfinite(req.dilate) and req.dilate >= 0):
        problems.append(f"--dilate {req.dilate} is invalid: give a radius in pixels >= 0")
    if not (math.isfinite(req.min_pixels) and req.min_pixels >= 0):
        problems.append(f"--min-area {req.min_pixels} is invalid: give a pixel count >= 0 (the authors': 50)")
    seen: dict[int, int] = {}
    for frame, _ in req.boxes:
        seen[frame] = seen.get(frame, 0) + 1
    twice = sorted(f for f, n in seen.items() if n > 1)
    if twice:
        problems.append(f"--box is given {seen[twice[0]]} times for frame {twice[0]}: give one box per frame (one "
                        "object; for several objects make masks per object and combine them)")
    for frame, x, y, label in req.points:
        if label not in (0, 1):
            problems.append(f"--points {frame}:{x:g},{y:g},{label}: the label must be 1 (on the object) or 0 (not)")
    return problems
