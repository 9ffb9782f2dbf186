"""`loraedit demo` / `make demo`: the whole method on a held-out toy-world clip, scored against its truth.

It writes the inputs a user would bring (frames, box masks, edited first frame) as files and runs the
same `api.edit` path on them, so the demo exercises reading, training, sampling and writing end to end.
The clip comes from the toy world's generator, which also renders the true edited video, so the demo
can say how close the result is, inside the edit region and outside it, beside the trivial answer of
repeating the edited first frame.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from .. import api, media
from ..metrics import edit_metrics
from .quality import QualityConfig
from ..toyworld.models import FIRST_WORLD_LEVEL, world_level
from ..toyworld.scenes import HELDOUT_SEED_BASE, Scenario, generate

#: A held-out scenario (never seen in pretraining) with a clearly visible recolouring edit.
DEMO_SEED = HELDOUT_SEED_BASE + 900_000


def demo_scenario(backend_size: tuple[int, int], frames: int, level: int = FIRST_WORLD_LEVEL) -> Scenario:
    """The demo's clip, drawn at the level of the toy world the model was pretrained on."""
    return generate(DEMO_SEED, frames=frames, size=backend_size, kind="object", level=level)


def run_demo(out_dir: Path, model: str = "toy", progress: bool = True) -> Path:
    out_dir = Path(out_dir)
    started = time.perf_counter()
    backend = api.load_backend(model)
    level = world_level(backend.model_dir)
    clip = demo_scenario(backend.working_size, backend.default_frames, level)
    inputs_dir = out_dir / "inputs"
    for t in range(clip.video.shape[0]):
        media.write_image(inputs_dir / "frames" / f"{t:03d}.png", clip.video[t])
        media.write_image(inputs_dir / "masks" / f"{t:03d}.png", clip.box_masks[t])
    media.write_image(inputs_dir / "edited_first_frame.png", clip.edited_first_frame)

    out = out_dir / "edit.mp4"
    stale = api.work_dir_for(out) / "checkpoints"  # a demo always starts fresh
    if stale.exists():
        shutil.rmtree(stale)
    # The bench's settings: the toy world's LoRA settings (quality.TOY_WORLD_TRAIN) and the model's own CFG.
    bench = QualityConfig()
    inputs = api.ClipInputs(video=inputs_dir / "frames", mask=inputs_dir / "masks")
    opts = api.RunOptions(prompt=clip.edited_caption, train_prompt=clip.caption, progress=progress,
                          cache_dir=out_dir / "cache")
    video = api.edit(model, inputs, inputs_dir / "edited_first_frame.png", out, opts,
                     replace(bench.train, checkpoint_every=25),
                     api.SampleConfig(steps=bench.steps, guidance=bench.guidance, shift=bench.shift)).video
    scores = {k: round(v, 2) for k, v in edit_metrics(video, clip.video, clip.edited_video, clip.box_masks).items()}
    static = clip.edited_first_frame[None].expand_as(clip.edited_video)
    baseline = {k: round(v, 2) for k, v in
                edit_metrics(static, clip.video, clip.edited_video, clip.box_masks).items()}
    metrics = {"seconds": round(time.perf_counter() - started, 1), "scenario_seed": DEMO_SEED,
               "level": level, "caption": clip.caption, "edited_caption": clip.edited_caption,
               "result_vs_ground_truth": scores, "static_first_frame_vs_ground_truth": baseline,
               "how_to_read": "frames after the first; edit_* inside the box mask against the true edited video, "
                              "bg_* outside it against the input (higher PSNR/SSIM is better)"}
    media.write_contact_sheet(out_dir / "truth.contact.png",
                              {"input": clip.video, "truth": clip.edited_video, "result": video}, num_columns=6)
    with media.atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    print(f"demo: wrote {out}, {out_dir / 'truth.contact.png'} and {out_dir / 'metrics.json'} in "
          f"{metrics['seconds']} s")
    print(f"demo: edit region {scores['edit_psnr']} dB / background {scores['bg_psnr']} dB against the truth "
          f"(repeating the edited first frame: {baseline['edit_psnr']} / {baseline['bg_psnr']} dB)")
    return out
