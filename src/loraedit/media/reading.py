"""Reading videos, images and edit masks from a user's files, every problem as a one-line `InputError`.

A video is a file (anything PyAV decodes) or a folder of frame images in natural order; a mask is a mask
video, a folder of images or one image, white (or alpha) = the edit may change this pixel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageOps

from loraedit.errors import InputError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
FOLDER_FPS = 16.0  # a folder of frames carries no timing; 16 fps is the I2V model's native rate


def natural_key(name: str) -> list:
    """Sort key that orders ``frame2`` before ``frame10`` (frame dumps rarely zero-pad)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def one_line(exc: Exception) -> str:
    """Library error text squeezed onto one line (the CLI prints messages as single lines)."""
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path} does not exist: check the path")


def _frame_files(folder: Path) -> list[Path]:
    """Image files of a frame/mask folder in natural order; hidden files (.DS_Store, ._x) skipped."""
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    if not files:
        kinds = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise InputError(f"folder {folder} has no frame images: put {kinds} files in it")
    return sorted(files, key=lambda p: natural_key(p.name))


def _open_image(path: Path) -> Image.Image:
    """Open and fully decode an image (Pillow is lazy, so errors would otherwise surface later).

    EXIF orientation is applied so that the pixels match what the user saw in their viewer.
    """
    _require_exists(path)
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        raise InputError(f"cannot read image {path} ({one_line(exc)}): "
                         "give a valid png/jpg/webp/bmp/tif file") from None


def uint8_to_unit(arr: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    t = torch.from_numpy(arr.astype(np.float32))  # astype copies: Pillow arrays are read-only
    return (t / 127.5 - 1.0).movedim(-1, -3).contiguous()


def _stack_same_size(arrays: list[np.ndarray], names: list[str], what: Path) -> np.ndarray:
    first = arrays[0].shape[:2]
    for arr, name in zip(arrays, names):
        if arr.shape[:2] != first:
            raise InputError(
                f"{what}: {name} is {arr.shape[1]}x{arr.shape[0]} but {names[0]} is "
                f"{first[1]}x{first[0]}: all frames must have the same size")
    return np.stack(arrays)


def _decode_rgb24(path: Path) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream as uint8 [T, H, W, 3], plus its fps."""
    _require_exists(path)
    arrays: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream: give a video file or a folder of frames")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            for frame in container.decode(stream):
                arrays.append(frame.to_ndarray(format="rgb24"))
    except InputError:
        raise
    except Exception as exc:  # av.FFmpegError and friends; never leak them to the user
        raise InputError(f"cannot read video {path} ({one_line(exc)}): "
                         "give a valid mp4/mov/webm/mkv/avi/gif file or a folder of frames") from None
    if not arrays:
        raise InputError(f"video {path} has no frames: give a video with at least one frame")
    fps = float(rate) if rate else FOLDER_FPS
    return _stack_same_size(arrays, [f"frame {i}" for i in range(len(arrays))], path), fps


def read_video(path: str | os.PathLike) -> tuple[torch.Tensor, float]:
    """Read a video file or a folder of frame images as ([T, 3, H, W] in [-1, 1], fps)."""
    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        files = _frame_files(path)
        arrays = [np.asarray(_open_image(f).convert("RGB")) for f in files]
        return uint8_to_unit(_stack_same_size(arrays, [f.name for f in files], path)), FOLDER_FPS
    arr, fps = _decode_rgb24(path)
    return uint8_to_unit(arr), fps


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read any Pillow image as [3, H, W] in [-1, 1]; alpha is dropped (edit images are opaque)."""
    path = Path(path)
    return uint8_to_unit(np.asarray(_open_image(path).convert("RGB")))


def _mask_from_pil(img: Image.Image) -> torch.Tensor:
    """Binary [H, W] mask from an image.

    Rule: an alpha channel that is not fully opaque is the mask (cut-out style masks often have
    black or constant colour and carry the shape in alpha only); otherwise white = edit, by
    luminance. Both thresholds are at 0.5.
    """
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        alpha = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
        if alpha.min() < 1.0:
            return torch.from_numpy((alpha > 0.5).astype(np.float32))
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # 16-bit / float greyscale: Pillow's convert("L") would clip, so scale by the data's range.
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) if arr.size else 0.0
        lum = arr / (65535.0 if peak > 255 else 255.0 if peak > 1 else 1.0)
    else:
        lum = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((lum > 0.5).astype(np.float32))


def read_mask_image(path: str | os.PathLike) -> torch.Tensor:
    """Read one mask image as [H, W] float32 in {0, 1} (see ``_mask_from_pil`` for the rule)."""
    return _mask_from_pil(_open_image(Path(path)))


def read_masks(path: str | os.PathLike) -> torch.Tensor:
    """Read masks as [T, H, W] in {0, 1} from a mask video, a folder of images, or one image."""
    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        files = _frame_files(path)
        masks = [read_mask_image(f).numpy() for f in files]
        return torch.from_numpy(_stack_same_size(masks, [f.name for f in files], path))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return read_mask_image(path).unsqueeze(0)
    arr, _ = _decode_rgb24(path)
    return torch.from_numpy((arr.astype(np.float32).mean(axis=-1) / 255.0 > 0.5).astype(np.float32))
