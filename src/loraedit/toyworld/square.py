"""The first, minimal toy clip: a square crossing a striped gradient, re-coloured by the edit.

It predates the scene generator (`scenes.generate`) and draws from a torch Generator, not numpy; the test
fixtures (tests/conftest.py) use it, so it is kept exactly as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ToyClip:
    video: torch.Tensor  # [T, 3, H, W] in [-1, 1]
    masks: torch.Tensor  # [T, H, W] {0, 1}
    edited_video: torch.Tensor  # ground truth, [T, 3, H, W]
    caption: str
    edited_caption: str

    @property
    def edited_first_frame(self) -> torch.Tensor:
        return self.edited_video[0]


COLOURS = {"red": (0.9, -0.8, -0.8), "green": (-0.8, 0.8, -0.8), "blue": (-0.8, -0.6, 0.9),
           "yellow": (0.9, 0.8, -0.8), "purple": (0.5, -0.8, 0.7), "cyan": (-0.8, 0.8, 0.9)}


def moving_square(seed: int = 0, frames: int = 17, size: tuple[int, int] = (64, 64)) -> ToyClip:
    """A square crossing a striped gradient; the edit re-colours the square."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    names = list(COLOURS)
    pick = torch.randperm(len(names), generator=g)[:2].tolist()
    colour, new_colour = names[pick[0]], names[pick[1]]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    phase = float(torch.rand(1, generator=g)) * math.pi
    background = torch.stack([0.5 * xs, 0.3 * torch.sin(6 * ys + phase), -0.4 * xs * ys])  # [3, H, W]
    side = max(8, min(w, h) // 4)
    x0, y0 = float(torch.randint(0, w // 3, (1,), generator=g)), float(torch.randint(0, h - side, (1,), generator=g))
    dx, dy = (w - side - x0) / max(frames - 1, 1), float(torch.randn(1, generator=g)) * 0.5

    video, edited, masks = [], [], []
    for t in range(frames):
        x, y = int(round(x0 + dx * t)), int(min(max(y0 + dy * t, 0), h - side))
        frame, frame_edit, mask = background.clone(), background.clone(), torch.zeros(h, w)
        for target, name in ((frame, colour), (frame_edit, new_colour)):
            target[:, y:y + side, x:x + side] = torch.tensor(COLOURS[name])[:, None, None]
        grow = max(1, round(side * 0.05))  # the authors' box mask: grown 10% (5% a side)
        mask[max(y - grow, 0):y + side + grow, max(x - grow, 0):x + side + grow] = 1
        video.append(frame)
        edited.append(frame_edit)
        masks.append(mask)
    return ToyClip(torch.stack(video).clamp(-1, 1), torch.stack(masks), torch.stack(edited).clamp(-1, 1),
                   f"a {colour} square moving right", f"a {new_colour} square moving right")
