"""Pretrain the toy world's I2V model: fit the codec, then train the transformer on the standard I2V task.

Standard I2V only (frame 0 known, every later frame generated; caption dropout for CFG), never spatial
masks: whatever use of the mask-aware condition appears later must be learned by the LoRA, as in the
paper. The job is resumable: it checkpoints model + optimiser + step atomically every few minutes and
picks up from the checkpoint when run again, so it can be spread over several sessions.

    python -m loraedit.toyworld.pretrain --work out/pretrain --minutes 60
    python -m loraedit.toyworld.pretrain --work out/pretrain --export src/loraedit/toyworld/weights
"""
# This module is the command and its loop (the docstring above is its --help). The pieces live beside it:
# `pretrain_data` (scenes rendered and encoded once), `pretrain_objective` (the loss and the held-out
# measures), `pretrain_checkpoint` (the state on disk, the levels of a --work) and `pretrain_export`
# (preview, diagnosis, the exported folder).

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from . import models
from .codec import PatchCodec, fit_codec, psnr
from .pretrain_checkpoint import (
    optimizer_to,
    save_checkpoint,
    switch_levels,
    unflatten_optimizer_state,
    work_levels,
)
from .pretrain_data import Encoded, render_dataset, to_unit
from .pretrain_export import diagnose, export, preview
from .pretrain_objective import train_step
from .scenes import HELDOUT_SEED_BASE


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("out/pretrain"), help="checkpoints, data cache, logs")
    p.add_argument("--minutes", type=float, default=30.0, help="train this long, then checkpoint and stop")
    p.add_argument("--steps", type=int, help="train at most this many steps in this run, then checkpoint and stop "
                   "(a device session's fixed budget; the schedule still follows --total-steps)")
    p.add_argument("--scenes", type=int, default=3000, help="training scenes (seeds 0..N-1)")
    p.add_argument("--codec-scenes", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--balance-first-frame", action="store_true", help="when fitting a new codec (a new --work): "
                   "give frame 0's latents the spread of the later ones (docs/RESULTS.md, variant V1)")
    p.add_argument("--levels", help="difficulty levels of the training scenes, cycled by seed (e.g. 1,1,2: two "
                   "of level 1 for each of level 2); fixed by the first run of a --work (default 3, the first world)")
    p.add_argument("--switch-levels", metavar="LEVELS", help="continue a --work's checkpoint on another world "
                   "(e.g. 0): its state takes these levels from its current step on, and records the switch")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--total-steps", type=int, default=60000, help="length of the cosine schedule")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--timestep-shift", type=float, default=1.0, help="shift the training noise levels towards "
                   "high noise by this flow shift (1 = none; the held-out loss always uses none, to stay comparable)")
    p.add_argument("--motion-weight", type=float, default=0.0, help="weight the loss on latent cells that moved "
                   "since frame 0 by 1 + this (0 = the plain mean; the held-out losses stay unweighted)")
    p.add_argument("--device", default="cpu", help="where the transformer trains (cuda: bf16 autocast; raise --batch "
                   "and keep --lr); encoding, export, preview and diagnosis stay on the CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's). 1 keeps the job steady while "
                   "other work shares the cores: two threads wait on each other when a neighbour takes one")
    p.add_argument("--export", type=Path, help="write the model folder (fp16) from the latest checkpoint and stop")
    p.add_argument("--diagnose", action="store_true", help="print the checkpoint's clean-latent error per latent "
                   "frame and noise level on held-out scenes (does it carry frame 0 forward?), and stop")
    p.add_argument("--preview", type=Path, help="write a contact sheet of what the checkpoint generates from held-out "
                   "first frames (standard I2V), with PSNR against the real continuation, and stop")
    p.add_argument("--preview-scenes", type=int, default=4, help="held-out scenes --preview scores (the sheet shows "
                   "the first four)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.switch_levels:
        switch_levels(work, args.switch_levels)
    levels = work_levels(work, args.levels)

    # 1. The codec: fitted once, in closed form, on its own scenes; held-out PSNR recorded.
    codec_dir = work / "codec"
    if not (codec_dir / "config.json").is_file():
        started = time.perf_counter()
        fit = render_dataset(range(0, args.codec_scenes), work / "data", levels)
        codec = fit_codec([to_unit(v) for v in fit["videos"]], spatial=4,  # 8x caps the world near 21 dB
                          balance_first_frame=args.balance_first_frame)
        held = render_dataset(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 100), work / "data", levels)
        x = to_unit(held["videos"]).permute(0, 2, 1, 3, 4)
        score = psnr(x, codec.decode(codec.encode(x).latent_dist.mode()).sample)
        codec.save_pretrained(codec_dir)
        (codec_dir / "fit.json").write_text(json.dumps({"heldout_psnr_db": round(score, 2), "fit_scenes":
                                                        args.codec_scenes, "seconds": round(time.perf_counter() - started, 1),
                                                        "balance_first_frame": args.balance_first_frame}))
        print(f"codec: held-out PSNR {score:.2f} dB")
    codec = PatchCodec.from_pretrained(codec_dir)

    parts = models.build_world_components(seed=0)
    transformer = parts["transformer"]
    if args.export or args.preview or args.diagnose:  # each reads the latest checkpoint, loaded once here
        transformer.load_state_dict(load_file(str(work / "checkpoint" / "transformer.safetensors")))
    if args.export:
        export(work, parts, codec, args.export, args, levels)
        return
    if args.preview:
        preview(work, parts, codec, args.preview, levels, scenes=args.preview_scenes)
        return
    if args.diagnose:
        print(json.dumps(diagnose(work, parts, codec, levels), indent=1))
        return

    # 2. Encode the training scenes once.
    data = render_dataset(range(0, args.scenes), work / "data", levels)
    device = torch.device(args.device)
    enc = Encoded(parts, codec, data).to(device)
    held = render_dataset(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 64), work / "data", levels)
    held_enc = Encoded(parts, codec, held).to(device)

    # 3. Resume.
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    state = {"step": 0, "log": [], "levels": list(levels)}
    ckpt = work / "checkpoint"
    if (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        transformer.load_state_dict(load_file(str(ckpt / "transformer.safetensors")))
        optimizer.load_state_dict(unflatten_optimizer_state(load_file(str(ckpt / "optimizer.safetensors")), state["param_groups"]))
        print(f"resumed at step {state['step']}")
    transformer.to(device)  # after loading: the optimiser's state follows its parameters on the next step
    optimizer_to(optimizer, device)
    n_params = sum(p.numel() for p in transformer.parameters())
    print(f"transformer: {n_params / 1e6:.2f}M parameters; {len(enc)} training clips")

    # 4. Train for the time budget.
    deadline = time.perf_counter() + args.minutes * 60
    last_ckpt = time.perf_counter()
    transformer.train()
    bar = tqdm(desc="pretraining", initial=state["step"], total=args.total_steps, dynamic_ncols=True,
               mininterval=30)  # a log of hours, not of every step
    losses = []
    stop_at = args.total_steps if args.steps is None else min(args.total_steps, state["step"] + args.steps)
    while time.perf_counter() < deadline and state["step"] < stop_at:
        step = state["step"]
        gen = torch.Generator().manual_seed(step)
        lr = args.lr * min(1.0, (step + 1) / 500) * 0.5 * (1 + math.cos(math.pi * step / args.total_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(enc), (args.batch,), generator=gen)
        loss = train_step(transformer, enc, idx, gen, dropout=0.1, shift=args.timestep_shift,
                          motion_weight=args.motion_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        state["step"] = step + 1
        bar.update(1)
        if state["step"] % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", lr=f"{lr:.2e}")
        if time.perf_counter() - last_ckpt > args.checkpoint_minutes * 60:
            save_checkpoint(ckpt, transformer, optimizer, state, losses, held_enc, args.timestep_shift,
                            args.motion_weight)
            losses, last_ckpt = [], time.perf_counter()
    save_checkpoint(ckpt, transformer, optimizer, state, losses, held_enc, args.timestep_shift, args.motion_weight)
    bar.close()


if __name__ == "__main__":
    main()
