"""Will a run's files fit where they go? Estimated from shapes, checked before anything is computed.

A full disk found when the last checkpoint is written loses the hour before it. The estimates are upper
bounds from the model's configs and the run's geometry: the encoded cache (latents, conditions and
embeddings of every sample), the LoRA with its checkpoints (two kept plus one being written, each the
LoRA and AdamW's two moments), and the output video (at most its raw size). Folders on one disk are
summed; each disk's free space must cover its share.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .backends.base import ModelFolder

_FLOAT_BYTES = 4  # everything cached or checkpointed is float32
_CHECKPOINTS_AT_ONCE = 3
_CLIP_TOKENS, _CLIP_DIM = 257, 1280  # Wan2.1's CLIP ViT-H/14 penultimate hidden states
_SLACK = 16 << 20  # JSON sidecars, logs, contact sheets


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (what a not-yet-created output lands on)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable_reason(path: Path) -> str | None:
    """Why `path` (file or folder) could not be created or replaced by this process; None if it could."""
    target = Path(path).absolute()
    existing = nearest_existing(target)
    if existing == target:
        folder = target if target.is_dir() else target.parent
    elif existing.is_dir():
        folder = existing  # the missing part of the path would be created in it
    else:
        return f"{existing} is a file, not a folder"
    return None if os.access(folder, os.W_OK | os.X_OK) else f"no permission to write in {folder}"


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or would, once created)."""
    return shutil.disk_usage(nearest_existing(path)).free


def cache_bytes(folder: ModelFolder, frames: int, size: tuple[int, int], num_edited_frames: int) -> int:
    """Upper bound of what one run adds to the encoded cache."""
    grid = (size[0] // folder.spatial_factor) * (size[1] // folder.spatial_factor)
    per_frame = (2 * folder.latent_channels + 4) * grid  # target latents, then mask channels + condition latents
    latent_frames = (frames - 1) // folder.temporal_factor + 1
    # the video (its low-cost clips overlap: at most twice as many latent frames) + the inference condition
    cells = 3 * latent_frames * per_frame + num_edited_frames * per_frame
    embeddings = 3 * 512 * folder.text_dim + (2 + num_edited_frames) * _CLIP_TOKENS * _CLIP_DIM  # 3 prompts, images
    return _FLOAT_BYTES * (cells + embeddings) + _SLACK


def disk_problems(folder: ModelFolder, frames: int, size: tuple[int, int], num_edited_frames: int, *,
                  cache_dir: Path | None, train_dir: Path | None, lora_params: int,
                  video_out: Path | None) -> list[str]:
    """One problem per disk whose free space is below what the run will write there."""
    needs: list[tuple[Path, int, str, str]] = []
    if cache_dir is not None:
        needs.append((Path(cache_dir), cache_bytes(folder, frames, size, num_edited_frames),
                      "the encoded-input cache", "--cache-dir"))
    if train_dir is not None:
        per_copy = _FLOAT_BYTES * lora_params
        needs.append((Path(train_dir), per_copy * (1 + 3 * _CHECKPOINTS_AT_ONCE), "the LoRA and its checkpoints",
                      "--out"))
    if video_out is not None:
        needs.append((Path(video_out).parent, 2 * frames * size[0] * size[1] * 3, "the output video", "--out"))
    by_disk: dict[int, list[tuple[Path, int, str, str]]] = {}
    for need in needs:
        by_disk.setdefault(os.stat(nearest_existing(need[0])).st_dev, []).append(need)
    problems = []
    for group in by_disk.values():
        total, free = sum(n[1] for n in group), free_bytes(group[0][0])
        if free < total:
            whats = list(dict.fromkeys(n[2] for n in group))
            whats = ", ".join(whats[:-1]) + " and " + whats[-1] if len(whats) > 1 else whats[0]
            options = " or ".join(dict.fromkeys(n[3] for n in group))
            problems.append(f"{nearest_existing(group[0][0])} has {_size(free)} free but this run needs about "
                            f"{_size(total)} there for {whats}: free some space, or choose {options} on a larger disk")
    return problems


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{max(n, 0) / 2**20:.0f} MB"
