"""Which frames of a clip are used (4k+1 of them, spread evenly) and the geometry every input shares.

`cover_crop` resizes to cover the working size and centre-crops, the same way for videos, images and masks,
so a mask stays aligned with its video; `check_masks_match` refuses masks that could not align.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from loraedit.errors import InputError, setting


def largest_valid_frame_count(n: int) -> int:
    """Largest 4k+1 <= n: the I2V model's VAE compresses time by 4, so clips must be 4k+1 long."""
    if n < 1:
        raise InputError(f"a clip needs at least 1 frame, got {n}: give a longer video")
    return (n - 1) // 4 * 4 + 1


def uniform_frame_indices(num_source: int, num_target: int) -> list[int]:
    """``num_target`` indices spread evenly over 0..num_source-1, first and last frame kept.

    Never up-samples (duplicated frames would teach the model stutter); asks for 4k+1 frames.
    """
    if num_target < 1 or (num_target - 1) % 4:
        low = largest_valid_frame_count(max(num_target, 1))
        options = f"{low} or {low + 4}" if num_target > 1 else "1 or 5"
        raise InputError(f"{setting('frames')} {num_target} is not of the form 4k+1: ask for {options}")
    if num_source < 1:
        raise InputError("the video has no frames: give a video with at least one frame")
    if num_target > num_source:
        raise InputError(f"the video has {num_source} frames, fewer than the {num_target} asked: "
                         f"ask for {setting('frames')} {largest_valid_frame_count(num_source)}")
    if num_target == 1:
        return [0]
    span, steps = num_source - 1, num_target - 1
    # Integer round-half-up of i * span / steps: exact, and strictly increasing since span >= steps.
    return [(2 * i * span + steps) // (2 * steps) for i in range(num_target)]




def cover_crop(frames: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize so the input covers ``size`` = (width, height), then centre-crop to it exactly.

    Covering (not letterboxing) keeps every output pixel real content, and it is the same geometry
    for images and masks, so a mask cropped with ``mode="nearest"`` stays aligned with its video.
    Works on any tensor whose last two dims are H, W: every leading channel is resized on its own.
    ``"nearest"`` is done as torch's ``"nearest-exact"`` (pixel-centre sampling like bilinear with
    align_corners=False); plain torch ``"nearest"`` shifts content by up to a pixel.
    """
    width, height = (int(s) for s in size)
    if width < 1 or height < 1:
        raise InputError(f"size {width}x{height} is not positive: give a width and height >= 1")
    if frames.dim() < 2 or frames.shape[-1] < 1 or frames.shape[-2] < 1:
        raise ValueError(f"cover_crop needs [..., H, W] with H, W >= 1, got {tuple(frames.shape)}")
    src_h, src_w = frames.shape[-2:]
    new_w, new_h = cover_size((src_w, src_h), (width, height))
    out = frames if frames.is_floating_point() else frames.to(torch.float32)
    if (new_h, new_w) != (src_h, src_w):
        lead = out.shape[:-2]
        flat = out.reshape(-1, 1, src_h, src_w)
        if mode == "nearest":
            flat = F.interpolate(flat, size=(new_h, new_w), mode="nearest-exact")
        else:
            flat = F.interpolate(flat, size=(new_h, new_w), mode=mode, align_corners=False,
                                 antialias=mode in ("bilinear", "bicubic"))
        out = flat.reshape(*lead, new_h, new_w)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = out[..., top:top + height, left:left + width]
    if mode != "nearest":
        out = out.clamp(-1.0, 1.0)  # bicubic overshoots; keeps images in range
    return out.contiguous()


def scaled_size(size: tuple[int, int], fraction: float, multiple: int) -> tuple[int, int]:
    """`fraction` of a (width, height), each side rounded to a multiple of `multiple` (at least one step):
    `--train-size 0.5` at 832x480 with Wan's 16 is 416x240."""
    return tuple(max(multiple, round(side * fraction / multiple) * multiple) for side in size)


def resolve_size(value: tuple[int, int] | float | None, size: tuple[int, int], multiple: int
                 ) -> tuple[int, int] | None:
    """A size given as (width, height) or as a fraction of `size` (`scaled_size`), as (width, height); None
    stays None (`--train-size`: the working size)."""
    if value is None:
        return None
    return scaled_size(size, value, multiple) if isinstance(value, (int, float)) else tuple(value)


def shrink_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Edit masks [..., H, W] down to `size` = (width, height) of the same aspect: a pixel of the result is
    editable when any source pixel it covers is, so the region keeps every edge of the object it marks."""
    width, height = (int(s) for s in size)
    if width > masks.shape[-1] or height > masks.shape[-2]:
        raise ValueError(f"shrink_masks makes masks smaller: {masks.shape[-1]}x{masks.shape[-2]} -> {width}x{height}")
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    return F.adaptive_max_pool2d(flat, (height, width)).reshape(*masks.shape[:-2], height, width)


def shrink_clip(video: torch.Tensor, masks: torch.Tensor, size: tuple[int, int] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip [T, 3, H, W] and its edit masks [T, H, W] at a smaller `size` of the same aspect (training the
    motion at a reduced size, `TrainConfig.train_size`); None or the clip's own size: unchanged."""
    if size is None or tuple(size) == (video.shape[-1], video.shape[-2]):
        return video, masks
    return cover_crop(video, size), shrink_masks(masks, size)


def cover_size(source: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) ``source`` is resized to by ``cover_crop`` before the centre crop to ``size``."""
    (src_w, src_h), (width, height) = source, size
    scale = max(width / src_w, height / src_h)
    return max(width, round(src_w * scale)), max(height, round(src_h * scale))


def prepare_video(frames: torch.Tensor, num_frames: int, size: tuple[int, int]) -> torch.Tensor:
    """Pick ``num_frames`` uniform frames of [T, 3, H, W] and cover-crop them to (width, height)."""
    return cover_crop(frames[uniform_frame_indices(frames.shape[0], num_frames)], size)


def prepare_masks(masks: torch.Tensor, num_frames: int, size: tuple[int, int]) -> torch.Tensor:
    """Same frame choice and geometry as ``prepare_video``, nearest so masks stay binary."""
    return cover_crop(masks[uniform_frame_indices(masks.shape[0], num_frames)], size, mode="nearest")


def check_masks_match(masks: torch.Tensor, frames: torch.Tensor, mask_path: str | os.PathLike) -> None:
    """Raise InputError unless the masks have one frame per video frame and the video's shape.

    A different resolution is fine when the aspect ratio matches within 1% (cover_crop then maps
    both onto the same pixels); a different aspect ratio would silently misplace the edit region.
    """
    n_mask, n_video = masks.shape[0], frames.shape[0]
    mh, mw = masks.shape[-2:]
    vh, vw = frames.shape[-2:]
    if n_mask != n_video:
        raise InputError(f"mask {mask_path} has {n_mask} frames but the video has {n_video} frames: "
                         "give one mask per frame")
    if abs((mw / mh) / (vw / vh) - 1.0) > 0.01:
        raise InputError(f"mask {mask_path} is {mw}x{mh} but the video is {vw}x{vh}: "
                         f"give masks with the video's aspect ratio (e.g. {vw}x{vh})")
