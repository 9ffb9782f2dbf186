"""What a pretrained checkpoint does, and its export: a preview of generated held-out clips, the
per-frame diagnosis, and the diffusers folder with a manifest (`--preview`, `--diagnose`, `--export`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .. import conditioning
from . import models
from .codec import PatchCodec
from .pretrain_data import FIRST_WORLD_LEVELS, FRAMES, SIZE, Encoded, level_of, render_dataset
from .pretrain_objective import heldout_loss, propagation_errors
from .scenes import HELDOUT_SEED_BASE, generate


def preview(work: Path, parts: dict, codec: PatchCodec, out: Path, levels: tuple[int, ...] = FIRST_WORLD_LEVELS,
            scenes: int = 4, steps: int = 30) -> dict[str, list[float]]:
    """What the loaded base model does on its own task: generate held-out clips from their first frame.

    Every scene is scored against the real continuation, beside a static first frame: PSNR of frames 1-16
    ("psnr", "static") and the same inside the edited object's boxes ("box_psnr", "box_static"), where a
    base that blurs or drops the moving object loses most and a background carried forward hides nothing.
    The contact sheet shows the first four."""
    from ..metrics import masked_psnr
    from ..backends.wan import MaskAwareWanImageToVideoPipeline, WanBackend
    from ..media import write_contact_sheet

    parts = dict(parts)
    parts["transformer"].eval().requires_grad_(False)
    pipe = MaskAwareWanImageToVideoPipeline(**{**parts, "vae": codec})
    pipe.set_progress_bar_config(disable=True)
    backend = WanBackend(pipe, work, torch.device("cpu"), torch.float32, {})
    rows, scores = {}, {"psnr": [], "static": [], "box_psnr": [], "box_static": []}
    negative = backend.encode_prompt("")
    for i in range(scenes):
        seed = HELDOUT_SEED_BASE + 500 + i
        s = generate(seed, FRAMES, SIZE, level=level_of(seed, levels))
        sample = conditioning.first_frame_condition(s.video[0], FRAMES, s.caption)
        video = backend.generate(backend.condition_tensor(sample), s.video[0], backend.encode_prompt(s.caption),
                                 negative, backend.encode_image(s.video[0]), steps=steps,
                                 guidance=models.WORLD_GUIDANCE, shift=5.0, seed=0)
        real, generated, copy, boxes = s.video[1:], video[1:], s.video[:1].expand_as(s.video[1:]), s.box_masks[1:]
        for key, clip, weight in (("psnr", generated, None), ("static", copy, None), ("box_psnr", generated, boxes),
                                  ("box_static", copy, boxes)):
            scores[key].append(round(masked_psnr(clip, real, weight), 2))
        if i < 4:
            rows[f"real {i}"], rows[f"generated {i}: {scores['psnr'][-1]} dB"] = s.video, video
    write_contact_sheet(out, rows, num_columns=6)
    gains = [a - b for a, b in zip(scores["psnr"], scores["static"])]
    box_gains = [a - b for a, b in zip(scores["box_psnr"], scores["box_static"])]
    print(f"preview: PSNR of frames 1-16, generated vs real: {scores['psnr']}; a static first frame scores "
          f"{scores['static']}; mean gain {sum(gains) / len(gains):+.2f} dB, above the static copy in "
          f"{sum(g > 0 for g in gains)} of {len(gains)}, by >= 2 dB in {sum(g >= 2 for g in gains)}; inside the "
          f"edited object's boxes: {scores['box_psnr']} against {scores['box_static']}, mean gain "
          f"{sum(box_gains) / len(box_gains):+.2f} dB")
    return scores


def diagnose(work: Path, parts: dict, codec: PatchCodec, levels: tuple[int, ...] = FIRST_WORLD_LEVELS,
             scenes: int = 16) -> dict:
    """`propagation_errors` of the loaded transformer on the first held-out scenes, and its held-out losses
    on all of them (over every latent and over the moving cells)."""
    held = render_dataset(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 64), work / "data", levels)
    encoded = Encoded(parts, codec, held)
    losses = {f"heldout_loss_{k}": round(v, 5) for k, v in heldout_loss(parts["transformer"], encoded).items()}
    first = {"videos": held["videos"][:scenes], "captions": held["captions"][:scenes]}
    return {**losses, **propagation_errors(parts["transformer"], Encoded(parts, codec, first))}


def export(work: Path, parts: dict, codec: PatchCodec, out: Path, args: argparse.Namespace,
           levels: tuple[int, ...] = FIRST_WORLD_LEVELS) -> None:
    """Write the loaded model as a diffusers folder (fp16 transformer) with a manifest.

    The manifest carries what a reader needs to trust or redo the weights: the commands, seeds, the
    training time, the held-out losses, the codec's held-out PSNR, what the base model generates from a
    first frame (PSNR against the real continuation, beside a static first frame) and every file's sha256.
    """
    state = json.loads((work / "checkpoint" / "state.json").read_text())
    scores = preview(work, parts, codec, work / "preview.png", levels)
    errors = diagnose(work, parts, codec, levels)
    parts["vae"] = codec
    fit = json.loads((work / "codec" / "fit.json").read_text())
    command = (f"python -m loraedit.toyworld.pretrain --work {work} --scenes {args.scenes} --batch {args.batch} "
               f"--lr {args.lr} --total-steps {args.total_steps} --levels {','.join(map(str, levels))} "
               f"--minutes M  (repeated until step {state['step']})")
    shifted = [e for e in state["log"] if e.get("timestep_shift", 1.0) != 1.0]
    if shifted:  # the log says from which checkpoint on the training noise levels were shifted
        first = shifted[0]
        command += (f"; --timestep-shift {first['timestep_shift']:g} from the run after step "
                    f"{_step_before(state['log'], first)}")
    models.write_world_folder(out, parts, manifest={
        "pretraining": {"steps": state["step"], "batch": args.batch, "lr": args.lr, "schedule":
                        f"500-step warm-up, cosine over {args.total_steps} steps", "training_scenes": args.scenes,
                        "seeds": {"torch": 0, "batch_and_noise": "step number", "scenes": f"0..{args.scenes - 1}",
                                  "heldout_scenes": f"{HELDOUT_SEED_BASE}.."},
                        "frames": FRAMES, "size": list(SIZE), "device": "CPU, 2 cores",
                        "levels": list(levels),
                        "worlds": state.get("worlds", [{"from_step": 0, "levels": list(levels)}]),
                        "hours_approx": round(hours_spent(state["log"], args.checkpoint_minutes), 2),
                        "objective": "standard I2V (frame-0 mask, zeros after), flow matching, logit-normal "
                                     "timesteps (shifted where a log entry says timestep_shift), caption dropout "
                                     "0.1, horizontal flips; never spatial masks",
                        "heldout_loss": state["log"][-1]["heldout_loss"], "log": state["log"],
                        "command": command},
        "codec": {**fit, "command": "fitted in closed form by the same script on first run (fit_codec, 4x spatial)"},
        "base_model_preview": {"what": "standard I2V from held-out first frames, 30 UniPC steps, shift 5, "
                                       f"guidance {models.WORLD_GUIDANCE:g} (the model's own)",
                               "psnr_frames_1_16_db": scores["psnr"], "static_first_frame_db": scores["static"],
                               "inside_edited_object_boxes": {"psnr_db": scores["box_psnr"],
                                                              "static_first_frame_db": scores["box_static"]}},
        "clean_latent_error_per_latent_frame": {"what": "16 held-out scenes; frame 0 is given, 1-4 propagated",
                                                **errors},
        "export_command": f"python -m loraedit.toyworld.pretrain --work {work} --export {out}"},
        level=max(levels, key=levels.count))  # the level most of its clips came from
    print(f"exported {out}")


def _step_before(log: list[dict], entry: dict) -> int:
    """The step of the log entry before `entry` (0 if it is the first)."""
    i = log.index(entry)
    return log[i - 1]["step"] if i else 0


def hours_spent(log: list[dict], checkpoint_minutes: float) -> float:
    """Training time from the checkpoint log: gaps within a run, plus one interval per run's start."""
    times = [time.mktime(time.strptime(e["time"], "%Y-%m-%d %H:%M")) for e in log]
    seconds = checkpoint_minutes * 60.0
    for a, b in zip(times, times[1:]):
        gap = b - a
        seconds += gap if gap <= 3 * checkpoint_minutes * 60 else checkpoint_minutes * 60  # a new run began
    return seconds / 3600
