"""Sequence-parallel sampling: one video's tokens split over the GPUs of a torchrun job (diffusers' own).

diffusers 0.42.1 ships context parallelism for `WanTransformer3DModel` (its `_cp_plan` splits the video
tokens after the patch embedding and gathers them before `proj_out`; the 512 + 257 text/CLIP tokens stay
whole on every rank): `enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))` or
`ring_degree=N`. Ulysses exchanges queries, keys and values with all-to-alls so each GPU attends over the
whole sequence with 1/N of the heads (Wan 14B's 40 heads: N must divide 40); ring passes key/value blocks
around the GPUs and merges partial softmaxes by their log-sum-exp, so it needs a kernel that returns one
(flash, _flash_3, _native_cudnn; PyTorch's plain SDPA does not). Every rank computes the same video; rank 0
writes it. What it buys, modelled: `perfmodel_parallel`.

Why not on a CPU: diffusers builds its device mesh on `torch.accelerator` and picks the rank's device as
`rank % torch.accelerator.device_count()`, which is a division by zero without one (checked in 0.42.1's
`ModelMixin._resolve_parallel_config`); so this path is GPU-only and refused here in one line instead.
(With that lookup patched, Ulysses runs over gloo on CPUs: tests/test_distributed.py checks that two processes
sample the one-process video that way. It would buy nothing on a CPU, so the option stays refused there.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

KINDS = ("ulysses", "ring")
#: Attention kernels whose context-parallel path returns the log-sum-exp that ring attention merges by.
RING_ATTENTION = ("flash", "_flash_3", "_native_cudnn", "flash_hub", "_flash_3_hub", "sage")


def problem(kind: str, device_type: str, world: int, heads: int | None, attention: str) -> str | None:
    """Why `--context-parallel kind` cannot run here (one line with the fix), or None."""
    if kind not in KINDS:
        return f"--context-parallel {kind!r} is unknown: choose ulysses or ring"
    if device_type != "cuda":
        return ("--context-parallel needs CUDA GPUs (diffusers builds its device mesh on the accelerator; there is "
                "none here): sample on one process without it, or run under torchrun on a GPU machine")
    if world < 2:
        return ("--context-parallel needs several processes: run `torchrun --nproc-per-node N -m loraedit.cli "
                "sample ... --context-parallel ulysses` (N GPUs)")
    if kind == "ulysses" and heads and heads % world:
        return (f"--context-parallel ulysses splits the {heads} attention heads over the GPUs and {world} does not "
                f"divide {heads}: use {', '.join(str(n) for n in range(2, 9) if heads % n == 0)} GPUs, or ring")
    if kind == "ring" and attention not in RING_ATTENTION:
        return (f"--context-parallel ring merges attention blocks by their log-sum-exp, which --attention "
                f"{attention} does not return: add --attention _native_cudnn (or flash), or use ulysses")
    return None


def enable(transformer: torch.nn.Module, kind: str, world: int) -> None:
    """Split the transformer's video tokens over the job's `world` GPUs (after its attention backend is set)."""
    from diffusers import ContextParallelConfig

    degree = {"ulysses_degree": world} if kind == "ulysses" else {"ring_degree": world}
    transformer.enable_parallelism(config=ContextParallelConfig(**degree))
