"""Sampling approximations that reuse work across denoising steps: diffusers' First Block Cache and TaylorSeer.

Both change the result (a little), so they are sampling settings recorded with every video
(`SampleConfig.first_block_cache`, `SampleConfig.taylorseer`), never performance settings, which leave
the numbers as they are. One may be used at a time; `StepCache` says which, `step_cache` installs it on
the transformers for one pipeline call and yields a `BlockCounter`: the share of block forwards it
skipped, which is its speed-up on any device.

- first-block (threshold T): the first block runs every step; the others reuse their residual from the
  last full step while the first block's output changed by less than T (relative mean absolute change).
- taylorseer (interval N): every block runs fully every N-th step (and in the first 3 steps); in between,
  each block's output is extrapolated from its last full outputs by a first-order Taylor series in the
  step index (diffusers' `TaylorSeerCacheConfig`). diffusers' default module patterns match no Wan block
  (`^blocks.*attn` must match a whole name), so the blocks are named here from the model's own block list.

MagCache (also in diffusers) needs magnitude ratios calibrated per model and step count, shipped there for
Flux only; it is left out until a calibration step exists.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

#: The step caches `--first-block-cache` / `--taylorseer` choose between.
STEP_CACHES = ("first-block", "taylorseer")


@dataclass(frozen=True)
class StepCache:
    """Which step cache, and its one number (first-block: the threshold; taylorseer: the interval)."""

    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in STEP_CACHES:
            raise ValueError(f"step cache {self.kind!r} is not one of {', '.join(STEP_CACHES)}")

    def __str__(self) -> str:
        return f"{self.kind} {self.value:g}"

    def diffusers_config(self, transformer: torch.nn.Module):
        from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

        if self.kind == "first-block":
            return FirstBlockCacheConfig(threshold=self.value)
        from .performance import transformer_blocks

        blocks = {id(b) for b in transformer_blocks(transformer)}
        names = [re.escape(name) for name, module in transformer.named_modules() if id(module) in blocks]
        return TaylorSeerCacheConfig(cache_interval=int(self.value), disable_cache_before_step=3, max_order=1,
                                     taylor_factors_dtype=torch.float32, cache_identifiers=names)


def taylorseer_full_steps(steps: int, interval: int) -> int:
    """How many of `steps` sampling steps run every block under TaylorSeer at `interval` (diffusers' rule: the
    first two, then step 4 and every `interval`-th after it; 1-based), per cache context: what the planner
    counts. A model-independent count, unlike the first-block cache's skips."""
    return sum(1 for step in range(1, steps + 1) if step < 3 or (step - 4) % interval == 0)


def choose_step_cache(first_block: float, taylorseer: int) -> StepCache | None:
    """The step cache that a sampling config asks for (at most one; `option_checks` refuses both)."""
    if first_block and taylorseer:
        raise ValueError("use one step cache at a time: a first-block threshold or a TaylorSeer interval")
    if first_block:
        return StepCache("first-block", first_block)
    return StepCache("taylorseer", taylorseer) if taylorseer else None


class BlockCounter:
    """Counts sampling forwards (the first block always runs) and those that ran every block."""

    def __init__(self):
        self.steps = 0
        self.full = 0

    def count_step(self, *_) -> None:  # a forward pre-hook on the first block
        self.steps += 1

    def count_full(self, *_) -> None:  # a forward pre-hook inside the last block: it ran
        self.full += 1

    @property
    def skipped_fraction(self) -> float:
        """Share of the forwards whose later blocks the cache did not run (its speed-up, roughly)."""
        return 1 - self.full / self.steps if self.steps else 0.0


@contextmanager
def step_cache(transformers: list[torch.nn.Module], cache: StepCache | None):
    """Install `cache` on each transformer for one pipeline call (module doc); yields a `BlockCounter`.
    None: nothing installed, the exact sampler."""
    from .performance import self_attention, transformer_blocks

    counter = BlockCounter()
    enabled, handles = [], []
    try:
        for transformer in transformers if cache is not None else []:
            transformer.enable_cache(cache.diffusers_config(transformer))
            enabled.append(transformer)
            # Every forward enters the first block's hooks; the last block's self-attention runs only when
            # the cache lets the block compute.
            blocks = transformer_blocks(transformer)
            handles.append(blocks[0].register_forward_pre_hook(counter.count_step))
            handles.append(self_attention(blocks[-1]).register_forward_pre_hook(counter.count_full))
        yield counter
    finally:
        for handle in handles:
            handle.remove()
        for transformer in enabled:
            transformer.disable_cache()
