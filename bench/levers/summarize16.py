"""Issue 16's lever table from `bench/levers/issue16.sh`'s runs: toy-world quality beside Wan-14B minutes.

    python bench/levers/summarize16.py [out/levers16]     # or docs/results/levers16 (the committed runs)

Each lever is compared with the `base` run (the toy world's table settings) on the same held-out scenarios:
mean edit-region / background PSNR of mask-aware, the paired per-scenario difference, the back face where
the run trained on an edited later frame, the share of sampling forwards a step cache skipped, and what the
same lever is modelled to cost on one H100 for a 49-frame 832x480 Wan2.1-14B edit (`perftables`).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from loraedit import perftables

#: What each run changes, and its Wan-14B recipe: (training steps, sampling steps, training size as a
#: fraction of 832x480 or None, step-cache skip share: None = the measured one).
LEVERS = {
    "base": ("the toy world's settings (100 LoRA steps, 30 UniPC steps)", 100, 30, None, 0.0),
    "euler": ("`--sampler euler` (the authors')", 100, 30, None, 0.0),
    "trainsize48": ("`--train-size 0.5` (48x48 of 96x96)", 100, 30, "0.5", 0.0),
    "trainsize72": ("`--train-size 0.75` (72x72 of 96x96)", 100, 30, "0.75", 0.0),
    "s50lr2": ("50 LoRA steps at lr 2e-3", 50, 30, None, 0.0),
    "ts2": ("`--taylorseer 2`", 100, 30, None, None),
    "ts3": ("`--taylorseer 3`", 100, 30, None, None),
    "fbc01": ("`--first-block-cache 0.1`", 100, 30, None, None),
    "st15": ("`--steps 15`", 100, 15, None, 0.0),
    "fast": ("`--train-size 0.5 --steps 15 --taylorseer 3`", 100, 15, "0.5", None),
    "fastfbc": ("`--train-size 0.5 --steps 15 --first-block-cache 0.1`", 100, 15, "0.5", None),
    "fastlr": ("50 LoRA steps at lr 2e-3, `--steps 15 --taylorseer 3` (`--fast`)", 50, 15, None, None),
    "stage2x50": ("stage 2: 50 steps (one edited frame)", 100, 30, None, 0.0),
    "stage2x200": ("stage 2: 200 steps (one edited frame)", 100, 30, None, 0.0),
}


def rows(run: dict, mode: str) -> dict[int, dict]:
    return {s["seed"]: s["modes"][mode] for s in run["scenarios"] if mode in s["modes"]}


def minutes(train_steps: int, sample_steps: int, fraction: str | None, skipped: float) -> float:
    table = perftables.edit_recipes(train_steps=train_steps, sample_steps=sample_steps, cache_skipped=skipped,
                                    train_fraction=float(fraction or 1))
    recipe = "49 frames" if fraction is None else "49 frames, --train-size " + fraction
    return next(r["edit_min"] for r in table if r["device"].startswith("H100") and r["mode"] == "full"
                and r["recipe"].split(" (")[0] == recipe)


def main(folder: Path) -> None:
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/quality.json"))}
    runs = runs or {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}  # committed copies
    base = runs["base"]
    print("| lever | mode | n | edit PSNR | vs base (paired) | background PSNR | vs base | back face | "
          "skipped | Wan 14B min (H100, modelled) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    pairs = [(name, "mask-aware+frames" if name.startswith("stage2") else "mask-aware") for name in LEVERS]
    pairs.insert(1, ("base", "mask-aware+frames"))  # what the stage-2 rows compare with
    for name, mode in pairs:
        if name not in runs:
            continue
        what, train, sample, fraction, skip = LEVERS[name]
        mine, ref = rows(runs[name], mode), rows(base, mode)
        seeds = sorted(set(mine) & set(ref))
        edit = statistics.mean(mine[s]["edit_psnr"] for s in seeds)
        bg = statistics.mean(mine[s]["bg_psnr"] for s in seeds)
        d_edit = statistics.mean(mine[s]["edit_psnr"] - ref[s]["edit_psnr"] for s in seeds)
        d_bg = statistics.mean(mine[s]["bg_psnr"] - ref[s]["bg_psnr"] for s in seeds)
        backs = [mine[s]["back_psnr"] for s in seeds if "back_psnr" in mine[s]]
        back = f"{statistics.mean(backs):.2f}" if backs else "-"
        skips = [mine[s]["cache_skipped"] for s in seeds if "cache_skipped" in mine[s]]
        skipped = statistics.mean(skips) if skips else 0.0
        wan = minutes(train, sample, fraction, skipped if skip is None else skip)
        print(f"| {what} | {mode} | {len(seeds)} | {edit:.2f} | {d_edit:+.2f} | {bg:.2f} | {d_bg:+.2f} | {back} | "
              f"{skipped:.0%} | {wan:.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/levers16"))
