"""Appearance augmentation against memorisation (*ours*, issue 18): the clip's motion samples recoloured.

A LoRA trained long on one clip memorises the original object's look and paints it back over the edit.
These transforms recolour a training sample inside the edit region (the same transform in every frame,
frame 0 included), so the appearance must be taken from frame 0 rather than stored. Off by default; the
measurements are in docs/RESULTS.md section 7. Pure tensor functions, as in `conditioning`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conditioning import Sample, _check_video_and_masks, motion_sample


def recolour_edit_region(video: torch.Tensor, edit_masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random colour transform (channel shuffle, per-channel gain and offset) inside every frame's mask.

    The same transform in every frame, frame 0 included: the clip keeps its motion, but the edit region's
    appearance is no longer the one training can memorise; it must be taken from frame 0 (*ours*).
    """
    _check_video_and_masks(video, edit_masks)
    order = torch.randperm(3, generator=generator)
    gain = 0.6 + 0.8 * torch.rand(3, generator=generator)
    offset = 0.6 * torch.rand(3, generator=generator) - 0.3
    recoloured = (video[:, order] * gain.view(1, 3, 1, 1) + offset.view(1, 3, 1, 1)).clamp(-1, 1)
    m = edit_masks.float()[:, None]
    return video * (1 - m) + recoloured * m


def appearance_augmented_samples(video: torch.Tensor, edit_masks: torch.Tensor, prompt: str, copies: int,
                                 seed: int = 0) -> list[Sample]:
    """Stage-1 samples of the clip with its edit region recoloured (`copies` different transforms).

    Trained beside the plain motion sample, they teach the LoRA to carry frame 0's appearance through
    the masked region instead of memorising the input's (the drift back to the original colour seen
    when a LoRA fits one clip).
    """
    g = torch.Generator().manual_seed(seed)
    return [motion_sample(recolour_edit_region(video, edit_masks, g), edit_masks, prompt, name=f"recolour{i}")
            for i in range(copies)]


@dataclass(frozen=True)
class ColourTransform:
    """An affine colour map `x -> clamp(matrix @ x + offset)` applied to every pixel of [..., 3, H, W]."""

    matrix: torch.Tensor  # [3, 3]
    offset: torch.Tensor  # [3]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("ij,...jhw->...ihw", self.matrix, pixels) + self.offset.view(3, 1, 1)
        return out.clamp(-1, 1)


def random_colour_transform(generator: torch.Generator) -> ColourTransform:
    """A random hue rotation, saturation change, per-channel gain and offset (the brightness stays readable).

    The hue turns by a uniform angle about the grey axis, so every hue is as likely as the original one:
    a LoRA trained on many draws cannot store "the object is cyan", only "the object has frame 0's colour".
    """
    grey = torch.full((3, 1), 3 ** -0.5)
    angle = float(torch.rand(1, generator=generator)) * 2 * torch.pi
    k = torch.tensor([[0.0, -grey[2, 0], grey[1, 0]], [grey[2, 0], 0.0, -grey[0, 0]], [-grey[1, 0], grey[0, 0], 0.0]])
    rotation = torch.eye(3) + torch.sin(torch.tensor(angle)) * k + (1 - torch.cos(torch.tensor(angle))) * (k @ k)
    on_grey = grey @ grey.T
    saturation = 0.6 + 0.8 * float(torch.rand(1, generator=generator))
    gain = 0.75 + 0.5 * torch.rand(3, generator=generator)
    offset = 0.4 * torch.rand(3, generator=generator) - 0.2
    matrix = torch.diag(gain) @ (on_grey + saturation * (torch.eye(3) - on_grey)) @ rotation
    return ColourTransform(matrix, offset)


APPEARANCE_REGIONS = ("path", "frame")


def edit_path(keep_mask: torch.Tensor) -> torch.Tensor:
    """Every pixel the edit region covers in any frame ([H, W] in {0, 1}): the union of the edit masks.

    Frame 0's own mask is not in the keep mask (frame 0 is kept whole); frame 1's, next to it, is.
    """
    return (1.0 - keep_mask.float()).amax(dim=0)


def recolour_sample(sample: Sample, transform: ColourTransform, region: str = "path",
                    name: str | None = None) -> Sample:
    """The same training sample seen through a colour transform, in every frame (frame 0 included).

    The motion is untouched; what changes is what the LoRA could memorise: the appearance inside the
    edit region now has to come from the condition's frame 0, which the edited first frame replaces at
    inference (*ours*, issue 18). `region` says where the transform applies:

    - "path": the edit region's path over the whole clip (`edit_path`), the same pixels in every frame,
      so every pixel keeps one colour treatment through time and the background inside a moving box
      matches what frame 0 shows there; the background elsewhere keeps its own colours (it is given
      at inference as it was in training, so learning it is harmless);
    - "frame": the whole frame.

    Blank (unknown) pixels stay 0.
    """
    if region not in APPEARANCE_REGIONS:
        raise ValueError(f"unknown appearance region {region!r}: choose {', '.join(APPEARANCE_REGIONS)}")
    weight = edit_path(sample.keep_mask)[None] if region == "path" else torch.ones(1, 1)  # [1, H, W] or [1, 1]

    def apply(pixels: torch.Tensor) -> torch.Tensor:
        return pixels + (transform(pixels) - pixels) * weight

    keep = sample.keep_mask[:, None]
    return Sample(name or f"{sample.name}-recoloured", apply(sample.condition_video) * keep, sample.keep_mask,
                  apply(sample.clip_image), sample.prompt,
                  target=None if sample.target is None else apply(sample.target))


def appearance_variants(sample: Sample, count: int, seed: int, region: str = "path") -> list[Sample]:
    """`count` recoloured versions of a motion sample (`recolour_sample`), each with its own random
    transform drawn from `seed`; training draws one of them at every step instead of the original."""
    g = torch.Generator().manual_seed(seed)
    return [recolour_sample(sample, random_colour_transform(g), region, name=f"{sample.name}-appearance{i}")
            for i in range(count)]
