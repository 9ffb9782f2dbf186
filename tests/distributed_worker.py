"""One rank of tests/test_distributed.py's two-process (gloo) training: started (forked) by torch.multiprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraedit.backends.base import EncodedSample


def load_samples(path: Path) -> list[EncodedSample]:
    """The encoded samples the parent wrote (so the ranks train on exactly its tensors, encoders unused)."""
    tensors, samples, i = load_file(path), [], 0
    while f"{i}.target" in tensors:
        samples.append(EncodedSample(f"s{i}", tensors[f"{i}.condition"], tensors[f"{i}.text"],
                                     tensors.get(f"{i}.image"), tensors[f"{i}.target"]))
        i += 1
    return samples


def train_rank(rank: int, world: int, port: int, model_dir: str, samples: str, num_motion: int, cfg, out_dir: str):
    """Train as rank `rank`, with gradient checkpointing on every block (FSDP2 re-gathers a block to recompute)."""
    from loraedit import distributed, lora_io
    from loraedit.backends.wan import load_wan
    from loraedit.performance import ALL_BLOCKS, PerformanceConfig
    from loraedit.train import train_lora

    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    parallel = distributed.from_torchrun("cpu")
    try:
        encoded = load_samples(Path(samples))
        backend = load_wan(Path(model_dir), perf=PerformanceConfig(checkpoint_blocks=ALL_BLOCKS))
        paths = train_lora(backend, encoded[:num_motion], encoded[num_motion:], cfg, Path(out_dir), progress=False,
                           parallel=parallel)
        # What --resume and the stage-1 cache do: load a LoRA into the sharded model (and read it back whole).
        transformer = backend.transformer("transformer")
        trained = lora_io.lora_state(transformer)
        lora_io.load_lora_state(transformer, {k: torch.zeros_like(v) for k, v in trained.items()})
        assert all(not v.any() for v in lora_io.lora_state(transformer).values())
        lora_io.load_lora_state(transformer, lora_io.read_lora(paths["transformer"])[0])
        assert all(torch.allclose(v, trained[k], atol=1e-7) for k, v in lora_io.lora_state(transformer).items())
    finally:
        distributed.leave()
