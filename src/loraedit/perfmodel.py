"""An analytic model of a Wan I2V transformer's LoRA training step and sampling step: parameters, FLOPs, memory.

From a transformer config alone (no weights), for a clip of F frames at H x W:

- parameters: exact, term by term (tests/test_perfmodel.py compares them with the model built on the meta
  device, the tiny one and Wan2.1-I2V-14B);
- FLOPs: the matrix products of one forward (2 m n k each), of the backward of a LoRA-only step (input
  gradients of the frozen layers where the input needs one, both gradients of the LoRA factors, attention
  backward), and of the recomputed forward of checkpointed blocks. Elementwise work is left out. Tested
  against torch's FlopCounterMode on the tiny model;
- memory: weights (bf16, or fp8 for the layers diffusers' layerwise casting converts), LoRA with its fp32
  gradient and AdamW moments, and the activations autograd keeps, per token and block. The activation
  coefficients are *counted* once, with saved-tensor hooks on diffusers 0.42.1's Wan block under bf16
  autocast (the GPU recipe) and a flash-type attention (which keeps only its output and log-sum-exp):
      52 d + 4 ffn + 16 rank + 12 heads + 36 bytes per token per block (no checkpointing),
      2 d bytes per token per block (checkpointed: only the block's bf16 input),
  plus 4 head_dim (no checkpointing) or 4 d + 8 (checkpointing) bytes per token outside the blocks
  (block 0 keeps less than the others; the difference is folded into that term). The test re-counts
  them on other shapes. Textbook attention (`_native_math`) keeps 4 bytes per head per query-key pair
  more: quadratic in frames, 66 GB per block at 49 frames of Wan 14B.
  What the model only *estimates*: the backward working set (gradients in flight inside the block being
  differentiated: 4 ffn + 16 d bytes per token) and a fixed 1 GiB for the CUDA context and allocator.

Memory is linear in frames with checkpointing and flash attention: one block input per block plus one
block's activations. Times are FLOPs over an *assumed* fraction of the device's peak (not measured here;
bench/gpu.py measures them when a GPU is at hand), or, with offloading, the weight traffic over the
host link when that is slower.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

#: diffusers config of Wan2.1-I2V-14B-480P's transformer (WAN-NOTES.md), for the 14B tables and bench/gpu.py;
#: tests/test_real_layouts.py checks it against the published config (tests/fixtures/models).
WAN21_I2V_14B = {
    "patch_size": [1, 2, 2], "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": 1280,
    "added_kv_proj_dim": 5120, "rope_max_seq_len": 1024,
}
TEXT_TOKENS = 512
CLIP_TOKENS_14B = 257  # ViT-H/14 at 224 px: 16 x 16 patches + class token


@dataclass(frozen=True)
class WanDims:
    """The numbers of a Wan transformer config that set its cost."""

    layers: int
    heads: int
    head_dim: int
    ffn: int
    in_channels: int
    out_channels: int
    text_dim: int
    freq_dim: int
    image_dim: int | None
    added_kv: int | None
    patch: tuple[int, int, int]
    cross_attn_norm: bool

    @classmethod
    def from_config(cls, config: dict) -> WanDims:
        return cls(config["num_layers"], config["num_attention_heads"], config["attention_head_dim"],
                   config["ffn_dim"], config["in_channels"], config["out_channels"], config["text_dim"],
                   config["freq_dim"], config.get("image_dim"), config.get("added_kv_proj_dim"),
                   tuple(config["patch_size"]), bool(config.get("cross_attn_norm", False)))

    @classmethod
    def from_folder(cls, folder, expert: str = "transformer") -> WanDims:
        """A model folder's own numbers (`backends.wan_folder.read_wan_folder`), not a copy of its config."""
        return cls.from_config(folder.transformer_configs[expert])

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class Clip:
    """What one step sees: video tokens, text tokens, CLIP tokens, and the LoRA rank."""

    tokens: int
    text_tokens: int = TEXT_TOKENS
    image_tokens: int = 0
    rank: int = 16


def video_tokens(dims: WanDims, frames: int, height: int, width: int, spatial: int = 8, temporal: int = 4) -> int:
    """Transformer tokens of a clip: latent frames x latent rows x latent columns, over the patch."""
    latent_frames = (frames - 1) // temporal + 1
    pt, ph, pw = dims.patch
    return (latent_frames // pt) * (height // spatial // ph) * (width // spatial // pw)


# ---- parameters ----------------------------------------------------------------------------------------


def parameter_counts(dims: WanDims) -> dict[str, int]:
    """Exact parameter counts: one block, all blocks, the rest, the total, and what fp8 casting converts."""
    d, f = dims.dim, dims.ffn
    linear = lambda i, o: i * o + o  # noqa: E731 (weight + bias)
    attn1 = 4 * linear(d, d) + 2 * d  # q, k, v, out + RMS norms of q and k (across heads)
    attn2 = 4 * linear(d, d) + 2 * d
    if dims.added_kv:
        attn2 += 2 * linear(dims.added_kv, d) + d  # CLIP key/value projections + norm of the image keys
    ffn = linear(d, f) + linear(f, d)
    block = attn1 + attn2 + ffn + (2 * d if dims.cross_attn_norm else 0) + 6 * d  # + modulation table
    block_linear = 8 * linear(d, d) + ffn + (2 * linear(dims.added_kv, d) if dims.added_kv else 0)
    pt, ph, pw = dims.patch
    patch = dims.in_channels * pt * ph * pw * d + d
    out = linear(d, dims.out_channels * pt * ph * pw)
    time = linear(dims.freq_dim, d) + linear(d, d) + linear(d, 6 * d)
    text = linear(dims.text_dim, d) + linear(d, d)
    image = 0
    if dims.image_dim:
        i = dims.image_dim
        image = 2 * i + linear(i, i) + linear(i, d) + 2 * d  # norm, 2-layer MLP, norm
    rest = patch + out + time + text + image + 2 * d  # + output modulation table
    return {"block": block, "blocks": dims.layers * block, "rest": rest, "total": dims.layers * block + rest,
            "fp8": dims.layers * block_linear}  # the blocks' Linear layers (diffusers keeps proj_out, norms, embedders)


def lora_parameters(dims: WanDims, rank: int) -> int:
    """LoRA on q/k/v/out of both attentions and both FFN layers of every block (the authors' targets)."""
    d, f = dims.dim, dims.ffn
    return dims.layers * rank * (8 * 2 * d + 2 * (d + f))


# ---- FLOPs -----------------------------------------------------------------------------------------------


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def block_forward_flops(dims: WanDims, clip: Clip) -> dict[str, int]:
    """Matrix-product FLOPs of one block's forward: frozen linears, attention products, LoRA factors."""
    d, f, n, lt, li, r = dims.dim, dims.ffn, clip.tokens, clip.text_tokens, clip.image_tokens, clip.rank
    linear = 6 * _mm(n, d, d) + 2 * _mm(lt, d, d) + 2 * _mm(n, d, f)  # q k v o, cross q o, cross k v, ffn
    attention = 2 * _mm(n, d, n) + 2 * _mm(n, d, lt)  # QK^T and PV, self and text
    if dims.added_kv and li:
        linear += 2 * _mm(li, dims.added_kv, d)
        attention += 2 * _mm(n, d, li)
    lora = 6 * (_mm(n, d, r) + _mm(n, r, d)) + 2 * (_mm(lt, d, r) + _mm(lt, r, d)) \
        + 2 * (_mm(n, d, r) + _mm(n, r, f))
    return {"linear": linear, "attention": attention, "lora": lora}


def forward_flops(dims: WanDims, clip: Clip) -> int:
    """One forward of the whole transformer (batch 1)."""
    d, n = dims.dim, clip.tokens
    pt, ph, pw = dims.patch
    block = sum(block_forward_flops(dims, clip).values())
    outside = _mm(n, dims.in_channels * pt * ph * pw, d) + _mm(n, d, dims.out_channels * pt * ph * pw)
    outside += _mm(clip.text_tokens, dims.text_dim, d) + _mm(clip.text_tokens, d, d)
    outside += _mm(1, dims.freq_dim, d) + _mm(1, d, d) + _mm(1, d, 6 * d)
    if dims.image_dim and clip.image_tokens:
        outside += _mm(clip.image_tokens, dims.image_dim, dims.image_dim) + _mm(clip.image_tokens, dims.image_dim, d)
    return dims.layers * block + outside


def block_backward_flops(dims: WanDims, clip: Clip, first: bool, flash: bool) -> int:
    """Backward of one block in a LoRA-only step.

    Frozen linears: the input gradient only, and only where the input needs one (never the text and
    CLIP inputs; not the first block's q/k/v, whose input comes from the frozen patch embedding).
    LoRA factors: the weight gradients of A and B, the gradient through B, and through A where the input
    needs it. Attention: flash kernels recompute the probabilities and form all of dQ, dK, dV (5 products
    against the forward's 2); the textbook path forms only what autograd needs (4 products, 2 when the
    keys and values need no gradient, as the CLIP ones).
    """
    d, f, n, lt, li, r = dims.dim, dims.ffn, clip.tokens, clip.text_tokens, clip.image_tokens, clip.rank
    frozen = (3 if first else 6) * _mm(n, d, d) + 2 * _mm(n, d, f)  # q k v (not in block 0), out, q2, out2, ffn
    grad_in = lambda m, i, o, needs: _mm(m, o, r) + _mm(m, r, i) * needs  # noqa: E731 (through B; through A)
    weights = lambda m, i, o: _mm(r, m, i) + _mm(o, m, r)  # noqa: E731 (dA, dB)
    lora = 0
    for m, i, o, needs in ([(n, d, d, not first)] * 3 + [(n, d, d, True)] * 3 + [(lt, d, d, False)] * 2
                           + [(n, d, f, True), (n, f, d, True)]):
        lora += weights(m, i, o) + grad_in(m, i, o, needs)
    products = _mm(n, d, n) + _mm(n, d, lt)  # one product (QK^T-sized) of the self and the text attention
    image = _mm(n, d, li) if dims.added_kv and li else 0
    attention = 5 * (products + image) if flash else 4 * products + 2 * image
    return frozen + lora + attention


def self_attention_flops(dims: WanDims, clip: Clip) -> int:
    """The self-attention products (QK^T and PV) of one block's forward: what `--keep-attention` does not redo."""
    return 2 * _mm(clip.tokens, dims.dim, clip.tokens)


def train_step_flops(dims: WanDims, clip: Clip, checkpoint_blocks: int | None = None,
                     flash: bool = True, keep_attention: bool = False) -> dict[str, int]:
    """FLOPs of one LoRA training step (batch 1): forward, recomputed forwards, backward, total."""
    ckpt = dims.layers if checkpoint_blocks is None else min(checkpoint_blocks, dims.layers)
    forward = forward_flops(dims, clip)
    recompute = ckpt * (sum(block_forward_flops(dims, clip).values())
                        - (self_attention_flops(dims, clip) if keep_attention else 0))
    n, d, pt, ph, pw = clip.tokens, dims.dim, *dims.patch
    backward = block_backward_flops(dims, clip, True, flash) + (dims.layers - 1) * block_backward_flops(
        dims, clip, False, flash) + _mm(n, dims.out_channels * pt * ph * pw, d)  # + proj_out's input gradient
    return {"forward": forward, "recompute": recompute, "backward": backward,
            "total": forward + recompute + backward}


def sample_step_flops(dims: WanDims, clip: Clip, guidance: bool = True) -> int:
    """One sampling step: a forward for the prompt and, with guidance, one for the negative prompt."""
    return forward_flops(dims, clip) * (2 if guidance else 1)


# ---- memory ------------------------------------------------------------------------------------------------


def block_activation_bytes(dims: WanDims, clip: Clip, attention: str = "flash") -> int:
    """Bytes autograd keeps for one block without checkpointing (counted coefficients, module docstring).

    Per video token: 52 d + 4 ffn + 16 rank + 12 heads + 36. Per block, whatever the clip: the text and
    CLIP keys and values and their inputs (12 bytes per text token and 4 per CLIP token, per channel),
    the text-side LoRA products (3.5 bytes per text token and rank), bf16 copies of the LoRA weights
    (2 bytes a weight, made by autocast), the fp32 modulation vectors (24 d) and norm statistics.
    """
    d, f, h, n, r = dims.dim, dims.ffn, dims.heads, clip.tokens, clip.rank
    lt, li = clip.text_tokens, clip.image_tokens if dims.added_kv else 0
    per_token = 52 * d + 4 * f + 16 * r + 12 * h + 36
    fixed = 12 * lt * d + 4 * li * d + 3.5 * lt * r + 2 * r * (18 * d + 2 * f) + 24 * d + 6 * lt
    extra = 0 if attention == "flash" else 4 * h * n * (n + lt + li)
    return int(per_token * n + fixed + extra)


def kept_attention_bytes(dims: WanDims, clip: Clip) -> int:
    """What `--keep-attention` keeps per checkpointed block: the self-attention output (bf16) and the
    kernel's log-sum-exp (fp32, one per head and token); counted with saved-tensor hooks (test_perfmodel)."""
    return (2 * dims.dim + 4 * dims.heads) * clip.tokens


def train_step_memory(dims: WanDims, clip: Clip, mode: str = "full", checkpoint_blocks: int | None = None,
                      attention: str = "flash", keep_attention: bool = False) -> dict[str, float]:
    """GiB on the GPU during a LoRA step, by part; `host` is the pinned CPU memory of offloaded weights.

    mode: full | fp8 | offload | fp8+offload. `keep_attention`: checkpointed blocks also keep their
    self-attention output (a fused kernel's; textbook attention is recomputed whatever the flag).
    fp8 and offload save memory only for checkpointed blocks:
    autograd keeps each layer's bf16 / on-GPU weight copy until that layer's backward, so a block that is
    not checkpointed holds its copy through the whole step.
    """
    params = parameter_counts(dims)
    fp8, offload = "fp8" in mode, "offload" in mode
    weight_bytes = params["fp8"] * (1 if fp8 else 2) + (params["total"] - params["fp8"]) * 2
    block_bf16 = params["block"] * 2
    ckpt = dims.layers if checkpoint_blocks is None else min(checkpoint_blocks, dims.layers)
    loose = dims.layers - ckpt  # blocks whose activations (and weight copies) live through the step
    copies = (loose + 1) * block_bf16 if (fp8 or offload) else 0  # bf16 / on-GPU copies held by autograd
    n, d, f = clip.tokens, dims.dim, dims.ffn
    li = clip.image_tokens if dims.added_kv else 0
    if ckpt:  # the final norm and projection, rotary tables, text / CLIP / time embeddings
        outside = (4 * d + 8) * n + 2 * (clip.text_tokens + li) * d + 14 * d
    else:  # rotary tables, less what block 0 does not keep (its q/k/v input needs no gradient)
        outside = 4 * dims.head_dim * n - 6 * clip.rank * d - 2 * d
    kept = kept_attention_bytes(dims, clip) if keep_attention and attention == "flash" else 0
    activations = ckpt * (2 * d * n + kept) + loose * block_activation_bytes(dims, clip, attention) + outside
    recompute = block_activation_bytes(dims, clip, attention) if ckpt else 0
    working = (4 * f + 16 * d) * n
    parts = {
        "weights": (0 if offload else weight_bytes) / GIB,
        "weight_copies": copies / GIB,
        "lora_adam": lora_parameters(dims, clip.rank) * 16 / GIB,  # fp32 weight, gradient, two moments
        "activations": activations / GIB,
        "recompute": recompute / GIB,
        "working": working / GIB,
        "context": 1.0,
    }
    parts["peak"] = sum(parts.values())
    parts["host"] = (weight_bytes if offload else 0) / GIB
    return parts


def sample_step_memory(dims: WanDims, clip: Clip, mode: str = "full", batch: int = 2) -> dict[str, float]:
    """GiB on the GPU while sampling (no autograd): weights, the largest transient of one block, context."""
    params = parameter_counts(dims)
    fp8, offload = "fp8" in mode, "offload" in mode
    weight_bytes = params["fp8"] * (1 if fp8 else 2) + (params["total"] - params["fp8"]) * 2
    n, d, f = clip.tokens, dims.dim, dims.ffn
    transient = batch * n * (2 * f + 6 * d) * 2  # ffn hidden (and its GELU) + residual / q k v, bf16
    copies = 2 * params["block"] * 2 / dims.layers * 4 if (fp8 or offload) else 0  # a few layers in flight
    parts = {"weights": (0 if offload else weight_bytes) / GIB, "weight_copies": copies / GIB,
             "transient": transient / GIB, "context": 1.0}
    parts["peak"] = sum(parts.values())
    parts["host"] = (weight_bytes if offload else 0) / GIB
    return parts


# ---- devices and the 14B table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """Public peak figures (dense bf16 tensor FLOP/s, host link), used with an assumed utilisation."""

    name: str
    memory_gib: float
    bf16_flops: float
    host_bytes_per_s: float


H100 = Device("H100 SXM 80GB", 79.6, 989e12, 50e9)
RTX4090 = Device("RTX 4090 24GB", 23.6, 165e12, 25e9)
ASSUMED_UTILISATION = 0.5  # of peak bf16 FLOP/s over a whole step; an assumption, not a measurement


def step_seconds(flops: float, device: Device, streamed_bytes: float = 0.0,
                 utilisation: float = ASSUMED_UTILISATION) -> float:
    """Compute time at the assumed utilisation, or the host-link time of streamed weights if longer."""
    return max(flops / (device.bf16_flops * utilisation), streamed_bytes / device.host_bytes_per_s)


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


def edit_recipes(train_steps: int = 100, sample_steps: int = 30, cache_skipped: float = 0.0) -> list[dict]:
    """Modelled minutes for one whole 49-frame 832x480 edit (stage-1 training + sampling), per device and recipe.

    `cache_skipped`: the share of blocks after the first that `--first-block-cache` skips (an input, not
    a prediction: what Wan skips depends on its weights; the toy world's is measured in docs/RESULTS.md).

    `low-cost` trains on 13-frame clips (the paper's Sec. 4.5; quality measured by `loraedit bench quality`)
    and samples all 49 frames. `--keep-attention` rows are listed where their memory fits the device.
    Offloaded weights stream over the host link three times per training step (forward, recomputed
    forward, backward) and once per sampling step; compute and transfers overlap.
    """
    dims = WanDims.from_config(WAN21_I2V_14B)
    params = parameter_counts(dims)
    full = Clip(video_tokens(dims, 49, 480, 832), image_tokens=CLIP_TOKENS_14B)
    short = Clip(video_tokens(dims, 13, 480, 832), image_tokens=CLIP_TOKENS_14B)
    rows = []
    for device, mode in ((H100, "full"), (RTX4090, "fp8+offload")):
        weights = params["fp8"] * (1 if "fp8" in mode else 2) + (params["total"] - params["fp8"]) * 2
        streamed = weights if "offload" in mode else 0
        sample_s = step_seconds(sample_step_flops(dims, full), device, streamed)
        sample_s *= cached_sampling_fraction(dims.layers, cache_skipped)
        for recipe, clip in (("49 frames", full), ("low-cost (13-frame clips)", short)):
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


# ---- measuring what the model predicts -------------------------------------------------------------------------


def saved_activation_bytes(module, run) -> int:
    """Bytes of the tensors autograd saves for backward while `run()` executes, weights excluded.

    Each storage is counted once (views share it); parameters and buffers of `module` are not activations.
    The measurement behind the activation coefficients, and the test that they still hold.
    """
    import torch

    weights = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    seen: dict[int, int] = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in weights:
            seen.setdefault(key, tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(seen.values())
