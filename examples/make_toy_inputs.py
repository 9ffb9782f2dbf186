"""Write the toy-world inputs that examples/batch.toml edits: two held-out clips as a user brings them.

    python examples/make_toy_inputs.py        # -> examples/inputs/{a,b}/ (frames/, masks/, edited_first_frame.png)

Each clip comes from the toy world's generator (`toyworld.scenes.generate`, evaluation-only seeds), with its
box masks and edited first frame. Clip a also gets a second edit, `edited_first_frame_swap.png` (frame 0 with
its colour channels rotated on the object), so the batch can show two edits of one clip sharing one
stage-1 LoRA. `scenario.json` beside each clip holds its captions.
"""

from __future__ import annotations

from pathlib import Path

from loraedit import media
from loraedit.toyworld.scenario_files import write_scenario
from loraedit.toyworld.scenes import HELDOUT_SEED_BASE, generate

HERE = Path(__file__).resolve().parent
CLIPS = {"a": HELDOUT_SEED_BASE + 900_000, "b": HELDOUT_SEED_BASE + 900_001}  # 900_000: `loraedit demo`'s clip


def main() -> None:
    for name, seed in CLIPS.items():
        scenario = generate(seed, kind="object")
        folder = HERE / "inputs" / name
        write_scenario(scenario, folder)
        if name == "a":
            mask = scenario.silhouette_masks[0].bool()  # the object itself, inside its box mask
            swapped = scenario.video[0].clone()
            swapped[:, mask] = scenario.video[0].roll(1, dims=0)[:, mask]
            media.write_image(folder / "edited_first_frame_swap.png", swapped)
        print(f"wrote {folder} (seed {seed}): {scenario.caption!r} -> {scenario.edited_caption!r}")


if __name__ == "__main__":
    main()
