"""Writing results: mp4 (H.264, yuv420p) and PNG, each written atomically so a killed run never leaves a
half-written file that looks like a result (`atomic_path`)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from loraedit.errors import InputError, LoraEditError

from .reading import one_line


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it into place, on error delete it.

    The temp name keeps the real extension (``.out.mp4.tmp-1234-ab12.mp4``) so PyAV/Pillow still
    infer the format, and lives in the same folder so ``os.replace`` is an atomic rename.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(2)}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] -> uint8 [T, H, W, 3], or [3, H, W] -> [H, W, 3]; values clamped to [-1, 1]."""
    if frames.dim() not in (3, 4) or frames.shape[-3] != 3:
        raise ValueError(f"to_uint8 needs [T, 3, H, W] or [3, H, W], got {tuple(frames.shape)}")
    scaled = ((frames.detach().to("cpu", torch.float32).clamp(-1, 1) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).movedim(-3, -1).contiguous().numpy()


def write_video(path: str | os.PathLike, frames: torch.Tensor, fps: float = 16.0) -> None:
    """Write [T, 3, H, W] as H.264/yuv420p mp4 (plays everywhere); odd sides get one replicated px."""
    if frames.dim() != 4 or frames.shape[0] < 1:
        raise ValueError(f"write_video needs [T, 3, H, W] with T >= 1, got {tuple(frames.shape)}")
    if not fps > 0:
        raise InputError(f"fps {fps} is not positive: give an fps > 0")
    arr = to_uint8(frames)
    _, h, w, _ = arr.shape
    if h % 2 or w % 2:  # yuv420p subsamples chroma 2x2, so libx264 refuses odd sides
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    try:
        with atomic_path(path) as tmp:
            with av.open(str(tmp), mode="w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height = arr.shape[2], arr.shape[1]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18"}  # near-transparent quality for results and previews
                for image in arr:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                container.mux(stream.encode(None))
    except (OSError, av.FFmpegError) as exc:
        raise LoraEditError(f"cannot write video {path} ({one_line(exc)}): "
                            "check the folder is writable and has free space") from None


def write_image(path: str | os.PathLike, image: torch.Tensor) -> None:
    """Write [3, H, W] in [-1, 1] (or a [H, W] mask in {0, 1}, as white on black) as PNG."""
    if image.dim() == 2:
        arr = (image.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    else:
        arr = to_uint8(image)
    try:
        with atomic_path(path) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")
    except OSError as exc:
        raise LoraEditError(f"cannot write image {path} ({one_line(exc)}): "
                            "check the folder is writable and has free space") from None
