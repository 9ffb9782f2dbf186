"""`loraedit demo` / `make demo`: the whole method on a generated toy clip, with its inputs written out.

It writes the inputs a user would bring (frames, masks, edited first frame) as files and runs the same
`api.edit` path on them, so the demo exercises reading, training, sampling and writing end to end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import api, media
from .toyworld.scenes import moving_square
from .train import TrainConfig


def run_demo(out_dir: Path, model: str = "toy", progress: bool = True) -> Path:
    out_dir = Path(out_dir)
    started = time.perf_counter()
    backend = api.load_backend(model)
    width, height = backend.working_size
    clip = moving_square(seed=0, frames=backend.default_frames, size=(width, height))
    inputs_dir = out_dir / "inputs"
    for t in range(clip.video.shape[0]):
        media.write_image(inputs_dir / "frames" / f"{t:03d}.png", clip.video[t])
        media.write_image(inputs_dir / "masks" / f"{t:03d}.png", clip.masks[t])
    media.write_image(inputs_dir / "edited_first_frame.png", clip.edited_first_frame)

    out = out_dir / "edit.mp4"
    for stale in (api.work_dir_for(out) / "checkpoints",):
        if stale.exists():
            import shutil

            shutil.rmtree(stale)
    inputs = api.ClipInputs(video=inputs_dir / "frames", mask=inputs_dir / "masks")
    opts = api.RunOptions(prompt=clip.edited_caption, train_prompt=clip.caption, progress=progress,
                          cache_dir=out_dir / "cache")
    video = api.edit(model, inputs, inputs_dir / "edited_first_frame.png", out, opts,
                     TrainConfig(stage1_steps=30, learning_rate=1e-3, checkpoint_every=10), api.SampleConfig(steps=10))
    metrics = {"seconds": round(time.perf_counter() - started, 1),
               "psnr_vs_ground_truth_db": round(_psnr(video, clip.edited_video), 2),
               "note": "toy model with random weights: the numbers only show the pipeline ran"}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"demo: wrote {out}, {out.with_suffix('.contact.png')} and {out_dir / 'metrics.json'}: {metrics}")
    return out


def _psnr(a, b) -> float:
    import math

    mse = float(((a - b) / 2).pow(2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))
