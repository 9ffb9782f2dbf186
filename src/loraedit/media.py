"""Reading, resampling, resizing and writing of videos, images and edit masks.

Conventions (shared with the rest of the package):

* frames are float32 tensors in [-1, 1], shape [T, 3, H, W] (video) or [3, H, W] (image);
* edit masks are float32 tensors in {0, 1}, shape [T, H, W] or [H, W]; 1 marks a pixel the edit
  may change (white in mask files).

Every problem with a user's file is reported as ``InputError`` with a one-line message naming the
file and the fix, because the CLI turns that message into the only thing the user sees; raw
PyAV/Pillow/torch exceptions would be unreadable there. Outputs are written atomically (temporary
file in the same folder, then ``os.replace``) so an interrupted run never leaves a half-written
video that looks like a result.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps

from loraedit.errors import InputError, LoraEditError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
FOLDER_FPS = 16.0  # a folder of frames carries no timing; 16 fps is the I2V model's native rate
_SEPARATOR_PX = 2
_SEPARATOR_VALUE = -0.8  # dark grey in [-1, 1], distinguishable from black frame content


# --------------------------------------------------------------------------------------- reading


def natural_key(name: str) -> list:
    """Sort key that orders ``frame2`` before ``frame10`` (frame dumps rarely zero-pad)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def _reason(exc: Exception) -> str:
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
        raise InputError(f"cannot read image {path} ({_reason(exc)}): "
                         "give a valid png/jpg/webp/bmp/tif file") from None


def _uint8_to_unit(arr: np.ndarray) -> torch.Tensor:
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
        raise InputError(f"cannot read video {path} ({_reason(exc)}): "
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
        return _uint8_to_unit(_stack_same_size(arrays, [f.name for f in files], path)), FOLDER_FPS
    arr, fps = _decode_rgb24(path)
    return _uint8_to_unit(arr), fps


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read any Pillow image as [3, H, W] in [-1, 1]; alpha is dropped (edit images are opaque)."""
    path = Path(path)
    return _uint8_to_unit(np.asarray(_open_image(path).convert("RGB")))


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


# ------------------------------------------------------------------------------- frame selection


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
        raise InputError(f"--frames {num_target} is not of the form 4k+1: ask for {options}")
    if num_source < 1:
        raise InputError("the video has no frames: give a video with at least one frame")
    if num_target > num_source:
        raise InputError(f"the video has {num_source} frames, fewer than the {num_target} asked: "
                         f"ask for --frames {largest_valid_frame_count(num_source)}")
    if num_target == 1:
        return [0]
    span, steps = num_source - 1, num_target - 1
    # Integer round-half-up of i * span / steps: exact, and strictly increasing since span >= steps.
    return [(2 * i * span + steps) // (2 * steps) for i in range(num_target)]


# ------------------------------------------------------------------------------------- geometry


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


# --------------------------------------------------------------------------------------- writing


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
        raise LoraEditError(f"cannot write video {path} ({_reason(exc)}): "
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
        raise LoraEditError(f"cannot write image {path} ({_reason(exc)}): "
                            "check the folder is writable and has free space") from None


# ------------------------------------------------------------------------------ contact sheets


def _as_video(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A contact-sheet row as [T, 3, H, W] in [-1, 1]; masks [T, H, W] become white on black."""
    tensor = tensor.detach().to("cpu", torch.float32)
    if tensor.dim() == 3:
        return (tensor * 2.0 - 1.0).unsqueeze(1).expand(-1, 3, -1, -1)
    if tensor.dim() == 4 and tensor.shape[1] == 3:
        return tensor
    raise ValueError(f"contact sheet row {name!r} must be [T, 3, H, W] or a mask [T, H, W], "
                     f"got {tuple(tensor.shape)}")


def contact_sheet(rows: dict[str, torch.Tensor], num_columns: int = 5) -> torch.Tensor:
    """One labelled image with a row per named video/mask and ``num_columns`` sampled frames.

    Columns use the same frame indices for every row (spread over the longest row, clamped for
    shorter ones) so a column compares the same moment across source, mask and result. Tiles are
    separated by 2 px dark lines, so the result is [3, R*H + 2*(R-1), C*W + 2*(C-1)], where C is
    ``num_columns`` or the longest row's length if shorter; rows are cover-cropped to row one's size.
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    videos = {name: _as_video(name, t) for name, t in rows.items()}
    first = next(iter(videos.values()))
    tile_h, tile_w = first.shape[-2:]
    longest = max(v.shape[0] for v in videos.values())
    cols = max(1, min(num_columns, longest))
    picks = [0] if cols == 1 else [round(i * (longest - 1) / (cols - 1)) for i in range(cols)]
    sep = _SEPARATOR_PX
    sheet = torch.full((3, len(videos) * (tile_h + sep) - sep, cols * (tile_w + sep) - sep),
                       _SEPARATOR_VALUE)
    for r, video in enumerate(videos.values()):
        if video.shape[-2:] != (tile_h, tile_w):
            video = cover_crop(video, (tile_w, tile_h))
        for c, idx in enumerate(picks):
            y, x = r * (tile_h + sep), c * (tile_w + sep)
            sheet[:, y:y + tile_h, x:x + tile_w] = video[min(idx, video.shape[0] - 1)]

    canvas = Image.fromarray(to_uint8(sheet))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, name in enumerate(videos):
        x, y = 3, r * (tile_h + sep) + 3
        box = draw.textbbox((x, y), name, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((x, y), name, fill=(255, 255, 255), font=font)
    return _uint8_to_unit(np.asarray(canvas))


def write_contact_sheet(path: str | os.PathLike, rows: dict[str, torch.Tensor],
                        num_columns: int = 5) -> None:
    """Build ``contact_sheet(rows, num_columns)`` and write it atomically as PNG."""
    write_image(path, contact_sheet(rows, num_columns))
