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
host link when that is slower. The 14B tables of docs/PERFORMANCE.md, built from this model, are `perftables`.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

#: diffusers config of Wan2.1-I2V-14B-480P's transformer (WAN-NOTES.md), for `perftables` and bench/gpu.py;
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


# ---- devices -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """Public peak figures (dense bf16 tensor FLOP/s, host link), used with an assumed utilisation."""

    name: str
    memory_gib: float
    bf16_flops: float
    host_bytes_per_s: float


ASSUMED_UTILISATION = 0.5  # of peak bf16 FLOP/s over a whole step; an assumption, not a measurement


def step_seconds(flops: float, device: Device, streamed_bytes: float = 0.0,
                 utilisation: float = ASSUMED_UTILISATION) -> float:
    """Compute time at the assumed utilisation, or the host-link time of streamed weights if longer."""
    return max(flops / (device.bf16_flops * utilisation), streamed_bytes / device.host_bytes_per_s)


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
