"""Wan's I2V channel layout: how the method's keep mask and condition become the model's input channels.

Wan (2.1 and 2.2 I2V) concatenates to its noisy latents 4 mask channels then the condition video's
latents. The mask channels fold the per-pixel-frame keep mask into latent frames (frame 0 repeated 4
times, then groups of 4 frames), exactly as diffusers' `WanImageToVideoPipeline.prepare_latents` builds
its own first-frame mask; `tests/test_conditioning.py` checks the two agree bit for bit. Which pixels are
kept is the method's decision (`conditioning`); this module only lays them out the way Wan reads them.
"""

from __future__ import annotations

import torch

from ..conditioning import downsample_keep_mask


def latent_num_frames(num_frames: int, temporal_factor: int = 4) -> int:
    """Latent frames of a 4k+1-frame video: frame 0 alone, then one per group of `temporal_factor`."""
    if (num_frames - 1) % temporal_factor != 0:
        raise ValueError(f"{num_frames} frames is not {temporal_factor}k+1")
    return (num_frames - 1) // temporal_factor + 1


def pack_temporal_mask(mask: torch.Tensor, temporal_factor: int = 4) -> torch.Tensor:
    """Wan's mask channels: [T, h, w] per pixel frame -> [temporal_factor, T', h, w].

    Frame 0's mask is repeated `temporal_factor` times so that every latent frame covers exactly
    `temporal_factor` pixel frames; the (T + 3) frames are then folded into 4 channels per latent
    frame. This is the layout of diffusers' `WanImageToVideoPipeline.prepare_latents`.
    """
    t, h, w = mask.shape
    t_lat = latent_num_frames(t, temporal_factor)
    frames = torch.cat([mask[:1].expand(temporal_factor, h, w), mask[1:]], dim=0)  # [T+3, h, w]
    return frames.reshape(t_lat, temporal_factor, h, w).transpose(0, 1).contiguous()  # [4, T', h, w]


def latent_keep_mask(
    keep_mask: torch.Tensor, spatial_factor: int = 8, temporal_factor: int = 4, mode: str = "maxpool"
) -> torch.Tensor:
    """Pixel keep mask [T, H, W] -> the model's mask channels [temporal_factor, T', H/s, W/s]."""
    return pack_temporal_mask(downsample_keep_mask(keep_mask, spatial_factor, mode), temporal_factor)


def pack_condition(mask_channels: torch.Tensor, condition_latents: torch.Tensor) -> torch.Tensor:
    """The I2V condition tensor: mask channels then condition latents along channels ([4+C, T', h, w])."""
    if mask_channels.shape[1:] != condition_latents.shape[1:]:
        raise ValueError(
            f"mask channels {tuple(mask_channels.shape)} and latents {tuple(condition_latents.shape)} differ in size"
        )
    return torch.cat([mask_channels.to(condition_latents.dtype), condition_latents], dim=0)
