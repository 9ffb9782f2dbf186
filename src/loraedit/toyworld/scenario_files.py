"""A toy-world scenario written as the files a user would bring, beside its ground truth.

Kept apart from the generator (`scenes`), which only draws and renders tensors: this is the one place the
toy world writes a scenario to disk (PNG frames and masks, the true edit, `scenario.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import media
from .scenes import Scenario


def write_scenario(scenario: Scenario, folder: Path) -> None:
    """Write a scenario as the files a user would bring (PNG frames and masks, white = edit) plus
    the ground truth and a ``scenario.json`` describing it; every file is written atomically."""
    folder = Path(folder)
    for t in range(scenario.video.shape[0]):
        media.write_image(folder / "frames" / f"{t:03d}.png", scenario.video[t])
        media.write_image(folder / "masks" / f"{t:03d}.png", scenario.box_masks[t])
        media.write_image(folder / "silhouettes" / f"{t:03d}.png", scenario.silhouette_masks[t])
        media.write_image(folder / "ground_truth" / f"{t:03d}.png", scenario.edited_video[t])
    media.write_image(folder / "edited_first_frame.png", scenario.edited_first_frame)
    if scenario.later_frame is not None:
        media.write_image(folder / "edited_later_frame.png", scenario.edited_later_frame)
    info = {"seed": scenario.seed, "caption": scenario.caption, "edited_caption": scenario.edited_caption,
            "edit_kind": scenario.edit_kind, "is_card": scenario.is_card, "later_frame": scenario.later_frame,
            "frames": scenario.video.shape[0], "size": [scenario.video.shape[-1], scenario.video.shape[-2]]}
    with media.atomic_path(folder / "scenario.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
