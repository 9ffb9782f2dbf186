"""The modelled Wan2.1-I2V-14B tables (docs/PERFORMANCE.md, `make bench`): `perfmodel` applied to the
published 14B config on two reference GPUs, beside the authors' one measured step.

Only tables live here (rows for each frame count, memory mode and recipe, and their markdown); the cost
model itself (parameters, FLOPs, memory, step time) is `perfmodel`, which `plan` uses for a real folder.
"""

from __future__ import annotations

from .perfmodel import (
    CLIP_TOKENS_14B,
    WAN21_I2V_14B,
    Clip,
    Device,
    WanDims,
    parameter_counts,
    sample_step_flops,
    sample_step_memory,
    step_seconds,
    train_step_flops,
    train_step_memory,
    video_tokens,
)

#: The reference GPUs of the tables (public peak figures; `devices` has the whole catalogue).
H100 = Device("H100 SXM 80GB", 79.6, 989e12, 50e9)
RTX4090 = Device("RTX 4090 24GB", 23.6, 165e12, 25e9)


def table_14b(frames: tuple[int, ...] = (49, 81), size: tuple[int, int] = (832, 480),
              rank: int = 16) -> list[dict]:
    """Modelled LoRA step of Wan2.1-I2V-14B for each frame count, memory mode and checkpointing choice."""
    dims = WanDims.from_config(WAN21_I2V_14B)
    params = parameter_counts(dims)
    rows = []
    for count in frames:
        clip = Clip(video_tokens(dims, count, size[1], size[0]), image_tokens=CLIP_TOKENS_14B, rank=rank)
        for mode in ("full", "fp8", "offload", "fp8+offload"):
            for ckpt in (None, 0):
                flops = train_step_flops(dims, clip, ckpt)
                mem = train_step_memory(dims, clip, mode, ckpt)
                weight_bytes = params["fp8"] * (1 if "fp8" in mode else 2) + (params["total"] - params["fp8"]) * 2
                passes = 3 if ckpt is None else 2  # forward, recompute, backward: each streams the weights
                streamed = weight_bytes * passes if "offload" in mode else 0
                rows.append({
                    "frames": count, "tokens": clip.tokens, "mode": mode,
                    "checkpointing": "every block" if ckpt is None else "none",
                    "train_pflop": flops["total"] / 1e15, "peak_gib": mem["peak"], "host_gib": mem["host"],
                    "fits": {d.name: mem["peak"] <= d.memory_gib for d in (H100, RTX4090)},
                    "train_s_h100": step_seconds(flops["total"], H100, streamed),
                    "train_s_4090": step_seconds(flops["total"], RTX4090, streamed),
                    "sample_s_h100": step_seconds(sample_step_flops(dims, clip), H100,
                                                  weight_bytes if "offload" in mode else 0),
                    "sample_peak_gib": sample_step_memory(dims, clip, mode)["peak"],
                })
    return rows


#: The authors' measured step (RTX 4090, 49 frames, 32 of 40 blocks swapped to CPU; METHOD.md).
AUTHORS_4090_S_PER_STEP_49 = 31.88


def cached_sampling_fraction(layers: int, skipped: float) -> float:
    """Share of a full sampling forward that runs when a first-block cache skips `skipped` of the blocks
    after the first (the first block always runs)."""
    return (1 + (layers - 1) * (1 - skipped)) / layers


def edit_recipes(train_steps: int = 100, sample_steps: int = 30, cache_skipped: float = 0.0,
                 train_fraction: float = 0.5) -> list[dict]:
    """Modelled minutes for one whole 49-frame 832x480 edit (stage-1 training + sampling), per device and recipe.

    `cache_skipped`: the share of blocks after the first that `--first-block-cache` skips (an input, not
    a prediction: what Wan skips depends on its weights; the toy world's is measured in docs/RESULTS.md).

    `low-cost` trains on 13-frame clips (the paper's Sec. 4.5; quality measured by `loraedit bench quality`)
    and samples all 49 frames; `--train-size F` trains the 49 frames at `train_fraction` of each side (0.5:
    416x240, 4x fewer tokens) and samples at 832x480. `--keep-attention` rows are listed where their memory
    fits the device.
    Offloaded weights stream over the host link three times per training step (forward, recomputed
    forward, backward) and once per sampling step; compute and transfers overlap.
    """
    dims = WanDims.from_config(WAN21_I2V_14B)
    params = parameter_counts(dims)
    full = Clip(video_tokens(dims, 49, 480, 832), image_tokens=CLIP_TOKENS_14B)
    short = Clip(video_tokens(dims, 13, 480, 832), image_tokens=CLIP_TOKENS_14B)
    # media.scaled_size's rounding, spelled out: the cost model imports no torch, PyAV or Pillow.
    small_w, small_h = (max(16, round(side * train_fraction / 16) * 16) for side in (832, 480))
    small = Clip(video_tokens(dims, 49, small_h, small_w), image_tokens=CLIP_TOKENS_14B)
    rows = []
    for device, mode in ((H100, "full"), (RTX4090, "fp8+offload")):
        weights = params["fp8"] * (1 if "fp8" in mode else 2) + (params["total"] - params["fp8"]) * 2
        streamed = weights if "offload" in mode else 0
        sample_s = step_seconds(sample_step_flops(dims, full), device, streamed)
        sample_s *= cached_sampling_fraction(dims.layers, cache_skipped)
        for recipe, clip in (("49 frames", full), ("low-cost (13-frame clips)", short),
                             (f"49 frames, --train-size {train_fraction:g} ({small_w}x{small_h})", small)):
            for keep in (False, True):
                peak = train_step_memory(dims, clip, mode, keep_attention=keep)["peak"]
                if keep and peak > device.memory_gib:
                    continue
                flops = train_step_flops(dims, clip, keep_attention=keep)["total"]
                train_s = step_seconds(flops, device, 3 * streamed)
                minutes = (train_steps * train_s + sample_steps * sample_s) / 60
                rows.append({"device": device.name, "mode": mode + (", --keep-attention" if keep else ""),
                             "recipe": recipe, "train_s": train_s, "sample_s": sample_s, "edit_min": minutes,
                             "peak_gib": peak})
    return rows


def format_recipes(rows: list[dict]) -> str:
    authors = 100 * AUTHORS_4090_S_PER_STEP_49 / 60
    lines = ["| device | memory mode | training | train s/step | sample s/step | minutes per edit | GPU peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['mode']} | {r['recipe']} | {r['train_s']:.1f} | {r['sample_s']:.1f} | "
                     f"{r['edit_min']:.1f} | {r['peak_gib']:.1f} |")
    lines.append(f"| RTX 4090 (the authors, measured) | 32/40 blocks swapped | 49 frames | "
                 f"{AUTHORS_4090_S_PER_STEP_49} | | {authors:.0f} (training alone) | 21.5 GB |")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    """The 14B table as markdown."""
    lines = ["| frames | tokens | memory mode | checkpointing | PFLOP/step | GPU peak GiB | host GiB | fits | "
             "H100 s/step | 4090 s/step | sample GPU GiB | H100 sample s/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fits = ", ".join(name.split()[0] + " " + name.split()[1] for name, ok in r["fits"].items() if ok) or "neither"
        lines.append(f"| {r['frames']} | {r['tokens']:,} | {r['mode']} | {r['checkpointing']} | {r['train_pflop']:.2f} "
                     f"| {r['peak_gib']:.1f} | {r['host_gib']:.1f} | {fits} | {r['train_s_h100']:.1f} | "
                     f"{r['train_s_4090']:.1f} | {r['sample_peak_gib']:.1f} | {r['sample_s_h100']:.2f} |")
    return "\n".join(lines)


# ---- loading the model ----------------------------------------------------------------------------------------

#: Wan2.1-I2V-14B-480P-Diffusers, part by part: parameters, bytes per parameter on disk (the repository is float32:
#: 14 transformer and 5 text-encoder shards of <= 5 GB, tests/fixtures/models) and on the GPU (bf16, the VAE float32,
#: as backends/wan.py loads them). Parameters: the transformer's from `parameter_counts`; the umT5-XXL encoder's and
#: the CLIP ViT-H/14 vision tower's counted from their configs (fixtures); the VAE's from its 508 MB float32 file.
WAN21_I2V_14B_PARTS = {"text_encoder": (5_680_910_336, 4, 2), "image_encoder": (630_766_080, 4, 2),
                       "vae": (127_000_000, 4, 4)}
#: Typical sequential read speeds (an assumption, not measured) and a PCIe 4.0 x16 host-to-GPU copy.
DISK_BYTES_PER_S = {"NVMe 3 GB/s": 3e9, "NVMe 2 GB/s": 2e9, "SATA SSD 0.5 GB/s": 0.5e9}
PCIE4_BYTES_PER_S = 20e9


def load_seconds_14b(disk_bytes_per_s: float, host_bytes_per_s: float = PCIE4_BYTES_PER_S,
                     as_loaded: bool = False) -> dict[str, float]:
    """Modelled seconds to load Wan2.1-I2V-14B (transformer, umT5-XXL, CLIP, VAE) from a cold disk onto the GPU:
    every weight file read once, then the bf16 weights copied over the host link, one after the other. What
    a resident model saves on each job after the first. A lower bound: the float32 -> bf16 conversion on the
    CPU and the Python set-up are left out; a warm page cache removes the read.
    `as_loaded`: a folder re-saved in the dtypes it is loaded in (bf16), half the bytes to read."""
    transformer = parameter_counts(WanDims.from_config(WAN21_I2V_14B))["total"]
    parts = {"transformer": (transformer, 4, 2), **WAN21_I2V_14B_PARTS}
    disk = sum(n * (on_gpu if as_loaded else on_disk) for n, on_disk, on_gpu in parts.values())
    gpu = sum(n * on_gpu for n, _, on_gpu in parts.values())
    read_s, copy_s = disk / disk_bytes_per_s, gpu / host_bytes_per_s
    return {"disk_gb": disk / 1e9, "gpu_gb": gpu / 1e9, "read_s": read_s, "copy_s": copy_s,
            "total_s": read_s + copy_s}
