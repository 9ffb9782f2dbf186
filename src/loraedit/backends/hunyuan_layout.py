"""HunyuanVideo-I2V's input layout: how the method's condition, keep mask and prompt become its inputs.

The latent_concat transformer (HunyuanVideo-I2V-33ch) reads `[noisy latents (C), condition latents (C),
one mask channel]` per latent voxel. diffusers' `HunyuanVideoImageToVideoPipeline.__call__` builds the
stock condition inline: the first frame's latents (encoded alone) in latent frame 0 and zeros in every
later latent frame, with a mask of 1 on latent frame 0 and 0 elsewhere. The method's condition maps onto
that directly: V_cond's latents in every latent frame, the keep mask per latent frame, and zeros where
the mask says "generate" (zero latents are what this model was trained to read as "unknown";
`tests/test_hunyuan.py` checks the first-frame case equals the stock condition bit for bit). Which
pixels are kept is the method's decision (`conditioning`); this module only lays them out.

The prompt travels as one tensor (`pack_text`), so the trainer and the cache handle it like any
family's: the Llava tokens the text encoder kept, then the CLIP pooled vector spread over the last rows.
"""

from __future__ import annotations

import math

import torch

from ..conditioning import downsample_keep_mask


def latent_keep_mask(keep_mask: torch.Tensor, spatial_factor: int = 8, temporal_factor: int = 4,
                     mode: str = "maxpool") -> torch.Tensor:
    """Pixel keep mask [T, H, W] (T = 4k+1) -> the mask channel [1, T', H/s, W/s].

    Latent frame 0 is pixel frame 0 alone (the VAE encodes it by itself); latent frame l >= 1 covers pixel
    frames 4(l-1)+1 .. 4l and keeps a cell only if every one of them keeps it (one channel cannot say
    "kept in some of its frames", and a kept cell must never hide an edit, as with maxpool in space). On
    the stock first-frame mask this is the stock channel: 1 on latent frame 0, 0 after.
    """
    t = keep_mask.shape[0]
    if (t - 1) % temporal_factor != 0:
        raise ValueError(f"{t} frames is not {temporal_factor}k+1")
    down = downsample_keep_mask(keep_mask, spatial_factor, mode)  # [T, h, w]
    later = down[1:].reshape(-1, temporal_factor, *down.shape[1:]).amin(dim=1)  # [T'-1, h, w]
    return torch.cat([down[:1], later], dim=0)[None]  # [1, T', h, w]


def pack_condition(condition_latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The condition channels [C + 1, T', h, w]: condition latents, zero where the mask generates, then the mask."""
    if mask.shape[1:] != condition_latents.shape[1:] or mask.shape[0] != 1:
        raise ValueError(f"mask {tuple(mask.shape)} and latents {tuple(condition_latents.shape)} do not match")
    mask = mask.to(condition_latents.dtype)
    return torch.cat([condition_latents * mask, mask], dim=0)


def pooled_rows(pooled_dim: int, text_dim: int) -> int:
    """Rows of width `text_dim` that hold the pooled vector (1 for the real model: 768 <= 4096)."""
    return math.ceil(pooled_dim / text_dim)


def pack_text(tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Llava tokens [N, D] (only those the attention mask keeps) and the CLIP pooled vector [P] -> [N + k, D].

    The pooled vector is laid row after row over the last k = ceil(P / D) rows, zero-padded.
    """
    n, d = tokens.shape
    rows = torch.zeros(pooled_rows(pooled.shape[0], d) * d, dtype=tokens.dtype)
    rows[: pooled.shape[0]] = pooled.to(tokens.dtype)
    return torch.cat([tokens, rows.view(-1, d)], dim=0)


def unpack_text(text: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N + k, D] -> (tokens [B, N, D], attention mask [B, N] of ones, pooled [B, P])."""
    b, _, d = text.shape
    k = pooled_rows(pooled_dim, d)
    tokens = text[:, :-k]
    pooled = text[:, -k:].reshape(b, k * d)[:, :pooled_dim]
    return tokens, torch.ones(tokens.shape[:2], dtype=text.dtype, device=text.device), pooled
