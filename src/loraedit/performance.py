"""How fast and how lean: one frozen config of the speed and memory choices, and the code that applies them.

None of these choices changes *what* is computed, only how: every mode gives the same training loss and
the same sample as the plain path within tolerance (tests/test_performance.py). What each one buys is
measured by `make bench` (CPU) and `bench/gpu.py` (GPU), never by timed unit tests.

- attention: the diffusers attention backend. `auto` = FlashAttention-2 when installed on a GPU (and
  FlashAttention-3 for sampling: diffusers 0.42 registers no backward for it), else PyTorch SDPA
  (`native`, which picks its own flash / cuDNN / memory-efficient kernel). Memory is linear in tokens
  with all of these; `_native_math` (the textbook softmax(QK^T)V, quadratic memory) is the reference the
  benchmark compares against. Sage and FA3 have no backward pass: sampling only.
- memory mode: `fp8` stores the frozen base weights in float8 e4m3 and casts each layer to bf16 just
  for its forward (diffusers layerwise casting: half the weight memory; the LoRA stays in full
  precision); `offload` keeps the base weights in CPU memory and streams each layer to the GPU when it
  runs (diffusers leaf-level group offloading with a prefetching CUDA stream); `fp8+offload` both.
  In training both save memory only for checkpointed blocks: autograd keeps every layer's bf16 (or
  on-GPU) weight copy until that layer's backward, which a checkpointed block runs right after its
  recomputed forward.
- gradient checkpointing, per block: `checkpoint_blocks` k = the first k blocks (`ALL_BLOCKS`: every
  block, the least memory; 0: none, the fastest; between: memory linear in the blocks left out); None =
  auto: every block on a GPU, none on a CPU (where memory is not the limit and recomputing only costs
  time: 1.4x slower steps on the toy world's model, `make bench`).
- keep attention (`--keep-attention`): selective checkpointing. A checkpointed block also keeps its
  self-attention output (bf16, with the kernel's fp32 log-sum-exp), so its recomputed forward runs the
  cheap projections again but not the attention products, the block's most expensive part at long clips
  (40 % of a Wan 14B block's forward FLOPs at 49 frames, 52 % at 81). Costs 2 d + 4 heads bytes per video
  token per checkpointed block (7.9 GiB for Wan 14B at 49 frames): off by default, since a 24 GB card
  has no room.
- compile: `torch.compile` of each transformer block (the repeated region; compiles once, ~1 min).
- batched CFG: the conditional and unconditional predictions of a sampling step in one batched forward
  (`BatchedCFG`, a diffusers model hook; the pipeline itself is unchanged). The same FLOPs, one pass over
  the weights instead of two (what counts with offloading and small steps); twice the activations of a
  sampling forward. The hook knows Wan's inputs; HunyuanVideo's CFG (off by default) runs as two calls.
- VAE tiling: spatially tiled VAE decoding (memory bounded for large frames; Wan's VAE already decodes
  frame group by frame group, so its memory is linear in frames).

The sampling speed-ups that *do* change the result (First Block Cache, TaylorSeer) are sampling
settings recorded with every video, in `step_cache`, not part of `PerformanceConfig`.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from .errors import InputError

#: --memory-mode -> (fp8 base weights, offload base weights to CPU)
MEMORY_MODES = {"full": (False, False), "fp8": (True, False), "offload": (False, True), "fp8+offload": (True, True)}
ATTENTION_CHOICES = ("auto", "native", "flash", "_flash_3", "_native_cudnn", "_native_flash", "_native_efficient",
                     "_native_math", "flex", "xformers", "sage")
#: Backends without a backward pass (in diffusers 0.42): fine for sampling, refused for training.
FORWARD_ONLY_ATTENTION = ("sage", "_flash_3")
#: torch.compile arguments for each block (tests swap in a backend that needs no C++ compiler).
COMPILE_KWARGS: dict = {"fullgraph": False, "dynamic": False}
BATCHED_CFG_HOOK = "loraedit_batched_cfg"
#: `--checkpoint-blocks all`: more blocks than any model has.
ALL_BLOCKS = 1 << 20


@dataclass(frozen=True)
class PerformanceConfig:
    """Speed and memory choices; defaults are the fastest that fit a 80 GB GPU and are safe everywhere."""

    memory_mode: str = "full"  # full | fp8 | offload | fp8+offload (see MEMORY_MODES)
    attention: str = "auto"  # a diffusers attention backend name, or auto
    compile: bool = False  # torch.compile every transformer block
    checkpoint_blocks: int | None = None  # checkpoint the first k blocks; None = auto (GPU: all, CPU: none)
    keep_attention: bool = False  # checkpointed blocks keep their self-attention output (see module doc)
    batched_cfg: bool = True  # cond + uncond in one forward while sampling
    vae_tiling: bool = False  # spatially tiled VAE decoding
    offload_stream: bool = True  # overlap offload transfers with compute on a CUDA stream (GPU only)
    context_parallel: str | None = None  # sampling under torchrun: ulysses | ring over the job's GPUs (context_parallel)

    @property
    def fp8_base(self) -> bool:
        return MEMORY_MODES[self.memory_mode][0]

    @property
    def offload(self) -> bool:
        return MEMORY_MODES[self.memory_mode][1]


def performance_problems(perf: PerformanceConfig, trains: bool) -> list[str]:
    """Everything wrong with `perf`, one line each, before any model loads."""
    problems = []
    if perf.memory_mode not in MEMORY_MODES:
        problems.append(f"--memory-mode {perf.memory_mode!r} is unknown: choose one of {', '.join(MEMORY_MODES)}")
    if perf.attention not in ATTENTION_CHOICES:
        problems.append(f"--attention {perf.attention!r} is unknown: choose one of {', '.join(ATTENTION_CHOICES)}")
    elif trains and perf.attention in FORWARD_ONLY_ATTENTION:
        problems.append(f"--attention {perf.attention} has no backward pass, so it cannot train: use it with "
                        "`loraedit sample` only, or choose auto")
    elif perf.attention not in ("auto", "native"):
        missing = _attention_requirement_problem(perf.attention)
        if missing:
            problems.append(missing)
    if perf.checkpoint_blocks is not None and perf.checkpoint_blocks < 0:
        problems.append(f"--checkpoint-blocks {perf.checkpoint_blocks} is negative: give 0 (none) up to the number "
                        "of transformer blocks, or all")
    elif perf.keep_attention and perf.checkpoint_blocks == 0:
        problems.append("--keep-attention only acts inside checkpointed blocks and --checkpoint-blocks is 0 (or "
                        "--no-gradient-checkpointing): drop one of them")
    return problems


def _attention_requirement_problem(name: str) -> str | None:
    """Whether the backend's package is installed (diffusers raises when it is not)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ImportError, ValueError) as exc:
        return f"--attention {name} is not available here ({' '.join(str(exc).split())[:160]}): choose auto"
    return None


def resolve_attention(name: str, device: torch.device, training: bool = False) -> str:
    """The attention backend to use: `auto` = FA3 (sampling) / FA2 when installed on a GPU, else SDPA."""
    if name != "auto":
        return name
    if device.type == "cuda":
        from diffusers.utils import is_flash_attn_3_available, is_flash_attn_available

        if not training and is_flash_attn_3_available():
            return "_flash_3"
        if is_flash_attn_available():
            return "flash"
    return "native"


# ---- the transformer: weights, attention, compile -------------------------------------------------------


def configure_transformer(transformer: torch.nn.Module, perf: PerformanceConfig, device: torch.device,
                          compute_dtype: torch.dtype) -> None:
    """Apply storage, placement, attention and compile choices to a frozen base transformer (no LoRA yet).

    Order matters: fp8 storage first (the cast happens on the CPU, so a 14B model never sits on the GPU in
    bf16), then offload hooks (they keep the fp8 copies in pinned CPU memory) or a plain move to `device`.
    LoRA layers attached later are not touched by either (see `lora_io.add_lora`, which places them).
    """
    if perf.fp8_base:
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    if perf.offload:
        use_stream = perf.offload_stream and device.type == "cuda"
        transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                         offload_type="leaf_level", use_stream=use_stream,
                                         record_stream=use_stream, low_cpu_mem_usage=False)
    else:
        transformer.to(device)
    attention = set_attention(transformer, perf, device, training=False)
    if perf.context_parallel:  # after the attention backend: diffusers checks that it can run split
        from . import context_parallel

        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        heads = getattr(getattr(transformer, "config", None), "num_attention_heads", None)
        why = context_parallel.problem(perf.context_parallel, device.type, world, heads, attention)
        if why:
            raise InputError(why)
        context_parallel.enable(transformer, perf.context_parallel, world)
    if perf.compile:
        transformer.compile_repeated_blocks(**COMPILE_KWARGS)


def set_attention(transformer: torch.nn.Module, perf: PerformanceConfig, device: torch.device,
                  training: bool) -> str:
    """Give every attention layer the backend for training or for sampling (they may differ: see module doc)."""
    name = resolve_attention(perf.attention, device, training)
    if getattr(transformer, "_loraedit_attention", None) != name:
        transformer.set_attention_backend(name)
        transformer._loraedit_attention = name
    return name


#: The attributes that hold a transformer's blocks, in the order its forward runs them: Wan's `blocks`;
#: HunyuanVideo's dual-stream `transformer_blocks`, then its single-stream `single_transformer_blocks`.
BLOCK_LISTS = ("blocks", "transformer_blocks", "single_transformer_blocks")


def transformer_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Every block of the transformer in forward order (what checkpointing counts and the block cache watches).

    One list for any family, so `--checkpoint-blocks k` means "the first k blocks the forward runs" whether
    the model has one stack (Wan: 40) or two (HunyuanVideo: 20 dual-stream then 40 single-stream).
    """
    blocks = [block for name in BLOCK_LISTS for block in getattr(transformer, name, None) or ()]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has none of {', '.join(BLOCK_LISTS)}: name its block list "
                         "in performance.BLOCK_LISTS")
    return blocks


def self_attention(block: torch.nn.Module) -> torch.nn.Module:
    """A block's (joint) self-attention: Wan's `attn1`, HunyuanVideo's `attn`."""
    attention = getattr(block, "attn1", None)
    return attention if attention is not None else block.attn


def checkpointed_blocks(perf: PerformanceConfig, device: torch.device) -> int | None:
    """What `set_gradient_checkpointing` gets: the configured count, or auto (every block on a GPU, none on a CPU)."""
    if perf.checkpoint_blocks is not None:
        return perf.checkpoint_blocks
    return 0 if device.type == "cpu" else None


def set_gradient_checkpointing(transformer: torch.nn.Module, blocks: int | None, keep_attention: bool = False) -> int:
    """Checkpoint the first `blocks` transformer blocks (None = all, 0 = none), in forward order. Returns how many.

    A checkpointed block keeps only its input for the backward pass and runs its forward again there:
    one more forward of that block per step, in exchange for all of its activations (see perfmodel).
    With `keep_attention` it also keeps its self-attention output, so that forward skips the attention.
    """
    all_blocks = transformer_blocks(transformer)
    count = len(all_blocks) if blocks is None else min(blocks, len(all_blocks))
    if count == 0:
        transformer.disable_gradient_checkpointing()
        return 0
    chosen = {id(b) for b in all_blocks[:count]}
    options = {"use_reentrant": False}
    if keep_attention:
        options["context_fn"] = _keep_self_attention_context
    if "respect_saved_tensors_hooks" in inspect.signature(torch.utils.checkpoint.checkpoint).parameters:
        options["respect_saved_tensors_hooks"] = True  # what it keeps is seen by saved-tensor hooks (perfmodel counts)

    def checkpoint_some(block, *args):
        if id(block) in chosen:
            return torch.utils.checkpoint.checkpoint(block, *args, **options)
        return block(*args)

    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_some)
    return count


def _is_self_attention_kernel(op, args) -> bool:
    """A fused attention kernel (PyTorch SDPA's flash / memory-efficient / cuDNN, or flash-attn's) whose
    queries and keys are the same tokens. Cross-attention to the text and CLIP tokens is cheap to redo
    and its output as large as the self-attention's, so it is recomputed. Textbook attention
    (`_native_math`) is not one kernel: it is simply recomputed."""
    name = str(op)
    if "backward" in name or not ("scaled_dot_product" in name or "flash_attn" in name):
        return False
    query, key = args[0], args[1]
    if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor)) or query.dim() != 4:
        return False
    # SDPA kernels take [batch, heads, tokens, dim]; flash-attn takes [batch, tokens, heads, dim].
    token_axis = 1 if "flash_attn" in name else 2
    return query.shape[token_axis] == key.shape[token_axis]


def _keep_self_attention_policy(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    if _is_self_attention_kernel(op, args):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _keep_self_attention_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_keep_self_attention_policy)


# ---- sampling: batched classifier-free guidance ---------------------------------------------------------


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class BatchedCFG(ModelHook):
    """Computes the pipeline's "cond" and "uncond" predictions in one batched forward.

    diffusers' Wan pipeline calls the transformer twice per step, inside `cache_context("cond")` and then
    `cache_context("uncond")`, with the same latents and timestep and the negative prompt. On the "cond"
    call this hook runs one forward on the batch [cond; uncond] (prompt and negative prompt stacked) and
    keeps the uncond half; the "uncond" call that follows returns it after checking that it is the same
    latents tensor, the same timestep and the negative prompt it was built with. Any other call runs
    unchanged. Same numbers as two calls (batch rows are independent), one pass over the weights: what
    matters when weights stream from CPU (offload) or the step is small.
    """

    _is_stateful = True  # so that diffusers hands it the pipeline's cache context (cond / uncond)

    def __init__(self, negative: torch.Tensor):
        super().__init__()
        self.state = StateManager(_NoState)
        self.negative = negative if negative.dim() == 3 else negative[None]  # [1, tokens, width]
        self._pending: tuple | None = None  # (latents, timestep, uncond prediction)
        self.batched_calls = 0

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        context = self.state._context
        name = context.name if context is not None else None
        hidden, timestep = kwargs.get("hidden_states"), kwargs.get("timestep")
        text, image = kwargs.get("encoder_hidden_states"), kwargs.get("encoder_hidden_states_image")
        as_tuple = not kwargs.get("return_dict", True)
        pending, self._pending = self._pending, None
        if name == "uncond" and pending is not None and not args:
            latents, t, uncond = pending
            if hidden is latents and torch.equal(timestep, t) and self._is_negative(text):
                return (uncond,) if as_tuple else _output(uncond)
        if (name != "cond" or args or hidden is None or timestep is None or text is None
                or text.shape[1:] != self.negative.shape[1:]):
            return self.fn_ref.original_forward(*args, **kwargs)
        batch = hidden.shape[0]
        negative = self.negative.to(text.device, text.dtype).expand(batch, -1, -1)
        both = dict(kwargs, hidden_states=torch.cat([hidden, hidden]), timestep=torch.cat([timestep, timestep]),
                    encoder_hidden_states=torch.cat([text, negative]), return_dict=False)
        if image is not None:
            both["encoder_hidden_states_image"] = torch.cat([image, image])
        out = self.fn_ref.original_forward(**both)[0]
        cond, uncond = out[:batch], out[batch:]
        self._pending = (hidden, timestep, uncond)
        self.batched_calls += 1
        return (cond,) if as_tuple else _output(cond)

    def _is_negative(self, text: torch.Tensor | None) -> bool:
        if text is None or text.shape[1:] != self.negative.shape[1:]:
            return False
        return bool((text == self.negative.to(text.device, text.dtype)).all())

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self._pending = None
        return module


def _output(sample: torch.Tensor):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)


@contextmanager
def batched_cfg(transformers: list[torch.nn.Module], negative: torch.Tensor):
    """Install `BatchedCFG` on each transformer for the duration of one pipeline call."""
    hooks = []
    try:
        for transformer in transformers:
            hook = BatchedCFG(negative)
            HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, BATCHED_CFG_HOOK)
            hooks.append((transformer, hook))
        yield [h for _, h in hooks]
    finally:
        for transformer, _ in hooks:
            transformer._diffusers_hook.remove_hook(BATCHED_CFG_HOOK, recurse=False)
