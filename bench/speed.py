"""`make bench`: how fast and how lean loraedit trains and samples on this machine, against a naive loop.

Everything runs in one process, side by side, on the toy world's model (the pretrained folder when it is
committed, else the same architecture with random weights: the speed is the same) and a 17x96x96
toy-world clip:

- the machine: threads and measured float32 matmul throughput (GFLOP/s);
- encoding: a first encode of the clip (VAE, text, CLIP) and the second, read from the content cache;
- training: s/step and peak RSS of a naive reference loop (re-encodes the clip with the VAE, text and CLIP
  encoders every step; gradients for every weight; no gradient checkpointing; textbook attention;
  for-loop AdamW) and of loraedit's loop (cached encodings, encoders freed, LoRA-only gradients, SDPA
  attention, foreach AdamW), with checkpointing on every block (the GPU default), on every block keeping
  the self-attention outputs (`--keep-attention`), and off (the CPU default); the FLOPs of a
  step from `loraedit.perfmodel` over the measured time and the machine's matmul throughput;
- sampling: s/step of the naive path (prompts and image encoded per call, cond and uncond as two
  forwards, textbook attention) and of loraedit's (cached embeddings, batched CFG), decoding included,
  and of loraedit's with diffusers' First Block Cache at 0.1 (approximate: the share of blocks it
  skipped is printed beside it);
- the cost model checked on this model (activation bytes counted with saved-tensor hooks), and the
  modelled Wan2.1-I2V-14B table (see docs/PERFORMANCE.md: modelled, not measured here).

Peak RSS is the kernel's high-water mark (VmHWM), reset before each phase through /proc/self/clear_refs.
Prints a human table and one JSON line; `--json PATH` also writes the JSON. Takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from loraedit import conditioning, lora_io, perfmodel, perftables
from loraedit.encoding import Encoder
from loraedit.step_cache import StepCache
from loraedit.backends.wan import WanBackend, load_wan
from loraedit.performance import ALL_BLOCKS, PerformanceConfig
from loraedit.train import TrainConfig, flow_matching_loss, sample_sigma, train_lora

PROMPT = "p3rs0n, a red square on a striped background"
NAIVE_PERF = PerformanceConfig(attention="_native_math", checkpoint_blocks=0, batched_cfg=False)
#: The sampling row that is not exact: diffusers' First Block Cache (its quality: docs/PERFORMANCE.md).
FIRST_BLOCK_CACHE = 0.1
CACHED = f"loraedit, --first-block-cache {FIRST_BLOCK_CACHE} (approximate)"


# ---- the machine ----------------------------------------------------------------------------------------


def matmul_gflops(n: int = 1024, seconds: float = 2.0) -> float:
    """float32 n x n matmul throughput with torch's current threads (the best of repeated runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best / 1e9


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


class PeakRSS:
    """Peak resident memory of a phase: the kernel's high-water mark, reset when the phase starts."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.resettable = True
        except OSError:
            self.resettable = False
        self.start_mib = _status_kib("VmRSS") / 1024
        return self

    def __exit__(self, *exc):
        self.peak_mib = _status_kib("VmHWM") / 1024
        self.above_start_mib = self.peak_mib - self.start_mib


# ---- the model and the clip ---------------------------------------------------------------------------------


def world_model_folder(cache: Path) -> Path:
    """The toy world's model folder: the committed pretrained one, else its architecture with random weights."""
    from loraedit.toyworld import models

    if (models.WORLD_WEIGHTS / "model_index.json").is_file():
        return models.WORLD_WEIGHTS
    path = cache / "world-random"
    if not (path / "model_index.json").is_file():
        from loraedit.backends.wan import MaskAwareWanImageToVideoPipeline
        from loraedit.toyworld.codec import PatchCodec

        parts = models.build_world_components(seed=0)
        parts["vae"] = PatchCodec(z_dim=16, scale_factor_spatial=4, scale_factor_temporal=4)
        MaskAwareWanImageToVideoPipeline(**parts).save_pretrained(path, safe_serialization=True)
        (path / "loraedit_model.json").write_text(json.dumps(
            {"working_size": list(models.WORLD_SIZE), "frames": models.WORLD_FRAMES, "note": "random weights"}))
    return path


def bench_clip(backend: WanBackend):
    """A clip at the model's working size: a toy-world scene at 96x96, else the moving square."""
    w, h = backend.working_size
    frames = backend.default_frames
    if (w, h) == (96, 96):
        from loraedit.toyworld.scenes import HELDOUT_SEED_BASE, generate

        scene = generate(HELDOUT_SEED_BASE + 7, frames, (w, h))
        return scene.video, scene.box_masks, scene.edited_first_frame
    from loraedit.toyworld.square import moving_square

    clip = moving_square(0, frames, (w, h))
    return clip.video, clip.masks, clip.edited_first_frame


def step_times(backend: WanBackend) -> list[float]:
    """Record the time of every `predict` call: differences are whole steps (forward, backward, update)."""
    stamps: list[float] = []
    original = backend.predict

    def timed(*args, **kwargs):
        stamps.append(time.perf_counter())
        return original(*args, **kwargs)

    backend.predict = timed
    return stamps


def per_step(stamps: list[float], skip: int = 2) -> float:
    """Median seconds between successive steps, after `skip` warm-up steps."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][skip:]
    return statistics.median(gaps)


# ---- the naive reference ---------------------------------------------------------------------------------------


def _keep_fastest(table: dict, name: str, seconds: float, rss: PeakRSS) -> None:
    """Record a round: the fastest s/step over the rounds, the largest memory."""
    row = table.setdefault(name, {"s_per_step": seconds, "peak_rss_mib": 0.0, "rss_above_start_mib": 0.0})
    row["s_per_step"] = min(row["s_per_step"], seconds)
    row["peak_rss_mib"] = max(row["peak_rss_mib"], rss.peak_mib)
    row["rss_above_start_mib"] = max(row["rss_above_start_mib"], rss.above_start_mib)


def naive_training(backend: WanBackend, video, masks, steps: int, cfg: TrainConfig) -> float:
    """A training loop without loraedit's optimisations; returns seconds per step."""
    transformer = backend.transformer("transformer")
    backend.place_transformers()
    torch.manual_seed(0)
    lora_io.add_lora(transformer, lora_io.LoraSettings(cfg.rank, cfg.alpha, cfg.targets or backend.default_lora_targets, "bench",
                                                              backend.kind))
    lora = [p for p in transformer.parameters() if p.requires_grad]
    transformer.requires_grad_(True)  # naive: every weight gets a gradient (only the LoRA is updated)
    optimizer = torch.optim.AdamW(lora, lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  foreach=False)
    transformer.train()
    gen = torch.Generator().manual_seed(0)
    stamps = []
    for _ in range(steps):
        stamps.append(time.perf_counter())
        sample = conditioning.motion_sample(video, masks, PROMPT)
        x0 = backend.encode_video(sample.target)[None]  # the VAE, every step
        condition = backend.condition_tensor(sample)[None]  # the VAE again
        text = backend.encode_prompt(sample.prompt)[None]  # the text encoder, every step
        image = backend.encode_image(sample.clip_image)
        image = None if image is None else image[None]  # CLIP, every step
        noise = torch.randn(x0.shape, generator=gen)
        sigma = sample_sigma(gen, 0.0, 1.0, "uniform", 1.0)
        pred = backend.predict(transformer, (1 - sigma) * x0 + sigma * noise, condition, sigma * 1000, text, image)
        loss = flow_matching_loss(pred, x0, noise)
        optimizer.zero_grad(set_to_none=True)
        transformer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, cfg.grad_clip)
        optimizer.step()
    stamps.append(time.perf_counter())
    transformer.requires_grad_(False)
    for p in lora:
        p.requires_grad_(True)
    transformer.eval()
    return per_step(stamps)


def naive_sampling(backend: WanBackend, video, masks, first, steps: int) -> float:
    """The stock path: prompts and image encoded for the call, cond and uncond as two forwards."""
    started = time.perf_counter()
    condition = conditioning.mask_aware_condition(video, masks, first, PROMPT)
    text, negative = backend.encode_prompt(PROMPT), backend.encode_prompt("")
    image = backend.encode_image(condition.clip_image)
    backend.generate(backend.condition_tensor(condition), first, text, negative, image, steps=steps, guidance=5.0,
                     shift=5.0, seed=0)
    return (time.perf_counter() - started) / steps


# ---- the bench ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="world", help="world (default: the toy world's model), toy-random (a "
                        "tiny random Wan2.1 with Wan's own VAE and UMT5 and CLIP encoders), or a model folder")
    parser.add_argument("--train-steps", type=int, default=24, help="steps of loraedit's loop per variant")
    parser.add_argument("--naive-steps", type=int, default=12, help="steps of the naive reference loop")
    parser.add_argument("--sample-steps", type=int, default=12, help="sampling steps per sampler")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement; the fastest counts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if min(args.train_steps, args.naive_steps, args.sample_steps) < 4:
        parser.error("--train-steps, --naive-steps and --sample-steps need at least 4 (2 warm-up steps, then the "
                     "timed gaps)")
    torch.manual_seed(0)
    cfg = TrainConfig(stage1_steps=args.train_steps, checkpoint_every=0)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "load_average_at_start": Path("/proc/loadavg").read_text().split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = world_model_folder(tmp) if args.model == "world" else None
        if model_dir is None:
            from loraedit.backends import resolve_model_dir

            model_dir = resolve_model_dir(args.model)
        print("measuring matmul throughput ...", file=sys.stderr)
        results["matmul_gflops"] = round(matmul_gflops(), 1)

        # 1. Encoding: once, then from the content cache.
        ours = load_wan(model_dir)
        video, masks, first = bench_clip(ours)
        transformer_cfg = dict(ours.transformer("transformer").config)
        results["model"] = {"folder": str(model_dir), "frames": int(video.shape[0]),
                            "size": list(ours.working_size), "kind": ours.kind,
                            "parameters": sum(p.numel() for p in ours.transformer("transformer").parameters())}
        print(f"model {model_dir.name}: {results['model']['parameters']:,} parameters, "
              f"{video.shape[0]}x{video.shape[2]}x{video.shape[3]} clip", file=sys.stderr)
        motion = conditioning.motion_sample(video, masks, PROMPT)
        inference = conditioning.mask_aware_condition(video, masks, first, PROMPT)
        timings = {}
        for attempt in ("first", "cached"):
            started = time.perf_counter()
            encoder = Encoder(ours, tmp / "cache", "maxpool")
            encoded, cond, negative = encoder.sample(motion), encoder.sample(inference), encoder.prompt("")
            timings[attempt] = time.perf_counter() - started
        results["encode_s"] = {k: round(v, 4) for k, v in timings.items()}
        ours.free_encoders()

        # 2. Training, in rounds: the naive loop, then ours without and with checkpointing, again and again.
        #    Each variant keeps its fastest round: a busy neighbour on a shared machine only ever slows one.
        variants = {"naive": NAIVE_PERF, "loraedit": PerformanceConfig(),  # on a CPU: no gradient checkpointing
                    "loraedit, checkpointing every block (the GPU default)":
                        PerformanceConfig(checkpoint_blocks=ALL_BLOCKS),
                    "loraedit, checkpointing every block, --keep-attention":
                        PerformanceConfig(checkpoint_blocks=ALL_BLOCKS, keep_attention=True)}
        train: dict = {}
        for round_ in range(args.rounds):
            for name, perf in variants.items():
                print(f"training, round {round_ + 1}: {name} ...", file=sys.stderr)
                backend = load_wan(model_dir, perf=perf)
                with PeakRSS() as rss:
                    if name == "naive":
                        seconds = naive_training(backend, video, masks, args.naive_steps, cfg)
                    else:
                        backend.free_encoders()
                        stamps = step_times(backend)
                        train_lora(backend, [encoded], [], cfg, tmp / f"{round_}-{name[:12]}", progress=False)
                        seconds = per_step(stamps)
                _keep_fastest(train, name, seconds, rss)
                if name == "naive":
                    naive = backend
                elif "every block" not in name:
                    trained = backend  # samples with its LoRA attached, as the naive backend does
        naive_s = train["naive"]["s_per_step"]
        dims = perfmodel.WanDims.from_config(transformer_cfg)
        clip = perfmodel.Clip(encoded.target[0].numel() // dims.patch[0] // dims.patch[1] // dims.patch[2],
                              image_tokens=0 if encoded.image is None else encoded.image.shape[0], rank=cfg.rank)
        for name, row in train.items():
            perf = variants[name]
            ckpt = None if perf.checkpoint_blocks == ALL_BLOCKS else 0
            flops = perfmodel.train_step_flops(dims, clip, ckpt, flash=name != "naive",
                                               keep_attention=perf.keep_attention)["total"]
            row["gflop_per_step"] = flops / 1e9
            row["speedup_vs_naive"] = naive_s / row["s_per_step"]
        results["train"] = train
        results["tokens"] = clip.tokens

        # 3. Sampling, in rounds: naive (encode per call, two forwards a step), ours (cached, batched CFG).
        for b in (naive, trained):
            b.pipe.set_progress_bar_config(disable=True)
        sample: dict = {}
        for round_ in range(args.rounds):
            print(f"sampling, round {round_ + 1} ...", file=sys.stderr)
            with PeakRSS() as rss:
                seconds = naive_sampling(naive, video, masks, first, args.sample_steps)
            _keep_fastest(sample, "naive", seconds, rss)
            for name, threshold in (("loraedit", 0.0), (CACHED, FIRST_BLOCK_CACHE)):
                with PeakRSS() as rss:
                    started = time.perf_counter()
                    trained.generate(cond.condition, first, cond.text, negative, cond.image,
                                     steps=args.sample_steps, guidance=5.0, shift=5.0, seed=0,
                                     step_cache=StepCache("first-block", threshold) if threshold else None)
                    seconds = (time.perf_counter() - started) / args.sample_steps
                _keep_fastest(sample, name, seconds, rss)
            sample[CACHED]["blocks_skipped"] = trained.last_block_counter.skipped_fraction
        for name in ("loraedit", CACHED):
            sample[name]["speedup_vs_naive"] = sample["naive"]["s_per_step"] / sample[name]["s_per_step"]
        results["sample"] = sample

        # 3b. --keep-attention by clip length: at 720 tokens the selective-checkpointing policy's per-op
        #     Python call costs more than the attention it saves; the longer the clip, the more it saves.
        results["keep_attention"] = keep_attention_by_length(model_dir, encoded, clip, args.rounds)
        # 4. The cost model on this model: activation bytes counted vs modelled (bf16 autocast, as on a GPU).
        results["model_check"] = activation_check(model_dir, dims, clip, encoded)
        # The machine's throughput again: a busy neighbour during the first measurement would inflate every share.
        results["matmul_gflops"] = round(max(results["matmul_gflops"], matmul_gflops()), 1)
        results["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[0]
        for row in train.values():
            row["fraction_of_matmul"] = row["gflop_per_step"] / row["s_per_step"] / results["matmul_gflops"]
    results["wan14b"] = perftables.table_14b()
    print(report(results))
    print(json.dumps({k: v for k, v in results.items() if k != "wan14b"}, default=float))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return results


def keep_attention_by_length(model_dir: Path, encoded, clip, rounds: int) -> list[dict]:
    """s per training forward + backward (random latents, checkpointing every block) with and without
    `--keep-attention`, at the clip's length and at 4 times as many latent frames; the fastest of `rounds`."""
    from loraedit.performance import set_gradient_checkpointing

    backend = load_wan(model_dir)
    backend.place_transformers()
    transformer = backend.transformer("transformer")
    torch.manual_seed(0)
    lora_io.add_lora(transformer, lora_io.LoraSettings(clip.rank, clip.rank, backend.default_lora_targets, "b", "k"),
                     dtype=torch.float32)
    c, t, h, w = encoded.target.shape
    image = None if encoded.image is None else encoded.image[None]
    rows = []
    for frames in (t, 4 * t):
        g = torch.Generator().manual_seed(frames)
        latents = torch.randn(1, c, frames, h, w, generator=g)
        condition = torch.randn(1, encoded.condition.shape[0], frames, h, w, generator=g)
        best = {}
        for _ in range(rounds):
            for keep in (False, True):
                set_gradient_checkpointing(transformer, None, keep)
                started = time.perf_counter()
                backend.predict(transformer, latents, condition, torch.tensor([500.0]), encoded.text[None],
                                image).square().mean().backward()
                best[keep] = min(best.get(keep, float("inf")), time.perf_counter() - started)
        rows.append({"latent_frames": frames, "tokens": clip.tokens * frames // t, "s_checkpointing": best[False],
                     "s_keep_attention": best[True], "speedup": best[False] / best[True]})
    return rows


def activation_check(model_dir: Path, dims, clip, encoded) -> dict:
    """Bytes autograd saves in one bf16-autocast step of this model: counted vs modelled, at the clip's
    length and at other lengths (random latents), with flash-type SDPA and with textbook attention."""
    from loraedit.performance import set_gradient_checkpointing

    out: dict = {"at_clip": {}, "by_latent_frames": []}
    c, t, h, w = encoded.target.shape
    for name, ckpt, attention, keep in (("checkpointing", None, "native", False),
                                        ("checkpointing, --keep-attention", None, "native", True),
                                        ("no checkpointing", 0, "native", False),
                                        ("no checkpointing, textbook attention", 0, "_native_math", False)):
        backend = load_wan(model_dir, dtype=torch.bfloat16, perf=PerformanceConfig(attention=attention))
        backend.place_transformers()
        transformer = backend.transformer("transformer")
        torch.manual_seed(0)
        settings = lora_io.LoraSettings(clip.rank, clip.rank, backend.default_lora_targets, "b", "k")
        lora_io.add_lora(transformer, settings, dtype=torch.float32)
        set_gradient_checkpointing(transformer, ckpt, keep)
        image = None if encoded.image is None else encoded.image[None].bfloat16()
        kind = "flash" if attention == "native" else "math"
        for frames in sorted({1, 2, t, 2 * t, 4 * t}):
            g = torch.Generator().manual_seed(frames)
            latents = torch.randn(1, c, frames, h, w, generator=g).bfloat16()
            condition = torch.randn(1, encoded.condition.shape[0], frames, h, w, generator=g).bfloat16()

            def step():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    backend.predict(transformer, latents, condition, torch.tensor([500.0]),
                                    encoded.text[None].bfloat16(), image)

            tokens = clip.tokens * frames // t
            counted = perfmodel.saved_activation_bytes(transformer, step)
            size = perfmodel.Clip(tokens, image_tokens=clip.image_tokens, rank=clip.rank)
            modelled = perfmodel.train_step_memory(dims, size, "full", ckpt, attention=kind,
                                                   keep_attention=keep)["activations"]
            row = {"counted_mib": counted / 2**20, "modelled_mib": modelled * perfmodel.GIB / 2**20}
            if frames == t:
                out["at_clip"][name] = {**row, "ratio": row["modelled_mib"] / row["counted_mib"]}
            out["by_latent_frames"].append({"mode": name, "latent_frames": frames, "tokens": tokens, **row})
    return out


def report(r: dict) -> str:
    m, t, s = r["model"], r["train"], r["sample"]
    lines = [
        "",
        f"loraedit bench, {r['date']}: torch {r['torch']}, {r['threads']} threads, "
        f"float32 matmul {r['matmul_gflops']:.1f} GFLOP/s (best of the start and the end of the bench), "
        f"load average {r['load_average_at_start']} at the start, {r['load_average_at_end']} at the end; "
        "each s/step is the fastest of the rounds",
        f"model: {Path(m['folder']).name} ({m['parameters']:,} transformer parameters), {m['frames']} frames at "
        f"{m['size'][0]}x{m['size'][1]} = {r['tokens']} tokens",
        f"encoding the clip: {r['encode_s']['first']:.3f} s, again from the cache {r['encode_s']['cached']:.3f} s",
        "",
        "| training | s/step | vs naive | GFLOP/step | of matmul peak | peak RSS MiB (+ during) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in t.items():
        lines.append(f"| {name} | {row['s_per_step']:.4f} | {row['speedup_vs_naive']:.2f}x | "
                     f"{row['gflop_per_step']:.2f} | {100 * row['fraction_of_matmul']:.1f}% | "
                     f"{row['peak_rss_mib']:.0f} (+{row['rss_above_start_mib']:.0f}) |")
    lines += ["", "| sampling (decode included) | s/step | vs naive | peak RSS MiB | blocks skipped |",
              "|---|---|---|---|---|"]
    for name, row in s.items():
        ratio = f"{row['speedup_vs_naive']:.2f}x" if "speedup_vs_naive" in row else "1.00x"
        skipped = f"{100 * row['blocks_skipped']:.0f}%" if "blocks_skipped" in row else "0%"
        lines.append(f"| {name} | {row['s_per_step']:.4f} | {ratio} | {row['peak_rss_mib']:.0f} | {skipped} |")
    lines += ["", "--keep-attention by clip length (training forward + backward, checkpointing every block):",
              "| latent frames | tokens | s, checkpointing | s, --keep-attention | speed-up |", "|---|---|---|---|---|"]
    for row in r["keep_attention"]:
        lines.append(f"| {row['latent_frames']} | {row['tokens']} | {row['s_checkpointing']:.4f} | "
                     f"{row['s_keep_attention']:.4f} | {row['speedup']:.2f}x |")
    lines += ["", "cost model on this model (activation bytes of one step, bf16 autocast):"]
    for name, row in r["model_check"]["at_clip"].items():
        lines.append(f"  {name}: counted {row['counted_mib']:.2f} MiB, modelled {row['modelled_mib']:.2f} MiB "
                     f"(x{row['ratio']:.3f})")
    modes = list(r["model_check"]["at_clip"])
    lines += ["", "activation MiB by clip length, counted (modelled):", "| latent frames | tokens | "
              + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    rows = r["model_check"]["by_latent_frames"]
    for frames in sorted({x["latent_frames"] for x in rows}):
        cells = [x for x in rows if x["latent_frames"] == frames]
        lines.append(f"| {frames} | {cells[0]['tokens']} | " + " | ".join(
            f"{x['counted_mib']:.2f} ({x['modelled_mib']:.2f})" for x in cells) + " |")
    lines += ["", "Wan2.1-I2V-14B LoRA step, 832x480, rank 16: MODELLED (perfmodel), not measured; times assume "
              f"{int(100 * perfmodel.ASSUMED_UTILISATION)}% of peak bf16 FLOP/s", perftables.format_table(r["wan14b"]),
              "", "one whole 49-frame edit (100 training steps, 30 sampling steps with CFG): MODELLED",
              perftables.format_recipes(perftables.edit_recipes())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
