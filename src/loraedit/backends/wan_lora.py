"""Wan's LoRA file layout: peft names on diffusers' Wan modules <-> ComfyUI's original Wan names.

`diffusion_model.blocks.N.self_attn.q.lora_A.weight` / `lora_B.weight`, the layout ComfyUI, kijai's
wrapper, DiffSynth, diffusion-pipe and diffusers' Wan LoRA loader all read. Every diffusers module maps to
exactly one original module, so the weights pass through unchanged. `to_file` adds a scalar
`diffusion_model.blocks.N.self_attn.q.alpha` per module (scale = alpha / rank); `lora_io.save_lora` folds
that scale into lora_B and drops the alphas (the portable file every reader applies alike), and `from_file`
undoes the fold for a file without alphas.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import InputError

#: diffusers module names inside a Wan block -> the original Wan (ComfyUI) names.
DIFFUSERS_TO_WAN = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
WAN_TO_DIFFUSERS = {v: k for k, v in DIFFUSERS_TO_WAN.items()}
_PEFT_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(lora_[AB])\.weight$")
_COMFY_KEY = re.compile(r"^diffusion_model\.blocks\.(\d+)\.(.+)\.(lora_[AB]\.weight|alpha)$")


class WanLoraKeyMap:
    """`backends.base.LoraKeyMap` for Wan2.1 / Wan2.2 (one file per expert, the same names in each)."""

    family = "Wan"

    def to_file(self, state: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
        """peft names -> ComfyUI names, with one scalar `.alpha` per adapted module."""
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            m = _PEFT_KEY.match(key)
            if m is None or m.group(2) not in DIFFUSERS_TO_WAN:
                raise ValueError(f"cannot name LoRA weight {key!r} in the Wan layout")
            block, module, ab = m.group(1), DIFFUSERS_TO_WAN[m.group(2)], m.group(3)
            out[f"diffusion_model.blocks.{block}.{module}.{ab}.weight"] = value
            out[f"diffusion_model.blocks.{block}.{module}.alpha"] = torch.tensor(float(alpha))
        return out

    def from_file(self, tensors: dict, path: Path, rank: int = 0, alpha: float = 0.0) -> dict:
        """ComfyUI names -> peft names. The alphas are checked by `lora_io.read_lora` (they must match); a file
        without them (loraedit's portable file) has alpha / rank folded into lora_B, which is divided out here."""
        unfold = rank and not any(k.endswith(".alpha") for k in tensors) and alpha != rank
        state = {}
        for key, value in tensors.items():
            m = _COMFY_KEY.match(key)
            if m is None or m.group(2) not in WAN_TO_DIFFUSERS:
                raise InputError(f"LoRA file {path} has a weight {key!r} that is not a Wan block LoRA: "
                                 "give a LoRA saved by loraedit (or with ComfyUI Wan keys)")
            if m.group(3) == "alpha":
                continue
            if unfold and m.group(3) == "lora_B.weight":
                value = value.float() / (alpha / rank)
            state[f"blocks.{m.group(1)}.{WAN_TO_DIFFUSERS[m.group(2)]}.{m.group(3)}"] = value
        return state

    def peft_shapes(self, shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, tuple[int, ...]]:
        """Renaming only: each file weight is one peft weight of the same shape."""
        names = self.from_file({k: k for k in shapes}, path)
        return {peft: shapes[key] for peft, key in names.items()}


LORA_KEY_MAP = WanLoraKeyMap()
