"""The command line under torchrun: `train --fsdp` and `sample --context-parallel`, and `plan-gpus`.

Each process of the job runs the whole command (the checks, encoding, the run); `distributed` says who
computes what and that rank 0 alone writes. Only rank 0 prints progress and the final line.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from ..context_parallel import KINDS  # (no torch: the parser stays quick to build)
from ..errors import InputError


def add_train_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fsdp", action="store_true", help="one of N processes started by `torchrun --nproc-per-node N "
                   "-m loraedit.cli train ... --fsdp`: the frozen base is sharded over the N GPUs (FSDP2) and each "
                   "computes 1/N of a step's draws (--draws-per-step, default N)")


def add_sample_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context-parallel", choices=KINDS, help="one of N processes started by `torchrun "
                   "--nproc-per-node N -m loraedit.cli sample ...`: split the video's tokens over the N GPUs "
                   "(diffusers' Ulysses or ring attention; CUDA only)")


def add_plan_gpus_parser(sub) -> None:
    p = sub.add_parser("plan-gpus", help="what 1, 2, 4, 8 GPUs buy for Wan2.1-14B (modelled): memory per GPU of "
                       "sharded training, speed-up of sequence-parallel sampling on NVLink and on PCIe")
    p.add_argument("--gpu", default="h100", help="the card (a `loraedit plan --gpu` name; default h100)")
    p.add_argument("--frames", type=int, nargs="+", default=[49, 81], help="frames, 4k+1 (default 49 81)")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU counts (default 1 2 4 8)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run_plan_gpus(args: argparse.Namespace) -> str:
    from ..devices import named_gpu
    from ..perfmodel_parallel import format_scaling, scaling_table

    gpu = named_gpu(args.gpu)
    if gpu.device is None:
        raise InputError(f"--gpu {args.gpu}: no speed figures for this card: choose one `loraedit plan --gpu x` lists")
    return format_scaling(scaling_table(gpu.device, tuple(args.frames), tuple(args.gpus)))


@contextlib.contextmanager
def job(args: argparse.Namespace) -> Iterator:
    """Join the torchrun job the options ask for (or none), fill in the options it implies, leave at the end.

    Yields the `distributed.Parallel` of this process (`distributed.SINGLE` without --fsdp / --context-parallel).
    """
    from .. import distributed

    fsdp, split = getattr(args, "fsdp", False), getattr(args, "context_parallel", None)
    if not (fsdp or split):
        yield distributed.SINGLE
        return
    if split:
        from ..context_parallel import problem
        from ..performance import resolve_attention

        device = args.device or "cuda"
        world = _torchrun_world()
        why = problem(split, "cuda" if device.startswith("cuda") and _has_cuda() else "cpu", world, None,
                      resolve_attention(args.attention, _device(device), training=False))
        if why:
            raise InputError(why)
    parallel = distributed.from_torchrun(args.device)
    args.device = parallel.device  # this rank's own GPU, whatever --device said (one process per GPU)
    try:
        if fsdp:
            if args.memory_mode != "full":
                raise InputError(f"--fsdp shards the bf16 base itself and --memory-mode {args.memory_mode} would "
                                 "store or move it too: drop --memory-mode (FSDP2 already divides it by the GPUs)")
            if args.draws_per_step is None:
                args.draws_per_step = parallel.world
            args.no_memory_check = True  # the one-GPU memory check does not know the base is sharded: plan-gpus does
        args.quiet = args.quiet or not parallel.writes
        yield parallel
    finally:
        distributed.leave()


def _torchrun_world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _device(name: str):
    import torch

    return torch.device(name if _has_cuda() else "cpu")
