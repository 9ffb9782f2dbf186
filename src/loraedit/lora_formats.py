"""LoRA files written by other tools: their layouts, read from the header, turned into peft weights.

People bring Wan LoRAs from several trainers, and each names the same weights differently:
- ComfyUI, kijai's WanVideoWrapper, diffusion-pipe and the LoRA-Edit authors' files (built on diffusion-pipe):
  `diffusion_model.blocks.N.self_attn.q.lora_A.weight` (original Wan module names; diffusion-pipe forces
  alpha = rank and writes no `.alpha`; ComfyUI also reads `lora_down` / `lora_up` and an optional `.alpha`);
- musubi-tuner / kohya: `lora_unet_blocks_N_self_attn_q.lora_down.weight`, `lora_up.weight` and a scalar
  `.alpha` (musubi's default alpha is 1, so the scale alpha / rank matters);
- diffusers / peft: `transformer.blocks.N.attn1.to_q.lora_A.weight` (diffusers' module names), or
  `base_model.model.` in front for a raw peft save;
- DiffSynth's own training output: `blocks.N.self_attn.q.lora_A.default.weight` (no prefix).
Every one is a plain rank-r LoRA on the same Linear layers, so reading is renaming plus folding each module's
scale (alpha / rank, 1 without `.alpha`) into lora_B. The names and shapes come from the header alone, so a
file is checked against the model before any tensor is read; a key no layout explains refuses the file.

The arithmetic is diffusers' own (`_convert_non_diffusers_wan_lora_to_diffusers` and
`_convert_musubi_wan_lora_to_diffusers`: alpha / rank per module, no alpha = 1); tests/test_lora_formats.py
checks each layout against those converters. They are not called here: they need the tensors (the check
must run on the header) and the musubi one refuses a LoRA that leaves modules out.

HunyuanVideo: only the layout diffusers converts (`_convert_hunyuan_video_lora_to_diffusers`): original names
with fused layers (`diffusion_model.double_blocks.N.img_attn_qkv.lora_A.weight`, diffusion-pipe's and
ComfyUI's), read as that converter reads them (`backends.hunyuan_lora.foreign_modules`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .backends.hunyuan_lora import foreign_modules
from .backends.wan_lora import DIFFUSERS_TO_WAN, WAN_TO_DIFFUSERS
from .errors import InputError

#: prefix -> how messages name the layout (all keys of a file share one prefix)
PREFIXES = {
    "diffusion_model.": "ComfyUI / diffusion-pipe",
    "transformer.": "diffusers",
    "base_model.model.": "peft",
    "pipe.dit.": "DiffSynth",
    "": "DiffSynth",
}
MUSUBI = "musubi-tuner / kohya"
_ORIGINAL = "|".join(re.escape(m) for m in WAN_TO_DIFFUSERS)
_DIFFUSERS = "|".join(re.escape(m) for m in DIFFUSERS_TO_WAN)
_DOTTED = re.compile(rf"^blocks\.(\d+)\.({_ORIGINAL}|{_DIFFUSERS})\."
                     r"(?:(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight|(alpha))$")
_MUSUBI = re.compile(r"^lora_unet_blocks_(\d+)_(self_attn_[qkvo]|cross_attn_(?:[qkvo]|k_img|v_img)|ffn_[02])"
                     r"\.(?:(lora_down|lora_up)\.weight|(alpha))$")
_PART = {"lora_A": "lora_A", "lora_down": "lora_A", "lora_B": "lora_B", "lora_up": "lora_B"}


@dataclass(frozen=True)
class ForeignLora:
    """A LoRA file of another tool, as its header describes it (peft module names -> the file's keys)."""

    layout: str  # how messages name it, e.g. "musubi-tuner / kohya"
    rank: int
    #: peft module -> (lora_A key, lora_B key, alpha key or None, rows of lora_B it owns or None for all)
    keys: dict[str, tuple[str, str, str | None, slice | None]]
    shapes: dict[str, tuple[int, ...]]  # peft weight name (`blocks.0.attn1.to_q.lora_A.weight`) -> shape

    @property
    def targets(self) -> str:
        """A peft regex adapting exactly the file's modules (the blocks grouped by module set, to stay short)."""
        by_module: dict[tuple[str, str], list[str]] = {}
        for module in self.keys:
            blocks, index, name = module.split(".", 2)
            by_module.setdefault((blocks, name), []).append(index)
        groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for (blocks, name), indices in by_module.items():
            groups.setdefault((blocks, tuple(sorted(indices, key=int))), []).append(re.escape(name))
        return "|".join(rf"{blocks}\.(?:{'|'.join(i)})\.(?:{'|'.join(sorted(n))})"
                        for (blocks, i), n in sorted(groups.items()))


def read_header(path: Path, shapes: dict[str, tuple[int, ...]]) -> ForeignLora:
    """The layout of a LoRA file without loraedit metadata, from its key names and shapes.

    Wan's layouts (module doc), or HunyuanVideo's original names read as diffusers' converter reads them
    (`backends.hunyuan_lora.foreign_modules`). One-line InputError naming the file for a key no layout
    explains (with the first keys and the prefixes seen), a module with only one of its two matrices, or
    modules of different ranks.
    """
    hunyuan = foreign_modules(shapes) if any("double_blocks" in k or "single_blocks" in k for k in shapes) else None
    if hunyuan is not None:
        modules, unknown = hunyuan
        layout = "HunyuanVideo ComfyUI / diffusion-pipe"
    else:
        modules, unknown, layout = _wan_modules(path, shapes)
    if unknown or not modules:
        raise InputError(_unknown_layout(path, shapes, unknown))
    out, ranks = {}, set()
    for module, (a_key, b_key, _, rows) in sorted(modules.items()):
        a, b = shapes[a_key], shapes[b_key]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise InputError(f"LoRA file {path}: {module} has lora_A {tuple(a)} and lora_B {tuple(b)}, which are not "
                             "the two matrices of one LoRA; export it again")
        ranks.add(a[0])
        out[f"{module}.lora_A.weight"] = tuple(a)
        out[f"{module}.lora_B.weight"] = (rows.stop - rows.start, b[1]) if rows is not None else tuple(b)
    if len(ranks) > 1:
        raise InputError(f"LoRA file {path} mixes ranks {sorted(ranks)} across its modules: loraedit attaches one "
                         "rank per LoRA; export it with a single rank")
    return ForeignLora(layout, ranks.pop(), dict(sorted(modules.items())), out)


def _wan_modules(path: Path, shapes: dict[str, tuple[int, ...]]):
    """(peft module -> keys, keys no Wan layout explains, the layout's name) of a Wan LoRA file."""
    prefix = _prefix(shapes)
    unknown, parts = [], {}
    for key in shapes:
        parsed = _parse(key, prefix)
        if parsed is None:
            unknown.append(key)
        else:
            parts.setdefault(parsed[0], {})[parsed[1]] = key
    modules = {}
    for module, found in parts.items() if not unknown else ():  # keys of no layout: said first
        if "lora_A" not in found or "lora_B" not in found:
            have = ", ".join(sorted(found))
            raise InputError(f"LoRA file {path} has only {have} of {module} (a LoRA module needs lora_A and lora_B): "
                             "the file is incomplete; export it again")
        modules[module] = (found["lora_A"], found["lora_B"], found.get("alpha"), None)
    return modules, unknown, MUSUBI if prefix == "lora_unet_" else PREFIXES[prefix]


def to_peft(lora: ForeignLora, tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors -> peft-named float32 weights with each module's alpha / rank folded into lora_B,
    so that they apply at peft scale 1 (alpha = rank) exactly as the tool that wrote them meant."""
    state = {}
    for module, (a_key, b_key, alpha_key, rows) in lora.keys.items():
        a, b = tensors[a_key].float(), tensors[b_key].float()
        b = b[rows] if rows is not None else b
        scale = 1.0
        if alpha_key is not None:
            alpha = tensors[alpha_key]
            if alpha.numel() != 1:
                raise InputError(f"LoRA file {path}: {alpha_key} holds {alpha.numel()} numbers, not one alpha: "
                                 "export it again")
            scale = float(alpha) / a.shape[0]
        state[f"{module}.lora_A.weight"] = a.contiguous()
        state[f"{module}.lora_B.weight"] = (b * scale if scale != 1.0 else b).contiguous()
    return state


def _prefix(keys) -> str:
    """The prefix all keys share (musubi's `lora_unet_`, one of PREFIXES, or '' when they disagree)."""
    if keys and all(k.startswith("lora_unet_") for k in keys):
        return "lora_unet_"
    for prefix in PREFIXES:
        if prefix and keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def _parse(key: str, prefix: str) -> tuple[str, str] | None:
    """(peft module, "lora_A" / "lora_B" / "alpha") of one file key, or None if no layout explains it."""
    if prefix == "lora_unet_":
        m = _MUSUBI.match(key)
        if m is None:
            return None
        original = re.sub(r"^(self_attn|cross_attn|ffn)_", r"\1.", m.group(2))
        return f"blocks.{m.group(1)}.{WAN_TO_DIFFUSERS[original]}", _PART.get(m.group(3), "alpha")
    m = _DOTTED.match(key[len(prefix):])
    if m is None:
        return None
    module = WAN_TO_DIFFUSERS.get(m.group(2), m.group(2))
    return f"blocks.{m.group(1)}.{module}", _PART[m.group(3)] if m.group(3) else "alpha"


def _unknown_layout(path: Path, shapes: dict, unknown: list[str]) -> str:
    """One line: what was found (first keys, prefixes) and the layouts loraedit reads."""
    keys = sorted(unknown or shapes)
    prefixes = sorted({k.split(".", 1)[0] + ("." if "." in k else "") for k in shapes})
    what = "is empty" if not shapes else (f"has {len(unknown)} key(s) that are not Wan block LoRA weights (first: "
                                          f"{', '.join(keys[:3])}; prefixes seen: {', '.join(prefixes[:6])})")
    return (f"LoRA file {path} {what}: loraedit reads Wan LoRAs saved by loraedit, ComfyUI / diffusion-pipe "
            "(diffusion_model.blocks.N.self_attn.q.lora_A.weight), musubi-tuner (lora_unet_blocks_N_self_attn_q."
            "lora_down.weight), diffusers (transformer.blocks.N.attn1.to_q.lora_A.weight) or DiffSynth, and "
            "HunyuanVideo LoRAs with original names (diffusion_model.double_blocks.N.img_attn_qkv.lora_A.weight); "
            "weight diffs (.diff, .diff_b) and non-block modules are not read; convert or re-export it")
