"""Drift of long videos, window by window: `python bench/long_video.py [--scenarios 4] [--windows 4]`.

Toy-world clips `windows` model windows long (17 frames each, sharing one frame: 65 frames for four),
edited four ways, each scored per window against the generator's ground truth:

- shared LoRA, chained (loraedit's `--frames` beyond `--window`): one mask-aware LoRA trained on every
  window of the clip, then sampled window by window, each window given the last frame generated before it;
- the same with `--window-colour-match` (ours): the given frame's edit region pulled to the edited first
  frame's colour statistics before it conditions the next window;
- naive chaining: what a user does by hand without it: each window edited on its own (a LoRA trained on that
  window only), from the last frame of the window before;
- one window: the whole clip trained and sampled at once (what a GPU with room for it would do; the toy base
  was pretrained on 17-frame clips, so this is also a test of how far its position encoding stretches).

Per window: edit-region PSNR against the ground truth, background PSNR against the input, and colour drift
(the distance between the mean colour of the output and of the ground truth inside the edit region, in
0-255 units, averaged over the window's frames). Window 1's first frame (the edited frame) is not scored;
later windows are scored on the frames they generate. Prints a table and writes `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from loraedit import conditioning, long_video, media
from loraedit.api import compose_prompt, load_backend
from loraedit.encoding import Encoder
from loraedit.sampling import PreparedSampling, sample_windows
from loraedit.config import RunOptions, SampleConfig
from loraedit.lora_io import remove_lora
from loraedit.metrics import edit_colour_error, masked_psnr
from loraedit.tools.quality import TOY_WORLD_TRAIN
from loraedit.toyworld.scenes import HELDOUT_SEED_BASE, generate
from loraedit.train import train_lora
from loraedit.validate import Clip

WINDOW = 17
ROWS = ("shared LoRA, chained", "shared LoRA, chained, colour match", "naive chaining", "one window")


def window_scores(output: torch.Tensor, scenario, windows: list[long_video.Window]) -> list[dict]:
    """Edit PSNR, background PSNR and colour drift of each window's generated frames."""
    rows = []
    for i, w in enumerate(windows):
        frames = list(range(w.start + w.given, w.stop))
        out, gt, src = output[frames], scenario.edited_video[frames], scenario.video[frames]
        m = scenario.box_masks[frames].float()
        rows.append({"edit_psnr": masked_psnr(out, gt, m), "bg_psnr": masked_psnr(out, src, 1 - m),
                     "colour_err": edit_colour_error(out, gt, m)})
    return rows


def run_scenario(backend, scenario, windows, steps_per_window: int, sample_steps: int, work: Path) -> dict:
    video, masks, first = scenario.video, scenario.box_masks, scenario.edited_first_frame
    train_prompt = compose_prompt("p3rs0n,", scenario.caption)
    prompt = compose_prompt("p3rs0n,", scenario.edited_caption)
    enc = Encoder(backend, None, "maxpool")
    negative = enc.prompt(backend.default_negative_prompt)
    clip = Clip(video, masks, 16.0, video, masks)
    opts = RunOptions(progress=False)
    scfg = SampleConfig(steps=sample_steps, guidance=backend.default_guidance, sampler=backend.default_sampler)

    def train(motion, steps: int, name: str) -> None:
        train_lora(backend, [enc.sample(s) for s in motion], [], replace(TOY_WORLD_TRAIN, stage1_steps=steps),
                   work / name, progress=False)

    def detach() -> None:
        for expert in backend.experts:
            remove_lora(backend.transformer(expert.name))

    def chained(plan, given_first, colour_match: bool) -> torch.Tensor:
        cond = long_video.window_condition("mask-aware", video, masks, plan[0], given_first[None], prompt)
        prepared = PreparedSampling(clip, given_first, enc.sample(cond), negative, plan, prompt)
        return sample_windows(backend, prepared, opts, replace(scfg, window_colour_match=colour_match))

    out = {}
    clips = conditioning.low_cost_samples(video, masks, train_prompt, WINDOW)
    train(clips, steps_per_window * len(windows), "shared")
    out[ROWS[0]] = chained(windows, first, False)
    out[ROWS[1]] = chained(windows, first, True)
    detach()
    # naive chaining: window k is its own edit, from the last frame of window k-1's output
    pieces, given = [], first
    for k, w in enumerate(windows):
        sub = Clip(video[w.start:w.stop], masks[w.start:w.stop], 16.0, video, masks)
        train([conditioning.motion_sample(sub.video, sub.masks, train_prompt)], steps_per_window, f"naive{k}")
        cond = long_video.window_condition("mask-aware", sub.video, sub.masks, long_video.Window(0, WINDOW, 1),
                                           given[None], prompt)
        prepared = PreparedSampling(sub, given, enc.sample(cond), negative, [long_video.Window(0, WINDOW, 1)], prompt)
        piece = sample_windows(backend, prepared, opts, replace(scfg, seed=k))
        detach()
        pieces.append(piece if k == 0 else piece[1:])
        given = piece[-1]
    out[ROWS[2]] = torch.cat(pieces)
    # one window: the whole clip at once
    train([conditioning.motion_sample(video, masks, train_prompt)], steps_per_window * len(windows), "one")
    whole = [long_video.Window(0, video.shape[0], 1)]
    out[ROWS[3]] = chained(whole, first, False)
    detach()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=4)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--steps-per-window", type=int, default=100, help="LoRA steps per window (the shared LoRA and "
                    "the one-window LoRA get this times the windows; naive chaining this per window)")
    ap.add_argument("--sample-steps", type=int, default=15)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sheets", type=Path, help="folder for one contact sheet per scenario (every 4th frame)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    frames = args.windows * (WINDOW - 1) + 1
    windows = long_video.plan_windows(frames, WINDOW, 1)
    backend = load_backend("toy")
    backend.set_progress(False)
    results = {row: [] for row in ROWS}
    started = time.perf_counter()
    for i in range(args.scenarios):
        scenario = generate(HELDOUT_SEED_BASE + i, frames=frames, kind="object", level=args.level)
        with tempfile.TemporaryDirectory() as tmp:
            outputs = run_scenario(backend, scenario, windows, args.steps_per_window, args.sample_steps, Path(tmp))
        for row, video in outputs.items():
            results[row].append(window_scores(video, scenario, windows))
        if args.sheets:
            keep = list(range(0, frames, 4))
            rows = [scenario.video[keep], scenario.edited_video[keep]] + [outputs[r][keep] for r in ROWS]
            media.write_image(args.sheets / f"long-{scenario.seed}.png", torch.cat([torch.cat(list(r), dim=2)
                                                                                    for r in rows], dim=1))
        print(f"scenario {i + 1}/{args.scenarios} done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
    table = summarise(results, len(windows))
    print(format_table(table, args))
    if args.json:
        with media.atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"config": vars(args) | {"json": str(args.json), "sheets": str(args.sheets)},
                                       "frames": frames, "per_scenario": results, "mean": table}, indent=1) + "\n")


def summarise(results: dict, n_windows: int) -> dict:
    """Per row and window: the mean of each score over the scenarios."""
    return {row: [{k: round(sum(s[w][k] for s in per) / len(per), 2) for k in per[0][w]} for w in range(n_windows)]
            for row, per in results.items()}


def format_table(table: dict, args) -> str:
    heads = " | ".join(f"window {w + 1}" for w in range(args.windows))
    lines = [f"edit PSNR / background PSNR (dB) / colour drift (0-255), {args.scenarios} scenarios, level {args.level}",
             f"| row | {heads} |", "|---|" + "---|" * args.windows]
    for row, cells in table.items():
        lines.append(f"| {row} | " + " | ".join(f"{c['edit_psnr']:.2f} / {c['bg_psnr']:.2f} / {c['colour_err']:.1f}"
                                               for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
