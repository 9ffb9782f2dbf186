"""Every input of a run checked up front, before any model loads, with every problem reported at once.

An edit is an hour of GPU time: a mask that does not match the video, found after the 14B model has
loaded and the encoders have run, wastes it. `check_run` reads the user's files once (the fitted tensors
it returns are what `api` works from), checks them against each other and against the model folder's
configs (the family's folder reader: no weights are loaded), and raises one `InputError` whose problems each
name the file or option and the fix.

Decisions about masks (frames after the first only: frame 0 is replaced whole by the edited first frame,
so its mask is never used). They are checked after fitting (resampling and centre-cropping), because
that is what the model sees: a mask that only touches the cropped-away border is empty.
- No edited pixel in any frame: always an error, there is nothing to edit.
- No edited pixel in some frames: an error unless --allow-empty-mask-frames. An object may leave the
  picture, but an empty mask far more often means a broken mask export, and the result would then show
  the unedited object in those frames.
- Every pixel edited in a frame: an error unless --allow-full-mask-frames. Nothing of that frame is kept,
  so the method falls back to plain image-to-video there (no background to follow).
- An edited later frame whose mask is empty: always an error (the sample would teach nothing).
An edited image (first or later frame) of another aspect ratio than the video is cover-cropped with a
note saying exactly how; --strict refuses it instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import diskspace, media, plan
from .backends import ModelFolder, read_model_folder, resolve_model_dir
from .checkpoints import latest_checkpoint
from .config import TRAINING_MODES, ClipInputs, RunOptions, SampleConfig, TrainConfig
from .errors import InputError
from .findings import Findings
from .lora_checks import check_extra_loras, check_loras, lora_params
from .option_checks import check_options


@dataclass
class Clip:
    """The fitted clip: frames, edit masks, and the source arrays for edited-frame lookups."""

    video: torch.Tensor  # [T, 3, H, W]
    masks: torch.Tensor  # [T, H, W]
    fps: float
    source_video: torch.Tensor = field(repr=False)
    source_masks: torch.Tensor = field(repr=False)


@dataclass(frozen=True)
class FittedEditedFrame:
    """An edited later frame fitted to the working size, with the source frame and mask it edits."""

    index: int  # frame index in the source video
    frame: torch.Tensor  # [3, H, W] the unedited source frame
    image: torch.Tensor  # [3, H, W] the user's edit of it
    mask: torch.Tensor  # [H, W] its edit region
    caption: str | None = None  # what the edited frame shows (stage 2's prompt); None: the training prompt


@dataclass
class CheckedRun:
    """Everything a run needs from the user's files, read once and checked."""

    model: ModelFolder
    frames: int
    size: tuple[int, int]  # (width, height)
    clip: Clip
    window: int  # frames sampled at once (the model's window or --window); frames > window: chained windows
    edited_first_frame: torch.Tensor | None  # [3, H, W] fitted; None when not sampling
    edited_frames: tuple[FittedEditedFrame, ...]
    notes: tuple[str, ...]  # how inputs were fitted, for the user to read
    train_size: tuple[int, int] | None = None  # where the motion samples train (--train-size resolved); None: size


def check_run(command: str, model: str | os.PathLike, inputs: ClipInputs, opts: RunOptions, *,
              cfg: TrainConfig | None = None, scfg: SampleConfig | None = None,
              edited_first_frame: Path | None = None, loras: tuple[Path, ...] = (),
              video_out: Path | None = None, train_dir: Path | None = None) -> CheckedRun:
    """Check every input of `loraedit {command}`; raise one InputError listing every problem.

    `cfg` is given when the run trains, `scfg` when it samples; `video_out` is the output video,
    `train_dir` the folder that receives the LoRA and checkpoints.
    """
    found = Findings()
    # 1. Options that need no file.
    check_options(found, command, inputs, opts, cfg, scfg, loras)
    # 2. The model folder, from its configs.
    folder = found.attempt(read_model_folder, resolve_model_dir(model))
    # 3. Frame count and size against the model's constraints.
    frames, size = _check_geometry(found, inputs, folder)
    train_size = _check_train_size(found, cfg, size, folder.size_multiple if folder else 16)
    window = _check_window(found, opts, scfg, folder, frames)
    # 4. The clip: video, masks, their match, enough frames, masks that leave something to edit and keep.
    source, clip = _check_clip(found, inputs, frames, size)
    # 5. Edited images: the first frame (sampling) and later frames (stage 2 of training).
    first = None
    if edited_first_frame is not None:
        first = _check_edited_image(found, Path(edited_first_frame), "--edited-first-frame", source, size,
                                    inputs.strict)
    edited = _check_edited_frames(found, inputs, source, clip, size)
    # 6. LoRA: the given files against the model (sampling), or the LoRA to train (its size, for the disk).
    params = 0
    if folder is not None and command == "sample" and opts.mode in TRAINING_MODES and loras:
        check_loras(found, folder, [Path(p) for p in loras])
    if folder is not None and scfg is not None and scfg.extra_loras:
        check_extra_loras(found, folder, scfg)
    if folder is not None and cfg is not None and train_dir is not None and not found.problems:
        params = lora_params(found, folder, cfg)
    # 7. Where the run writes: writable, no stale checkpoint, enough free disk.
    _check_outputs(found, command, opts, video_out, train_dir)
    if not found.problems:
        found.problems.extend(diskspace.disk_problems(
            folder, frames, size, len(inputs.edited_frames), cache_dir=opts.cache_dir,
            train_dir=train_dir if params else None, lora_params=params, video_out=video_out))
    # 8. GPU memory: the modelled peak of this run against the GPU's free memory (nothing on a CPU).
    if not found.problems and opts.memory_check:
        shape = plan.shape_for(folder, command, min(frames, window), size, opts, cfg, scfg, len(edited), train_size)
        found.problems.extend(plan.gpu_memory_problems(folder, shape, opts.performance.memory_mode, opts.device))
    if found.problems:
        raise InputError(*found.problems)
    return CheckedRun(folder, frames, size, clip, window, first, edited, tuple(found.notes), train_size)


# ---- 3. geometry --------------------------------------------------------------------------------------


def _check_geometry(found: Findings, inputs: ClipInputs,
                    folder: ModelFolder | None) -> tuple[int | None, tuple[int, int] | None]:
    """(frames, size) to work at, or None for whichever is wrong or unknown (no model)."""
    # None means "the model's"; 0 or a negative number is a wrong value, reported below, never "unset"
    frames = inputs.frames if inputs.frames is not None else (folder.default_frames if folder else None)
    size = inputs.size if inputs.size is not None else (folder.working_size if folder else None)
    step = folder.temporal_factor if folder else 4
    multiple = folder.size_multiple if folder else 16
    if frames is not None and frames < step + 1:
        found.problems.append(f"--frames {frames} is too few: a video edit needs at least {step + 1} frames "
                              f"({step}k+1): use e.g. {step + 1} or {folder.default_frames if folder else 49}")
        frames = None
    elif frames is not None and (frames - 1) % step:
        low = (frames - 1) // step * step + 1
        found.problems.append(f"--frames {frames} is not {step}k+1 (the VAE packs time by {step}): use {low} or "
                              f"{low + step}")
        frames = None
    if size is not None and (min(size) <= 0 or size[0] % multiple or size[1] % multiple):
        fix = "x".join(str(max(multiple, v // multiple * multiple)) for v in size)
        found.problems.append(f"--size {size[0]}x{size[1]} is not a multiple of {multiple} on both sides (VAE "
                              f"factor x transformer patch): use e.g. {fix}")
        size = None
    return frames, size


def _check_train_size(found: Findings, cfg: TrainConfig | None, size: tuple[int, int] | None,
                      multiple: int) -> tuple[int, int] | None:
    """--train-size resolved (a fraction of the working size, or WxH) and checked: smaller than the working size
    on both sides, its aspect, a multiple of the model's step. None: train at the working size."""
    if cfg is None or cfg.train_size is None or size is None:
        return None
    sw, sh = size
    half = "x".join(map(str, media.scaled_size(size, 0.5, multiple)))
    if isinstance(cfg.train_size, (int, float)) and not 0 < cfg.train_size <= 1:
        found.problems.append(f"--train-size {cfg.train_size:g} is not a fraction of the working size in (0, 1]: "
                              "use e.g. 0.5")
        return None
    w, h = media.resolve_size(cfg.train_size, size, multiple)
    if min(w, h) <= 0 or w % multiple or h % multiple:
        found.problems.append(f"--train-size {w}x{h} is not a multiple of {multiple} on both sides: use e.g. {half}")
    elif w > sw or h > sh:
        found.problems.append(f"--train-size {w}x{h} is larger than the working size {sw}x{sh}: it trains the motion "
                              f"at a smaller size, e.g. {half}")
    elif abs(w * sh - h * sw) > multiple * max(sw, sh):  # within one size step of the working aspect
        found.problems.append(f"--train-size {w}x{h} has another aspect ratio than the working size {sw}x{sh}: "
                              f"use e.g. {half}")
    else:
        return None if (w, h) == (sw, sh) else (w, h)
    return None


def _check_window(found: Findings, opts: RunOptions, scfg: SampleConfig | None, folder: ModelFolder | None,
                  frames: int | None) -> int | None:
    """The frames sampled at once: --window or the model's; a longer clip is edited window by window."""
    window = opts.window if opts.window is not None else (folder.window_frames if folder else None)
    if window is not None and (window < 5 or (window - 1) % 4):
        found.problems.append(f"--window {window} is not 4k+1 and at least 5: use e.g. "
                              f"{folder.window_frames if folder else 81}")
        return None
    if frames is None or window is None or frames <= window:
        return window
    overlap = scfg.window_overlap if scfg is not None else 1
    if not 1 <= overlap <= window - 4:
        found.problems.append(f"--window-overlap {overlap} is invalid: give 1..{window - 4} frames (each window "
                              "must generate at least one latent frame)")
    found.notes.append(f"{frames} frames in windows of {window}: one LoRA over overlapping windows, then each "
                       f"window sampled from the last {overlap} frame(s) of the one before")
    return window


# ---- 4. the clip --------------------------------------------------------------------------------------


def _check_clip(found: Findings, inputs: ClipInputs, frames: int | None,
                size: tuple[int, int] | None) -> tuple[torch.Tensor | None, Clip | None]:
    """(the source video if readable, the fitted clip if everything about it is right)."""
    read = found.attempt(media.read_video, inputs.video, option="--video")
    masks = found.attempt(media.read_masks, inputs.mask, option="--mask")
    video, fps = read if read is not None else (None, 0.0)
    if video is None:
        return None, None
    n = video.shape[0]
    if n == 1:
        found.problems.append(f"--video {inputs.video} has only 1 frame: an edit needs a video of at least 5 "
                              "frames (an image is edited by the image editor alone)")
        return video, None
    if frames is not None and n < frames:
        asked = f"--frames {frames}" if inputs.frames else f"the model's default of {frames} frames"
        found.problems.append(f"--video {inputs.video} has {n} frames, fewer than {asked}: pass --frames "
                              f"{media.largest_valid_frame_count(n)} (frames are never duplicated)")
        return video, None
    if masks is None or not found.passes(media.check_masks_match, masks, video, inputs.mask):
        return video, None
    if frames is None or size is None:
        return video, None
    indices = media.uniform_frame_indices(video.shape[0], frames)
    clip = Clip(media.prepare_video(video, frames, size), media.prepare_masks(masks, frames, size),
                fps * (frames - 1) / (video.shape[0] - 1), video, masks)
    found.problems.extend(mask_coverage_problems(clip.masks, masks, indices, size, inputs.mask,
                                                 inputs.allow_empty_mask_frames, inputs.allow_full_mask_frames))
    return video, clip


def mask_coverage_problems(fitted: torch.Tensor, source: torch.Tensor, indices: list[int], size: tuple[int, int],
                           mask_path: Path, allow_empty: bool = False, allow_full: bool = False) -> list[str]:
    """Problems with the fitted masks [T, H, W] of frames after the first (see the module docstring).

    `source` are the masks as read and `indices` the source frame of each fitted one, so messages name
    the user's frame numbers and say when only the centre crop left a frame empty.
    """
    area = fitted[1:].flatten(1).mean(1)
    empty = [indices[i + 1] for i in torch.nonzero(area == 0).flatten().tolist()]
    full = [indices[i + 1] for i in torch.nonzero(area == 1).flatten().tolist()]
    where = f"after fitting to {size[0]}x{size[1]}"
    cropped = [i for i in empty if source[i].sum() > 0]
    why = f"; in source frames {_frame_list(cropped)} the region lies outside the centre crop" if cropped else ""
    if len(empty) == len(indices) - 1:
        return [f"--mask {mask_path} marks no pixel to edit in any frame ({where}{why}): white (or opaque alpha) "
                "marks the region the edit may change"]
    problems = []
    if empty and not allow_empty:
        problems.append(f"--mask {mask_path} marks nothing to edit in {len(empty)} of {len(indices) - 1} frames after "
                        f"the first (source frames {_frame_list(empty)}, {where}{why}): fix those masks, or pass "
                        "--allow-empty-mask-frames if the object really leaves the picture")
    if full and not allow_full:
        problems.append(f"--mask {mask_path} marks every pixel of {len(full)} frame(s) (source frames "
                        f"{_frame_list(full)}, {where}): nothing of them is kept for the edit to follow; fix those "
                        "masks, or pass --allow-full-mask-frames if the edit really fills them")
    return problems


def _frame_list(indices: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def _aspect_differs(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """True when two [..., H, W] shapes differ in aspect ratio by more than 1% (see check_masks_match)."""
    return abs((a[-1] / a[-2]) / (b[-1] / b[-2]) - 1.0) > 0.01


# ---- 5. edited images ---------------------------------------------------------------------------------


def _check_edited_image(found: Findings, path: Path, what: str, source: torch.Tensor | None,
                        size: tuple[int, int] | None, strict: bool) -> torch.Tensor | None:
    """Read an edited image; note (or, under --strict, refuse) a fit that crops it. Returns it fitted."""
    image = found.attempt(media.read_image, path, option=what)
    if image is None or source is None:
        return None
    (_, h, w), (rh, rw) = image.shape, source.shape[-2:]
    if _aspect_differs(image.shape, source.shape):
        target = size or (rw, rh)  # with a wrong --size (reported already), describe the fit to the video's
        fit_w, fit_h = media.cover_size((w, h), target)
        cut = (f"{fit_w - target[0]} px cut from the left and right" if fit_w > target[0]
               else f"{fit_h - target[1]} px cut from the top and bottom")
        how = f"resized to {fit_w}x{fit_h} and centre-cropped to {target[0]}x{target[1]} ({cut})"
        if strict:
            found.problems.append(f"{what} {path} is {w}x{h} but the video is {rw}x{rh}, another aspect ratio "
                                  f"(--strict): give it the video's aspect ratio, or drop --strict to have it {how}")
            return None
        found.notes.append(f"{what} {path} is {w}x{h}, the video {rw}x{rh}: it is {how}; pass --strict to refuse "
                           "such inputs instead")
    return media.cover_crop(image, size) if size is not None else None


def _check_edited_frames(found: Findings, inputs: ClipInputs, source: torch.Tensor | None, clip: Clip | None,
                         size: tuple[int, int] | None) -> tuple[FittedEditedFrame, ...]:
    """Each --edited-frame: a later frame of the video, given once, a readable image, a mask with an edit."""
    fitted, seen = [], set()
    for ef in inputs.edited_frames:
        option = f"--edited-frame {ef.index}"
        if ef.index in seen:
            found.problems.append(f"{option} is given twice: give each edited frame once")
            continue
        seen.add(ef.index)
        n = source.shape[0] if source is not None else None
        if n is not None and not 0 < ef.index < n:
            why = "is the first frame (give it as --edited-first-frame)" if ef.index == 0 else "is outside the video"
            found.problems.append(f"{option}: index {ef.index} {why} ({inputs.video} has {n} frames, 0-{n - 1}): "
                                  "give the index of a later frame of the input video")
            continue
        image = _check_edited_image(found, ef.image, option, source, size, inputs.strict)
        mask = found.attempt(media.read_mask_image, ef.mask, option=option) if ef.mask is not None else None
        if clip is None or image is None or (ef.mask is not None and mask is None):
            continue
        if mask is not None and _aspect_differs(mask.shape, source.shape):
            found.problems.append(f"{option}: mask {ef.mask} is {mask.shape[1]}x{mask.shape[0]} but the video is "
                                  f"{source.shape[-1]}x{source.shape[-2]}: give it the video's aspect ratio")
            continue
        mask = media.cover_crop(mask if mask is not None else clip.source_masks[ef.index], size, mode="nearest")
        if mask.sum() == 0:
            whose = ef.mask if ef.mask is not None else f"frame {ef.index} of {inputs.mask}"
            found.problems.append(f"{option}: its mask ({whose}) marks nothing to edit, so the edited frame would "
                                  "teach nothing: give the mask of its edit region as IDX:IMAGE:MASK")
            continue
        fitted.append(FittedEditedFrame(ef.index, media.cover_crop(source[ef.index], size), image, mask,
                                        ef.caption))
    return tuple(fitted)


# ---- 7. outputs and disk ------------------------------------------------------------------------------


def _check_outputs(found: Findings, command: str, opts: RunOptions, video_out: Path | None,
                   train_dir: Path | None) -> None:
    add = found.problems.append
    if video_out is not None:
        video_out = Path(video_out)
        if video_out.is_dir():
            add(f"--out {video_out} is a folder: give the output video's file name, e.g. {video_out / 'edit.mp4'}")
        elif video_out.suffix.lower() != ".mp4":
            add(f"--out {video_out}: loraedit writes H.264 mp4 video; give a name ending in .mp4")
    if command == "train" and train_dir is not None and Path(train_dir).is_file():
        add(f"--out {train_dir} is a file: give a folder for lora.safetensors")
    for target, option in ((video_out, "--out"), (train_dir, "--out"), (opts.cache_dir, "--cache-dir")):
        why = diskspace.unwritable_reason(Path(target)) if target is not None else None
        if why:
            add(f"{option} {target}: cannot write there ({why}): choose a folder you can write to")
    if train_dir is not None and not opts.resume:
        latest = latest_checkpoint(Path(train_dir) / "checkpoints")
        if latest is not None:
            add(f"{train_dir} holds a checkpoint of an earlier run ({latest.name}): pass --resume to continue it, "
                "or choose another output folder / delete it to start over")
