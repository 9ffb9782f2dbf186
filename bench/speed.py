"""Seconds per training step and per sampling step of the embedded toy model on this machine.

A first speed probe (the full benchmark with ratios to a naive reference loop is issue 7's work):
run with `make bench`. Prints one JSON line.
"""

from __future__ import annotations

import json
import time

import torch

from loraedit import conditioning
from loraedit.api import Encoder, load_backend
from loraedit.toyworld.scenes import moving_square
from loraedit.train import TrainConfig, train_lora


def main() -> None:
    import tempfile

    torch.manual_seed(0)
    backend = load_backend("toy")
    w, h = backend.working_size
    frames = backend.default_frames
    clip = moving_square(0, frames, (w, h))
    enc = Encoder(backend, None, "maxpool")
    sample = enc.sample(conditioning.motion_sample(clip.video, clip.masks, "p3rs0n, a red square"))
    steps = 60
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train_lora(backend, [sample], [], TrainConfig(stage1_steps=steps, checkpoint_every=0), tmp, progress=False)
        train_s = (time.perf_counter() - started) / steps
    cond = enc.sample(conditioning.mask_aware_condition(clip.video, clip.masks, clip.edited_first_frame, "x"))
    negative = enc.prompt("")
    backend.pipe.set_progress_bar_config(disable=True)
    sample_steps = 30
    started = time.perf_counter()
    backend.generate(cond.condition, clip.edited_first_frame, cond.text, negative, cond.image, steps=sample_steps,
                     guidance=5.0, shift=5.0, seed=0)
    sample_s = (time.perf_counter() - started) / sample_steps
    print(json.dumps({"model": "toy (random tiny Wan2.1 I2V)", "frames": frames, "size": [w, h],
                      "train_s_per_step": round(train_s, 4), "sample_s_per_step_incl_decode": round(sample_s, 4),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
