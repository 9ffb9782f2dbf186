"""Contact sheets: one labelled image with a row per video or mask and the same sampled frames in every
column, so a column compares one moment across input, mask and result."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .frames import cover_crop
from .reading import uint8_to_unit
from .writing import to_uint8, write_image

_SEPARATOR_PX = 2
_SEPARATOR_VALUE = -0.8  # dark grey in [-1, 1], distinguishable from black frame content


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
    return uint8_to_unit(np.asarray(canvas))


def write_contact_sheet(path: str | os.PathLike, rows: dict[str, torch.Tensor],
                        num_columns: int = 5) -> None:
    """Build ``contact_sheet(rows, num_columns)`` and write it atomically as PNG."""
    write_image(path, contact_sheet(rows, num_columns))
