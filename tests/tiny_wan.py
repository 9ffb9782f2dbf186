"""Shared by the LoRA tests: one seeded forward of the tiny random-weight Wan2.1 transformer (conftest's folder)."""

from __future__ import annotations

import torch


def tiny_wan_forward(transformer, seed=0):
    """The transformer's output on seeded random latents, text and CLIP tokens (no gradient)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 36, 3, 8, 8, generator=g)
    text = torch.randn(1, 512, 32, generator=g)
    image = torch.randn(1, 17, 4, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                           encoder_hidden_states_image=image, return_dict=False)[0]
