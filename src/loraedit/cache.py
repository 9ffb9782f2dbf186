"""Encoded latents and embeddings on disk, keyed by a hash of everything that made them.

Encoding is the expensive, repeated part of an edit (the VAE and the 11 GB text encoder on real
weights). Entries are keyed by the model's fingerprint plus the exact input tensors and strings, so a
changed input or model rebuilds the entry and an unchanged one is never encoded twice, across runs and
across edits of the same clip. Files are safetensors, written atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .media import atomic_path


def content_key(*parts: object) -> str:
    """A hex digest over strings, numbers, None and tensors (by dtype, shape and bytes)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
            h.update(f"tensor:{part.dtype}:{tuple(part.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{type(part).__name__}:{part!r};".encode())
    return h.hexdigest()[:32]


class TensorCache:
    """A folder of `<kind>/<key>.safetensors` entries holding one tensor each (or none)."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, kind: str, key: str, compute: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        if self.root is None:
            self.misses += 1
            return compute()
        path = self.root / kind / f"{key}.safetensors"
        if path.is_file():
            self.hits += 1
            stored = load_file(path)
            return stored.get("value")
        self.misses += 1
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({} if value is None else {"value": value.contiguous()}, str(tmp))
        return value


def default_cache_dir() -> Path:
    """Where encoded inputs and finished stage-1 LoRAs are kept: $LORAEDIT_CACHE/encoded, else ~/.cache/loraedit/encoded."""
    import os

    return Path(os.environ.get("LORAEDIT_CACHE", Path.home() / ".cache" / "loraedit")) / "encoded"
