"""One LoRA trained by several processes (GPUs): the frozen base sharded with FSDP2, a step's draws split.

Started by `torchrun --nproc-per-node N -m loraedit.cli train ... --fsdp` (`from_torchrun` reads the
environment torchrun sets). What each rank does, and why:

- **The base is sharded** (`torch.distributed.fsdp.fully_shard`, one unit per transformer block and one
  for the rest): each GPU stores 1/N of the frozen bf16 weights and all-gathers one block at a time, so
  Wan 14B's 30.5 GiB base takes 30.5/N GiB plus two blocks (one in use, one prefetched) on each GPU
  (`perfmodel_parallel`; the activations of a draw are not divided).
- **The LoRA is not sharded** (`ignored_params`): it is under 0.5 % of the weights (rank 16), and kept whole
  and identical on every rank it leaves the optimiser, gradient clipping, checkpoints, resume and the
  LoRA files exactly the single-process code. Its gradients are summed by one all-reduce per step.
- **Data parallel over the draws of a step**, not the same draw on every rank: a step averages the
  gradients of `TrainConfig.draws_per_step` draws (sample, noise, noise level), and rank r computes
  draws r, r + N, ...; the same draw on every rank would spend N GPUs on one GPU's work. The split is
  exact in math: N ranks give the LoRA that one process gives with the same `draws_per_step`
  (tests/test_distributed.py compares them after several steps), so `--fsdp` changes where the work
  runs, never what is learned.
- **Rank 0 alone writes** (LoRA files, checkpoints, logs, reports, the encoded cache): the others read
  what it wrote after a barrier (`writer_first`).

Single-process runs use `SINGLE`, whose every method is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import InputError, setting


@dataclass(frozen=True)
class Parallel:
    """This process's place in the job: its rank among `world` processes (1: no other process)."""

    rank: int = 0
    world: int = 1
    device_type: str = "cpu"

    @property
    def device(self) -> str:
        """This rank's device: its own GPU (the one `from_torchrun` selected), or the CPU."""
        return f"cuda:{torch.cuda.current_device()}" if self.device_type == "cuda" else "cpu"

    @property
    def writes(self) -> bool:
        """Whether this rank writes files (rank 0 only, so no two processes ever write the same path)."""
        return self.rank == 0

    def draws(self, per_step: int) -> range:
        """The draws of a step this rank computes: r, r + N, ... (all of them in one process)."""
        if per_step % self.world:
            raise InputError(f"{setting('draws_per_step')} {per_step} does not split over {self.world} processes: "
                             f"give a multiple of {self.world} (each process computes an equal share of a step's "
                             "draws)")
        return range(self.rank, per_step, self.world)

    def shard(self, transformer: torch.nn.Module) -> None:
        """FSDP2 over the frozen base: one unit per block, one for the rest; the LoRA stays whole."""
        if self.world == 1:
            return
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from .performance import transformer_blocks

        # FSDP2 warns that the model returns a view (an in-place op on it would skip a hook): the trainer
        # only ever reads the prediction (`flow_matching_loss`), so the warning would only alarm the user.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(self.device_type, (self.world,))
        lora = {p for p in transformer.parameters() if p.requires_grad}
        for block in transformer_blocks(transformer):
            fully_shard(block, mesh=mesh, ignored_params=lora & set(block.parameters()))
        fully_shard(transformer, mesh=mesh, ignored_params=lora)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a tensor (a step's loss), the same on every rank."""
        if self.world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
        return value

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the LoRA gradients over ranks in one all-reduce, so every rank takes the same optimiser step."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def writer_first(self) -> Iterator[None]:
        """Run the block on rank 0, then on the others (which then find what rank 0 cached)."""
        if not self.writes:
            self.barrier()
        yield
        if self.writes:
            self.barrier()


SINGLE = Parallel()
_active: Parallel = SINGLE


def active() -> Parallel:
    """The job this process belongs to (`SINGLE` unless `from_torchrun` joined one)."""
    return _active


def from_torchrun(device: str | None = None) -> Parallel:
    """Join the job torchrun started (RANK, WORLD_SIZE, LOCAL_RANK): NCCL on GPUs, gloo on CPUs.

    Each rank takes the GPU of its local rank, so `cuda` everywhere below means this rank's own GPU.
    """
    global _active
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise InputError(f"{setting('fsdp')} needs one process per GPU started by torchrun: run `torchrun "
                         f"--nproc-per-node N -m loraedit.cli train ... --fsdp` (or drop {setting('fsdp')})")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    _active = Parallel(rank, world, "cuda" if cuda else "cpu")
    return _active


def leave() -> None:
    """Leave the job (end of the command); the process is single again."""
    global _active
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _active = SINGLE
