"""Encoding the method's samples once per content: what the model sees, read from the cache on every later run.

`Encoder` turns a pixel-space `conditioning.Sample` into the backend's `EncodedSample` (condition channels,
text and CLIP embeddings, target latents), each piece keyed by content (`cache`), so that a repeated run on
the same clip never encodes twice and the encoders can be freed before training or sampling.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import appearance, conditioning
from .backends import Backend, EncodedSample
from .cache import TensorCache, content_key
from .config import TrainConfig


class Encoder:
    """Encodes samples, prompts and images once per content; later runs read them from the cache."""

    def __init__(self, backend: Backend, cache_dir: Path | None, mask_mode: str, clip_view: str = "squash"):
        self.backend = backend
        self.cache = TensorCache(cache_dir)
        self.model_key = backend.fingerprint()
        self.mask_mode = mask_mode
        self.clip_view = clip_view

    def prompt(self, text: str, image: torch.Tensor | None = None) -> torch.Tensor:
        """The prompt's embedding; `image` is the frame a Llava-style text encoder reads with it (HunyuanVideo:
        the first frame; None = the family's unconditional image) and is ignored by prompt-only encoders."""
        if not self.backend.prompt_sees_image:
            return self.cache.get_or_compute("text", content_key(self.model_key, text),
                                             lambda: self.backend.encode_prompt(text))
        key = content_key(self.model_key, text, "no image" if image is None else image)
        return self.cache.get_or_compute("text", key, lambda: self.backend.encode_prompt(text, image))

    def image(self, image: torch.Tensor) -> torch.Tensor | None:
        if not self.backend.uses_clip:
            return None
        key = content_key(self.model_key, image) if self.clip_view == "crop" else \
            content_key(self.model_key, self.clip_view, image)
        return self.cache.get_or_compute("clip", key, lambda: self.backend.encode_image(image, self.clip_view))

    def latents(self, video: torch.Tensor) -> torch.Tensor:
        return self.cache.get_or_compute("latents", content_key(self.model_key, video),
                                         lambda: self.backend.encode_video(video))

    def condition(self, sample: conditioning.Sample) -> torch.Tensor:
        key = content_key(self.model_key, self.mask_mode, sample.condition_video, sample.keep_mask)
        return self.cache.get_or_compute("condition", key,
                                         lambda: self.backend.condition_tensor(sample, self.mask_mode))

    def sample(self, sample: conditioning.Sample) -> EncodedSample:
        return EncodedSample(
            name=sample.name, condition=self.condition(sample), text=self.prompt(sample.prompt, sample.clip_image),
            image=self.image(sample.clip_image),
            target=None if sample.target is None else self.latents(sample.target))


def encode_appearance_variants(encoder: Encoder, motion: list[conditioning.Sample],
                               cfg: TrainConfig) -> list[list[EncodedSample]] | None:
    """`cfg.appearance_augment` recoloured variants of each motion sample, encoded (None when it is 0).

    Encoded once before training, like every sample, so the encoders can still be freed; each training
    step then draws one variant (train.train_lora). The transforms come from the training seed.
    """
    if not cfg.appearance_augment:
        return None
    return [[encoder.sample(v) for v in appearance.appearance_variants(
        s, cfg.appearance_augment, seed=cfg.seed * 1000 + i, region=cfg.appearance_region)]
        for i, s in enumerate(motion)]
