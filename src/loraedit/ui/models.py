"""The web app's loaded models: one base per process (per model, device and memory mode), kept between jobs.

Loading Wan 14B takes minutes; a click should not. `ModelHolder.use` hands a job an idle loaded backend,
loading one only when none is idle (the first job, or a job running beside another with `--concurrency`
above 1), and takes it back when the job ends. The jobs (`api.train` / `sample` / `edit` with `backend=`)
attach the LoRA for their own use and detach it before they return, so every job, in every tab, starts
from the base exactly as loaded. A resident backend keeps its text and image encoders (the next clip needs
them), which costs memory that `memory_text` reports on the page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..api import load_backend
from ..backends import Backend, resolve_model_dir
from ..performance import PerformanceConfig

Key = tuple[str, str, str]  # (model folder, device, memory mode)


@dataclass
class ModelHolder:
    """Loaded backends by key, each used by one job at a time; counts loads (a test reads `loads`)."""

    idle: dict[Key, list[Backend]] = field(default_factory=dict)
    busy: dict[Key, int] = field(default_factory=dict)
    loads: int = 0
    load_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def key(model: str | Path, device: str | None, perf: PerformanceConfig) -> Key:
        return str(resolve_model_dir(model).resolve()), str(device or "auto"), perf.memory_mode

    @contextmanager
    def use(self, model: str | Path, device: str | None = None,
            perf: PerformanceConfig = PerformanceConfig()) -> Iterator[Backend]:
        """An idle loaded backend for this key (loaded now if none is idle), back to the idle list afterwards."""
        key = self.key(model, device, perf)
        with self._lock:
            backend = self.idle.get(key, []).pop() if self.idle.get(key) else None
            self.busy[key] = self.busy.get(key, 0) + 1
        try:
            if backend is None:
                started = time.perf_counter()
                backend = load_backend(key[0], device, perf)
                with self._lock:
                    self.loads += 1
                    self.load_seconds += time.perf_counter() - started
            yield backend
        finally:
            with self._lock:
                self.busy[key] -= 1
                if backend is not None:
                    self.idle.setdefault(key, []).append(backend)

    def clear(self) -> None:
        """Forget the idle backends (freed when no job holds them) and the counts."""
        with self._lock:
            self.idle.clear()
            self.loads, self.load_seconds = 0, 0.0

    def backends(self) -> list[tuple[Key, Backend]]:
        with self._lock:
            return [(key, b) for key, found in self.idle.items() for b in found]

    def memory_text(self) -> str:
        """What the loaded models hold, for the page: parameters and buffers by device, and the GPU's count."""
        held = self.backends()
        if not held and not any(self.busy.values()):
            return "no model loaded yet: the first Train or Sample loads it, later ones reuse it"
        by_device: dict[str, int] = {}
        for _, backend in held:
            for module in _modules(backend):
                for tensor in (*module.parameters(), *module.buffers()):
                    name = str(tensor.device)
                    by_device[name] = by_device.get(name, 0) + tensor.numel() * tensor.element_size()
        parts = [f"{_gib(n)} on {d}" for d, n in sorted(by_device.items())]
        gpu = _cuda_allocated()
        if gpu is not None:
            parts.append(f"GPU allocated {_gib(gpu)}")
        busy = sum(self.busy.values())
        return (f"{self.loads} model load(s) in {self.load_seconds:.1f} s, {len(held) + busy} loaded base(s) kept "
                f"({busy} in use): " + (", ".join(parts) if parts else "in use by a job"))


def _modules(backend: Backend) -> list:
    """The backend's torch modules (the pipeline's components: transformers, VAE, encoders still held)."""
    import torch

    pipe = getattr(backend, "pipe", None)
    found = [m for m in vars(pipe).values() if isinstance(m, torch.nn.Module)] if pipe is not None else []
    return found or list(backend.transformers())


def _cuda_allocated() -> int | None:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else None


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


#: The process's models: every tab and every click share them.
MODELS = ModelHolder()
