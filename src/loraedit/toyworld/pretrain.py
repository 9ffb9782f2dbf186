"""Pretrain the toy world's I2V model: fit the codec, then train the transformer on the standard I2V task.

Standard I2V only (frame 0 known, every later frame generated; caption dropout for CFG), never spatial
masks: whatever use of the mask-aware condition appears later must be learned by the LoRA, as in the
paper. The job is resumable: it checkpoints model + optimiser + step atomically every few minutes and
picks up from the checkpoint when run again, so it can be spread over several sessions.

    python -m loraedit.toyworld.pretrain --work out/pretrain --minutes 60
    python -m loraedit.toyworld.pretrain --work out/pretrain --export src/loraedit/toyworld/weights
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import conditioning
from ..backends import wan_layout
from ..media import atomic_path
from . import models
from .codec import PatchCodec, fit_codec, psnr
from .scenes import HELDOUT_SEED_BASE, LEVELS, generate

FRAMES, SIZE = 17, (96, 96)
#: The first world's levels, for checkpoints written before levels existed.
FIRST_WORLD_LEVELS = (3,)


def level_of(seed: int, levels: tuple[int, ...]) -> int:
    """The difficulty level of scene ``seed`` in a mix that cycles through ``levels`` by seed
    (``(1, 1, 2)``: two scenes of level 1 for each of level 2), so every seed range holds the mix."""
    return levels[seed % len(levels)]


def parse_levels(text: str) -> tuple[int, ...]:
    """"1,1,2" -> (1, 1, 2); each must be one of the world's LEVELS."""
    try:
        levels = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--levels {text!r}: give comma-separated levels from {LEVELS}, e.g. 1,1,2") from None
    if not levels or any(lv not in LEVELS for lv in levels):
        raise SystemExit(f"--levels {text!r}: give comma-separated levels from {LEVELS}, e.g. 1,1,2")
    return levels


def render_dataset(seeds: range, cache: Path, levels: tuple[int, ...] = FIRST_WORLD_LEVELS) -> dict[str, torch.Tensor]:
    """Videos of the given seeds as one uint8 tensor [N, T, 3, H, W] plus captions (cached on disk)."""
    tag = "" if levels == FIRST_WORLD_LEVELS else "-levels" + "".join(map(str, levels))
    path = cache / f"videos-{seeds.start}-{seeds.stop}{tag}.safetensors"
    if path.is_file():
        data = load_file(str(path))
        captions = json.loads(path.with_suffix(".json").read_text())
        return {"videos": data["videos"], "captions": captions}
    videos, captions = [], []
    for seed in tqdm(seeds, desc=f"rendering {len(seeds)} scenes", dynamic_ncols=True):
        s = generate(seed, FRAMES, SIZE, level=level_of(seed, levels))
        videos.append(((s.video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        captions.append(s.caption)
    data = torch.stack(videos)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"videos": data}, str(tmp))
    path.with_suffix(".json").write_text(json.dumps(captions))
    return {"videos": data, "captions": captions}


def to_unit(videos_uint8: torch.Tensor) -> torch.Tensor:
    return videos_uint8.float() / 127.5 - 1


class Encoded:
    """Everything training needs, encoded once: target latents, standard-I2V conditions, text, CLIP."""

    def __init__(self, parts: dict, codec: PatchCodec, data: dict, batch: int = 64):
        self.latents, self.conditions, self.images = [], [], []
        mean = torch.tensor(codec.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(codec.config.latents_std).view(1, -1, 1, 1, 1)
        keep = conditioning.first_frame_keep_mask(FRAMES, SIZE[1], SIZE[0])
        mask = wan_layout.latent_keep_mask(keep, codec.config.scale_factor_spatial, 4)
        processor, clip = parts["image_processor"], parts["image_encoder"]
        with torch.no_grad():
            for i in tqdm(range(0, len(data["videos"]), batch), desc="encoding", dynamic_ncols=True):
                videos = to_unit(data["videos"][i:i + batch])  # [B, T, 3, H, W]
                x = videos.permute(0, 2, 1, 3, 4)
                self.latents.append((codec.encode(x).latent_dist.mode() - mean) / std)
                cond_video = torch.zeros_like(x)
                cond_video[:, :, 0] = x[:, :, 0]
                cond = (codec.encode(cond_video).latent_dist.mode() - mean) / std
                self.conditions.append(torch.cat([mask.expand(len(x), *mask.shape), cond], dim=1))
                pixels = processor(images=((videos[:, 0] + 1) / 2).clamp(0, 1), do_rescale=False,
                                   return_tensors="pt")["pixel_values"]
                self.images.append(clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2])
        self.latents = torch.cat(self.latents)
        self.conditions = torch.cat(self.conditions)
        self.images = torch.cat(self.images)
        self.texts = encode_captions(parts, list(data["captions"]) + [""])  # last one: the empty caption

    def __len__(self) -> int:
        return len(self.latents)

    def to(self, device: torch.device) -> Encoded:
        """Move every tensor to `device` (a GPU holds the whole encoded set: ~0.6 GB for 3,000 scenes)."""
        for name in ("latents", "conditions", "images", "texts"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def encode_captions(parts: dict, captions: list[str]) -> torch.Tensor:
    """Unique captions -> [N, 512, D] text embeddings, zero-padded after each caption's tokens."""
    tok, enc = parts["tokenizer"], parts["text_encoder"]
    out = []
    with torch.no_grad():
        for i in range(0, len(captions), 64):
            t = tok(captions[i:i + 64], padding="max_length", max_length=512, truncation=True, return_tensors="pt")
            hidden = enc(t.input_ids, t.attention_mask).last_hidden_state
            out.append(hidden * t.attention_mask[..., None])
    return torch.cat(out)


def noise_levels(n: int, gen: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """`n` logit-normal noise levels (mean 0.3, std 1 in logit space), flow-shifted by `shift` (1 = none)."""
    sigma = torch.sigmoid(torch.randn(n, generator=gen) * 1.0 + 0.3)
    return shift * sigma / (1 + (shift - 1) * sigma)


def predict_velocity(transformer, noisy: torch.Tensor, condition: torch.Tensor, sigma: torch.Tensor,
                     text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The transformer's flow velocity for noisy latents at noise levels `sigma` [B], with the I2V condition."""
    return transformer(hidden_states=torch.cat([noisy, condition], 1), timestep=sigma * 1000,
                       encoder_hidden_states=text, encoder_hidden_states_image=image, return_dict=False)[0]


def train_step(transformer, enc: Encoded, idx: torch.Tensor, gen: torch.Generator, dropout: float,
               shift: float = 1.0) -> torch.Tensor:
    """One flow-matching step of the standard I2V objective on clips `idx` (flip augmentation).

    Noise levels are logit-normal, then optionally shifted towards high noise (`s' = k s / (1 + (k-1) s)`,
    the sampler's own flow shift): the sampler spends most of its steps above 0.8, where the model must
    carry frame 0 forward, and a 180-token proxy learnt that regime faster with k = 3 (docs/RESULTS.md).
    """
    device = enc.latents.device
    x0, cond, image = enc.latents[idx], enc.conditions[idx], enc.images[idx]
    text_index = idx.clone()
    text_index[torch.rand(len(idx), generator=gen) < dropout] = len(enc.texts) - 1  # caption dropout -> CFG
    text = enc.texts[text_index]
    flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)  # mirror whole clips: new motion, same physics
    x0 = torch.where(flip.view(-1, 1, 1, 1, 1), x0.flip(-1), x0)
    cond = torch.where(flip.view(-1, 1, 1, 1, 1), cond.flip(-1), cond)
    noise = torch.randn(x0.shape, generator=gen).to(device)  # drawn on the CPU: the same numbers on any device
    sigma = noise_levels(len(idx), gen, shift).view(-1, 1, 1, 1, 1).to(device)
    noisy = (1 - sigma) * x0 + sigma * noise
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pred = predict_velocity(transformer, noisy, cond, sigma.flatten(), text, image)
    return torch.nn.functional.mse_loss(pred.float(), noise - x0)


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
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--total-steps", type=int, default=60000, help="length of the cosine schedule")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--timestep-shift", type=float, default=1.0, help="shift the training noise levels towards "
                   "high noise by this flow shift (1 = none; the held-out loss always uses none, to stay comparable)")
    p.add_argument("--device", default="cpu", help="where the transformer trains (cuda: bf16 autocast; raise --batch "
                   "and keep --lr); encoding, export, preview and diagnosis stay on the CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's). 1 keeps the job steady while "
                   "other work shares the cores: two threads wait on each other when a neighbour takes one")
    p.add_argument("--export", type=Path, help="write the model folder (fp16) from the latest checkpoint and stop")
    p.add_argument("--diagnose", action="store_true", help="print the checkpoint's clean-latent error per latent "
                   "frame and noise level on held-out scenes (does it carry frame 0 forward?), and stop")
    p.add_argument("--preview", type=Path, help="write a contact sheet of what the checkpoint generates from held-out "
                   "first frames (standard I2V), with PSNR against the real continuation, and stop")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    levels = _work_levels(work, args.levels)

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
        preview(work, parts, codec, args.preview, levels)
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
        optimizer.load_state_dict(_unflatten(load_file(str(ckpt / "optimizer.safetensors")), state["param_groups"]))
        print(f"resumed at step {state['step']}")
    transformer.to(device)  # after loading: the optimiser's state follows its parameters on the next step
    _optimizer_to(optimizer, device)
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
        loss = train_step(transformer, enc, idx, gen, dropout=0.1, shift=args.timestep_shift)
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
            _checkpoint(ckpt, transformer, optimizer, state, losses, held_enc, args.timestep_shift)
            losses, last_ckpt = [], time.perf_counter()
    _checkpoint(ckpt, transformer, optimizer, state, losses, held_enc, args.timestep_shift)
    bar.close()


def heldout_loss(transformer, enc: Encoded) -> float:
    """Mean loss on held-out scenes at fixed noise (comparable across checkpoints)."""
    transformer.eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1234)
        total = [train_step(transformer, enc, torch.arange(i, min(i + 16, len(enc))), gen, 0.0).item()
                 for i in range(0, len(enc), 16)]
    transformer.train()
    return sum(total) / len(total)


def propagation_errors(transformer, enc: Encoded, sigmas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.0)) -> dict:
    """How far the model's clean-latent estimate is from the truth, per latent frame and noise level.

    Frame 0 is given by the condition (copying it is easy); frames 1+ must be propagated from it. Beside
    each error sits the error of predicting zeros (the latent's own energy): a model that has not learnt
    to carry frame 0 forward scores near that at high noise, whatever its overall loss says.
    """
    transformer.eval()
    x0 = enc.latents
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    report = {"zero_prediction": [round(float(x0[:, :, f].pow(2).mean()), 4) for f in range(x0.shape[2])]}
    with torch.no_grad():
        for s in sigmas:
            noisy = (1 - s) * x0 + s * noise
            v = predict_velocity(transformer, noisy, enc.conditions, torch.full((len(x0),), s), enc.texts[:len(x0)],
                                 enc.images)
            err = (noisy - s * v - x0).pow(2)
            report[f"sigma {s}"] = [round(float(err[:, :, f].mean()), 4) for f in range(x0.shape[2])]
    transformer.train()
    return report


def _checkpoint(ckpt: Path, transformer, optimizer, state: dict, losses: list[float], held_enc: Encoded,
                shift: float = 1.0) -> None:
    entry = {"step": state["step"], "train_loss": round(sum(losses) / max(len(losses), 1), 5),
             "heldout_loss": round(heldout_loss(transformer, held_enc), 5), "time": time.strftime("%Y-%m-%d %H:%M")}
    if shift != 1.0:
        entry["timestep_shift"] = shift  # the training loss above is on the shifted levels
    state["log"].append(entry)
    print(f"checkpoint: {entry}", flush=True)
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()},
              str(tmp / "transformer.safetensors"))
    opt = optimizer.state_dict()
    save_file({f"{i}.{k}": v.detach().cpu().contiguous() for i, s in opt["state"].items() for k, v in s.items()},
              str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "param_groups": opt["param_groups"]}))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a loaded optimiser's state tensors beside their parameters (a CPU checkpoint resumed on a GPU)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


def _unflatten(flat: dict, groups: list) -> dict:
    per: dict[int, dict] = {}
    for key, value in flat.items():
        i, name = key.split(".", 1)
        per.setdefault(int(i), {})[name] = value
    return {"state": per, "param_groups": groups}


def preview(work: Path, parts: dict, codec: PatchCodec, out: Path, levels: tuple[int, ...] = FIRST_WORLD_LEVELS,
            scenes: int = 4, steps: int = 30) -> tuple[list[float], list[float]]:
    """What the loaded base model does on its own task: generate held-out clips from their first frame."""
    from ..backends.wan import MaskAwareWanImageToVideoPipeline, WanBackend
    from ..media import write_contact_sheet

    parts = dict(parts)
    parts["transformer"].eval().requires_grad_(False)
    pipe = MaskAwareWanImageToVideoPipeline(**{**parts, "vae": codec})
    pipe.set_progress_bar_config(disable=True)
    backend = WanBackend(pipe, work, torch.device("cpu"), torch.float32, {})
    rows, scores, static = {}, [], []
    negative = backend.encode_prompt("")
    for i in range(scenes):
        seed = HELDOUT_SEED_BASE + 500 + i
        s = generate(seed, FRAMES, SIZE, level=level_of(seed, levels))
        sample = conditioning.first_frame_condition(s.video[0], FRAMES, s.caption)
        video = backend.generate(backend.condition_tensor(sample), s.video[0], backend.encode_prompt(s.caption),
                                 negative, backend.encode_image(s.video[0]), steps=steps,
                                 guidance=models.WORLD_GUIDANCE, shift=5.0, seed=0)
        scores.append(round(psnr(video[1:], s.video[1:]), 2))
        static.append(round(psnr(s.video[:1].expand_as(s.video[1:]), s.video[1:]), 2))
        rows[f"real {i}"], rows[f"generated {i}: {scores[-1]} dB"] = s.video, video
    write_contact_sheet(out, rows, num_columns=6)
    print(f"preview: PSNR of frames 1-16, generated vs real: {scores}; a static first frame scores {static}")
    return scores, static


def diagnose(work: Path, parts: dict, codec: PatchCodec, levels: tuple[int, ...] = FIRST_WORLD_LEVELS,
             scenes: int = 16) -> dict:
    """`propagation_errors` of the loaded transformer on the first held-out scenes."""
    held = render_dataset(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 64), work / "data", levels)
    held = {"videos": held["videos"][:scenes], "captions": held["captions"][:scenes]}
    return propagation_errors(parts["transformer"], Encoded(parts, codec, held))


def export(work: Path, parts: dict, codec: PatchCodec, out: Path, args: argparse.Namespace,
           levels: tuple[int, ...] = FIRST_WORLD_LEVELS) -> None:
    """Write the loaded model as a diffusers folder (fp16 transformer) with a manifest.

    The manifest carries what a reader needs to trust or redo the weights: the commands, seeds, the
    training time, the held-out losses, the codec's held-out PSNR, what the base model generates from a
    first frame (PSNR against the real continuation, beside a static first frame) and every file's sha256.
    """
    state = json.loads((work / "checkpoint" / "state.json").read_text())
    scores, static = preview(work, parts, codec, work / "preview.png", levels)
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
                        "hours_approx": round(_hours_spent(state["log"], args.checkpoint_minutes), 2),
                        "objective": "standard I2V (frame-0 mask, zeros after), flow matching, logit-normal "
                                     "timesteps (shifted where a log entry says timestep_shift), caption dropout "
                                     "0.1, horizontal flips; never spatial masks",
                        "heldout_loss": state["log"][-1]["heldout_loss"], "log": state["log"],
                        "command": command},
        "codec": {**fit, "command": "fitted in closed form by the same script on first run (fit_codec, 4x spatial)"},
        "base_model_preview": {"what": "standard I2V from held-out first frames, 30 UniPC steps, shift 5, "
                                       f"guidance {models.WORLD_GUIDANCE:g} (the model's own)",
                               "psnr_frames_1_16_db": scores, "static_first_frame_db": static},
        "clean_latent_error_per_latent_frame": {"what": "16 held-out scenes; frame 0 is given, 1-4 propagated",
                                                **errors},
        "export_command": f"python -m loraedit.toyworld.pretrain --work {work} --export {out}"})
    print(f"exported {out}")


def _work_levels(work: Path, requested: str | None) -> tuple[int, ...]:
    """The levels of a --work: fixed by its first run (kept in the checkpoint's state), so a resumed run
    and its export, preview and diagnosis see the same world; a different --levels there is refused."""
    state_file = work / "checkpoint" / "state.json"
    stored = None
    if state_file.is_file():
        stored = tuple(json.loads(state_file.read_text()).get("levels", FIRST_WORLD_LEVELS))
    levels = parse_levels(requested) if requested else (stored or FIRST_WORLD_LEVELS)
    if stored is not None and levels != stored:
        raise SystemExit(f"--levels {requested}: {work} was trained on levels {','.join(map(str, stored))}; "
                         f"use those, or a new --work")
    return levels


def _step_before(log: list[dict], entry: dict) -> int:
    """The step of the log entry before `entry` (0 if it is the first)."""
    i = log.index(entry)
    return log[i - 1]["step"] if i else 0


def _hours_spent(log: list[dict], checkpoint_minutes: float) -> float:
    """Training time from the checkpoint log: gaps within a run, plus one interval per run's start."""
    times = [time.mktime(time.strptime(e["time"], "%Y-%m-%d %H:%M")) for e in log]
    seconds = checkpoint_minutes * 60.0
    for a, b in zip(times, times[1:]):
        gap = b - a
        seconds += gap if gap <= 3 * checkpoint_minutes * 60 else checkpoint_minutes * 60  # a new run began
    return seconds / 3600


if __name__ == "__main__":
    main()
