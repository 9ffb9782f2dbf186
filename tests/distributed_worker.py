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


def sample_rank(rank: int, world: int, port: int, model_dir: str, inputs: str, out: str):
    """Sample as rank `rank` of a `--context-parallel ulysses` job on the CPU, through `configure_transformer`.

    diffusers 0.42.1 picks a rank's device as `rank % torch.accelerator.device_count()` (0 on a CPU), and
    loraedit refuses the option without CUDA for that reason; both are patched here, in this process only, so
    that the split itself (tokens over ranks, Ulysses all-to-alls over gloo) runs and can be compared.
    """
    from safetensors.torch import save_file

    from loraedit import context_parallel, distributed
    from loraedit.backends.wan import load_wan
    from loraedit.performance import PerformanceConfig

    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.accelerator.device_count = lambda: 1
    refuse = context_parallel.problem
    context_parallel.problem = lambda kind, device_type, *rest: refuse(kind, "cuda", *rest)
    distributed.from_torchrun("cpu")
    try:
        backend = load_wan(Path(model_dir), perf=PerformanceConfig(context_parallel="ulysses"))
        tokens = []
        backend.transformer("transformer").blocks[1].register_forward_pre_hook(
            lambda module, args, kwargs: tokens.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
            with_kwargs=True)
        t = load_file(inputs)
        video = backend.generate(t["condition"], t["first_frame"], t["text"], t["negative"], t.get("image"),
                                 steps=2, guidance=5.0, shift=5.0, seed=0)
        save_file({"video": video.contiguous(), "tokens": torch.tensor(tokens)}, f"{out}.{rank}.safetensors")
    finally:
        distributed.leave()
