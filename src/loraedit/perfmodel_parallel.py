"""What several GPUs buy for Wan 14B, modelled: sharded training memory, sequence-parallel sampling speed.

Built on `perfmodel` (one GPU's FLOPs and memory), with the communication each scheme adds:

- **Sharded training** (`--fsdp`, `distributed`): each of N GPUs stores 1/N of the bf16 base plus the
  block being all-gathered and the one prefetched behind it, and everything else one GPU stores (the
  whole LoRA with its AdamW state, one draw's activations). Per step the base is all-gathered twice
  (forward; backward, where checkpointed blocks recompute from the same gathered weights) and the LoRA
  gradients are all-reduced once. FSDP2 prefetches the next block while one computes, so a step takes
  max(compute, communication); each GPU computes one draw, so N GPUs do N draws in that time.
- **Sequence-parallel sampling** (`--context-parallel`, `context_parallel`): each GPU computes 1/N of the
  tokens (compute / N; the weights stay whole on every GPU). Ulysses adds four all-to-alls per block
  (q, k, v in; the attention output back), each GPU sending (N - 1)/N of its n/N x d bf16 slice; ring
  (diffusers' all-gather rotation) gathers every other GPU's keys and values, (N - 1)/N of 2 x n x d.
  Neither overlaps with compute in diffusers 0.42.1, so they add to the step.

Links are *assumed* effective bandwidths for collectives (not measured here): NVLink through NVSwitch
(H100 SXM: 900 GB/s bidirectional, taken as 360 GB/s per GPU per direction for NCCL), and PCIe 4.0 x16
(25 GB/s per GPU, and the CPU's root complex carrying at most 50 GB/s for all GPUs together, the usual
ceiling without a PCIe switch or peer-to-peer). Results are ratios to one GPU: they inherit one GPU's
assumed utilisation (`perfmodel.ASSUMED_UTILISATION`), which cancels.
"""

from __future__ import annotations

from dataclasses import dataclass

from .perfmodel import (CLIP_TOKENS_14B, GIB, WAN21_I2V_14B, Clip, Device, WanDims, lora_parameters, parameter_counts,
                        sample_step_flops, sample_step_memory, step_seconds, train_step_flops, train_step_memory,
                        video_tokens)


@dataclass(frozen=True)
class Link:
    """The GPUs' interconnect as collectives see it (assumed figures, module docstring)."""

    name: str
    per_gpu_bytes_per_s: float  # what one GPU sends (and receives) per second
    shared_bytes_per_s: float | None  # what all GPUs together can move (a shared root complex), None = no limit
    latency_s: float  # per collective call


#: Share of a GPU's memory kept back when saying whether a run fits (as `plan.HEADROOM`).
HEADROOM = 0.05
NVLINK = Link("NVLink", 360e9, None, 20e-6)
PCIE = Link("PCIe 4.0", 25e9, 50e9, 60e-6)


def transfer_seconds(per_gpu_bytes: float, gpus: int, link: Link, calls: int) -> float:
    """Time to move `per_gpu_bytes` from each of `gpus` GPUs at once, in `calls` collectives."""
    if gpus == 1:
        return 0.0
    seconds = per_gpu_bytes / link.per_gpu_bytes_per_s
    if link.shared_bytes_per_s is not None:
        seconds = max(seconds, per_gpu_bytes * gpus / link.shared_bytes_per_s)
    return seconds + calls * link.latency_s


# ---- sharded training ---------------------------------------------------------------------------------------


def fsdp_train_memory(dims: WanDims, clip: Clip, gpus: int) -> dict[str, float]:
    """GiB per GPU of a LoRA step with the bf16 base sharded over `gpus` (every block checkpointed)."""
    one = train_step_memory(dims, clip, "full")
    params = parameter_counts(dims)
    gathered = min(2, dims.layers) * params["block"] * 2 / GIB if gpus > 1 else 0.0  # in use + prefetched
    parts = dict(one)
    parts["weights"] = one["weights"] / gpus + gathered
    parts["peak"] = sum(v for k, v in parts.items() if k not in ("peak", "host"))
    return parts


def fsdp_step(dims: WanDims, clip: Clip, gpus: int, device: Device, link: Link) -> dict[str, float]:
    """Seconds of one sharded step (each GPU one draw): compute, communication, the step, draws per second."""
    compute = step_seconds(train_step_flops(dims, clip)["total"], device)
    params = parameter_counts(dims)
    gather = 2 * params["total"] * 2 * (gpus - 1) / gpus  # two all-gathers of the bf16 base, per GPU received
    reduce = 2 * lora_parameters(dims, clip.rank) * 4 * (gpus - 1) / gpus  # ring all-reduce of fp32 gradients
    comm = transfer_seconds(gather + reduce, gpus, link, calls=2 * (dims.layers + 1) + 1)
    step = max(compute, comm)
    return {"compute": compute, "comm": comm, "step": step, "draws_per_s": gpus / step}


# ---- sequence-parallel sampling -------------------------------------------------------------------------------


def context_parallel_bytes(dims: WanDims, tokens: int, gpus: int, kind: str, batch: int = 2) -> float:
    """Bytes each GPU sends per sampling step (`batch` 2: the conditional and unconditional forward)."""
    slice_bytes = tokens * dims.dim * 2  # the whole sequence's activations at one point of a block, bf16
    if kind == "ulysses":
        per_block = 4 * slice_bytes / gpus * (gpus - 1) / gpus
    elif kind == "ring":
        per_block = 2 * slice_bytes * (gpus - 1) / gpus
    else:
        raise ValueError(f"unknown context-parallel kind {kind!r}: ulysses or ring")
    return batch * dims.layers * per_block


def context_parallel_step(dims: WanDims, clip: Clip, gpus: int, device: Device, link: Link,
                          kind: str = "ulysses") -> float | None:
    """Seconds of one sampling step split over `gpus` (None where Ulysses cannot split the heads)."""
    if kind == "ulysses" and dims.heads % gpus:
        return None
    compute = step_seconds(sample_step_flops(dims, clip), device) / gpus
    calls = dims.layers * (4 if kind == "ulysses" else 2)
    return compute + transfer_seconds(context_parallel_bytes(dims, clip.tokens, gpus, kind), gpus, link, calls)


# ---- the table -------------------------------------------------------------------------------------------------


def scaling_table(device: Device, frames: tuple[int, ...] = (49, 81), gpus: tuple[int, ...] = (1, 2, 4, 8),
                  size: tuple[int, int] = (832, 480), rank: int = 16) -> list[dict]:
    """Per frame count and GPU count, as ratios to one GPU: memory per GPU of sharded training, its draws per
    second (NVLink, PCIe), and the sampling speed-up of Ulysses and ring (NVLink, PCIe)."""
    dims = WanDims.from_config(WAN21_I2V_14B)
    rows = []
    for count in frames:
        clip = Clip(video_tokens(dims, count, size[1], size[0]), image_tokens=CLIP_TOKENS_14B, rank=rank)
        one_mem = fsdp_train_memory(dims, clip, 1)["peak"]
        one_train = {link.name: fsdp_step(dims, clip, 1, device, link)["draws_per_s"] for link in (NVLINK, PCIE)}
        one_sample = context_parallel_step(dims, clip, 1, device, NVLINK)
        for n in gpus:
            mem = fsdp_train_memory(dims, clip, n)["peak"]
            row = {"frames": count, "tokens": clip.tokens, "gpus": n, "train_gib_per_gpu": mem,
                   "train_memory_ratio": mem / one_mem, "gpu": device.name,
                   "train_fits": mem <= device.memory_gib * (1 - HEADROOM),
                   "sample_gib_per_gpu": sample_step_memory(dims, clip)["peak"]}
            for link in (NVLINK, PCIE):
                key = "nvlink" if link is NVLINK else "pcie"
                row[f"train_draws_{key}"] = fsdp_step(dims, clip, n, device, link)["draws_per_s"] / one_train[link.name]
                for kind in ("ulysses", "ring"):
                    step = context_parallel_step(dims, clip, n, device, link, kind)
                    row[f"sample_{kind}_{key}"] = None if step is None else one_sample / step
            rows.append(row)
    return rows


def format_scaling(rows: list[dict]) -> str:
    """The table `loraedit plan-gpus` prints: figures are ratios to one GPU (modelled, not measured)."""
    def ratio(value: float | None) -> str:
        return "  -  " if value is None else f"{value:5.2f}x"

    lines = [f"Wan2.1-I2V-14B, 832x480, modelled on {rows[0]['gpu']} cards (ratios to one GPU; links assumed: "
             "NVLink 360 GB/s, PCIe 4.0 25 GB/s per GPU, 50 GB/s shared)",
             "frames GPUs | train --fsdp: GiB/GPU  memory  draws/s NVLink  PCIe | sample --context-parallel: "
             "ulysses NVLink  PCIe | ring NVLink  PCIe"]
    for r in rows:
        fits = "" if r["train_fits"] else f" (training does not fit: {HEADROOM:.0%} kept back)"
        lines.append(f"{r['frames']:6d} {r['gpus']:4d} | {r['train_gib_per_gpu']:19.1f}  "
                     f"{ratio(r['train_memory_ratio'])}"
                     f"  {ratio(r['train_draws_nvlink']):>14}  {ratio(r['train_draws_pcie'])} | "
                     f"{ratio(r['sample_ulysses_nvlink']):>34}  {ratio(r['sample_ulysses_pcie'])} | "
                     f"{ratio(r['sample_ring_nvlink']):>11}  {ratio(r['sample_ring_pcie'])}{fits}")
    lines.append("Sampling keeps the whole base on every GPU (per GPU: "
                 + ", ".join(f"{r['frames']} frames {r['sample_gib_per_gpu']:.1f} GiB" for r in rows if r["gpus"] == 1)
                 + "); '-' = Ulysses needs the GPU count to divide the 40 heads.")
    return "\n".join(lines)
