"""Sampling a prepared edit: the sampler over one window or a chain of them, and extra LoRAs beside the edit's.

`api.prepare_sampling` encodes the first window's condition while the encoders are loaded; `sample_windows`
then runs the backend's sampler once (a clip that fits the model) or once per window (`long_video`), and
`attach_extra_loras` stacks `--extra-lora` files beside the edit LoRA for sampling only.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import long_video
from .backends import Backend, EncodedSample
from .config import RunOptions, SampleConfig
from .encoding import Encoder
from .lora_io import ADAPTER, load_lora, stack_adapters
from .validate import Clip


@dataclass
class PreparedSampling:
    """Everything sampling needs, encoded, so that the encoders can be freed before training or sampling."""

    clip: Clip
    first_frame: torch.Tensor  # [3, H, W]
    condition: EncodedSample  # of the first window (the whole clip when it fits one)
    negative: torch.Tensor  # [512, D]
    windows: list[long_video.Window]  # one, or the chain of a clip longer than the model's window
    prompt: str


def sample_windows(backend: Backend, prepared: PreparedSampling, opts: RunOptions, scfg: SampleConfig) -> torch.Tensor:
    """The sampler over the prepared windows: one call for a clip that fits the model, else one per window,
    each given the last frames generated so far (`long_video`). Later windows keep the first window's text and
    CLIP embeddings (the edited first frame's: an anchor against drift) and encode only their condition (VAE).
    """
    clip, windows = prepared.clip, prepared.windows
    encoder = Encoder(backend, opts.cache_dir, opts.mask_mode, opts.clip_view) if len(windows) > 1 else None
    video = prepared.first_frame[None]
    for i, window in enumerate(windows):
        given = video[window.start:window.start + window.given]
        if i == 0:
            encoded = prepared.condition
        else:
            if scfg.window_colour_match:
                given = long_video.match_colour(given, clip.masks[window.start:window.start + window.given],
                                                prepared.first_frame, clip.masks[0])
            sample = long_video.window_condition(opts.mode, clip.video, clip.masks, window, given, prepared.prompt)
            encoded = replace(prepared.condition, condition=encoder.condition(sample))
            print(f"loraedit: window {i + 1}/{len(windows)}: frames {window.start}-{window.stop - 1}", file=sys.stderr)
        out = backend.generate(encoded.condition, given[0], encoded.text, prepared.negative, encoded.image,
                               steps=scfg.steps, guidance=scfg.guidance, guidance_2=scfg.guidance_2, shift=scfg.shift,
                               seed=scfg.seed + i, sampler=scfg.sampler,
                               step_cache=scfg.step_cache)
        video = out if i == 0 else torch.cat([video[:window.start + window.given], out[window.given:]])
    return video


def attach_extra_loras(backend: Backend, scfg: SampleConfig, edit_lora: bool) -> None:
    """Stack `--extra-lora` files beside the edit LoRA on every expert, each at its weight (sampling only:
    training never sees them). Without extras nothing changes, so a plain run stays what it was."""
    if not scfg.extra_loras:
        return
    for expert in backend.experts:
        transformer = backend.transformer(expert.name)
        weights = {ADAPTER: 1.0} if edit_lora else {}
        for i, extra in enumerate(scfg.extra_loras):
            name = f"extra_{i}"
            with warnings.catch_warnings():  # peft warns on every second adapter; stacking is the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                load_lora(Path(extra.path), transformer, backend.fingerprint(), dtype=backend.dtype,
                          device=backend.device, adapter=name)
            weights[name] = extra.weight
        stack_adapters(transformer, weights)
