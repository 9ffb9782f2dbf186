"""The GPU a run will use, detected or named, with the figures the cost model needs; and the host's free memory.

`loraedit plan`, `loraedit doctor` and the memory check before `edit` all need the same three facts
about a GPU: how much memory is free now, its dense bf16 throughput and its host link (what offloaded
weights stream over). torch reports only the first, so the other two come from a small catalogue of
public peak figures (dense bf16 tensor FLOP/s without sparsity, the usual host link), which
`perfmodel` turns into minutes at its assumed utilisation. A card missing from the catalogue still gets
its memory checked; its minutes are left out rather than guessed.

Planning for a card that is not here (`--gpu l40s`) assumes it is empty: all of its memory is free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .perfmodel import Device


@dataclass(frozen=True)
class CardSpec:
    """Public figures of a GPU model: usable memory (as torch reports it), dense bf16 FLOP/s, host link B/s."""

    key: str  # what `--gpu` takes
    name: str
    pattern: str  # regex matched against torch's device name, lowercased
    memory_gib: float
    bf16_flops: float
    host_bytes_per_s: float


#: Most specific first: "a100" must not catch an "a10", nor "l4" an "l40s".
CARDS = (
    CardSpec("h200", "H200 141GB", r"\bh200\b", 139.8, 989e12, 50e9),
    CardSpec("h100-pcie", "H100 PCIe 80GB", r"\bh100\b.*\bpcie\b", 79.2, 756e12, 50e9),
    CardSpec("h100", "H100 SXM 80GB", r"\bh100\b", 79.6, 989e12, 50e9),
    CardSpec("a100", "A100 80GB", r"\ba100\b.*80", 79.1, 312e12, 25e9),
    CardSpec("a100-40", "A100 40GB", r"\ba100\b", 39.4, 312e12, 25e9),
    CardSpec("l40s", "L40S 48GB", r"\bl40s\b", 44.4, 362e12, 25e9),
    CardSpec("rtx6000ada", "RTX 6000 Ada 48GB", r"\brtx 6000 ada\b", 47.5, 364e12, 25e9),
    CardSpec("a6000", "RTX A6000 48GB", r"\ba6000\b", 47.5, 155e12, 25e9),
    CardSpec("rtx5090", "RTX 5090 32GB", r"\b5090\b", 31.4, 209e12, 50e9),
    CardSpec("rtx4090", "RTX 4090 24GB", r"\b4090\b", 23.6, 165e12, 25e9),
    CardSpec("rtx3090", "RTX 3090 24GB", r"\b3090\b", 23.6, 71e12, 25e9),
    CardSpec("l4", "L4 24GB", r"\bl4\b", 22.0, 121e12, 25e9),
    CardSpec("a10", "A10 24GB", r"\ba10\b", 22.0, 125e12, 25e9),
)


@dataclass(frozen=True)
class Gpu:
    """A GPU as a plan sees it. `free_gib` is measured when `detected`, else the card's whole memory."""

    name: str
    total_gib: float
    free_gib: float
    spec: CardSpec | None  # None: a card without catalogue figures (memory known, speed not)
    detected: bool

    @property
    def device(self) -> Device | None:
        """perfmodel's view (memory = what is free), or None when the speed figures are unknown."""
        if self.spec is None:
            return None
        return Device(self.name, self.free_gib, self.spec.bf16_flops, self.spec.host_bytes_per_s)


def card_for(device_name: str) -> CardSpec | None:
    """The catalogue entry whose pattern matches torch's name for a device, if any."""
    lowered = device_name.lower()
    return next((c for c in CARDS if re.search(c.pattern, lowered)), None)


def named_gpu(key: str, memory_gib: float | None = None) -> Gpu:
    """A catalogue card to plan for (`--gpu KEY`), assumed empty; `memory_gib` overrides its memory."""
    spec = next((c for c in CARDS if c.key == key.lower()), None)
    if spec is None:
        raise InputError(f"--gpu {key!r} is not a card loraedit knows: choose one of "
                         f"{', '.join(c.key for c in CARDS)}, or give --gpu-memory GIB alone")
    memory = spec.memory_gib if memory_gib is None else memory_gib
    return Gpu(spec.name, memory, memory, spec, detected=False)


def memory_only_gpu(memory_gib: float) -> Gpu:
    """A card known only by its memory (`--gpu-memory` without `--gpu`): checked for fit, not timed."""
    return Gpu(f"a {memory_gib:g} GiB GPU", memory_gib, memory_gib, None, detected=False)


def detect_gpu(device: str | None = None) -> Gpu | None:
    """The CUDA device a run would use (`--device`, default cuda:0 when available), or None on a CPU."""
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return None
    index = torch.device(device or "cuda").index or 0
    name = torch.cuda.get_device_name(index)
    free, total = torch.cuda.mem_get_info(index)
    return Gpu(name, total / 2**30, free / 2**30, card_for(name), detected=True)


def host_available_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """Memory the OS could give this process now (Linux MemAvailable), or None where it cannot be read."""
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 2**20 if match else None
