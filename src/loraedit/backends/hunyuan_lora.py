"""HunyuanVideo's LoRA file layout: peft names on diffusers' modules <-> the original (ComfyUI) names.

diffusers splits layers the original HunyuanVideo keeps fused: a dual-stream block's `img_attn_qkv` is
diffusers' `attn.to_q/to_k/to_v`, its `txt_attn_qkv` is `attn.add_q/k/v_proj`, and a single-stream
block's `linear1` is `attn.to_q/to_k/to_v` and `proj_mlp` stacked. A rank-r LoRA on each of m split layers
is exactly a rank m*r LoRA on the fused one: A stacked, B block-diagonal (`to_file`). That is the layout
ComfyUI reads (`diffusion_model.double_blocks.N.img_attn_qkv.lora_A.weight`, the diffusion-pipe
convention) and diffusers' own HunyuanVideo loader converts back (it copies A to every member and splits
B's rows, which picks out each member's block); `from_file` inverts it exactly.

No `.alpha` keys: diffusers' HunyuanVideo loader refuses any key without "lora" in it. The scale
alpha / rank is folded into lora_B instead, so every reader (ComfyUI: scale 1 without alpha; diffusers:
alpha = rank per module) applies the trained LoRA as is. At the default alpha = rank the fold is x1 and
the round trip is bit-exact; otherwise it is exact to float rounding of one multiply.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import InputError, setting

#: diffusers module inside a block -> (original module, position in the fused layer). Order within a
#: fused layer is the original's row order: q, k, v (then the MLP input for `linear1`).
DOUBLE = {
    "attn.to_q": ("img_attn_qkv", 0), "attn.to_k": ("img_attn_qkv", 1), "attn.to_v": ("img_attn_qkv", 2),
    "attn.add_q_proj": ("txt_attn_qkv", 0), "attn.add_k_proj": ("txt_attn_qkv", 1),
    "attn.add_v_proj": ("txt_attn_qkv", 2),
    "attn.to_out.0": ("img_attn_proj", 0), "attn.to_add_out": ("txt_attn_proj", 0),
    "ff.net.0.proj": ("img_mlp.fc1", 0), "ff.net.2": ("img_mlp.fc2", 0),
    "ff_context.net.0.proj": ("txt_mlp.fc1", 0), "ff_context.net.2": ("txt_mlp.fc2", 0),
    "norm1.linear": ("img_mod.linear", 0), "norm1_context.linear": ("txt_mod.linear", 0),
}
SINGLE = {
    "attn.to_q": ("linear1", 0), "attn.to_k": ("linear1", 1), "attn.to_v": ("linear1", 2), "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", 0), "norm.linear": ("modulation.linear", 0),
}
#: diffusers block list -> (original block list, its module table)
BLOCKS = {"transformer_blocks": ("double_blocks", DOUBLE), "single_transformer_blocks": ("single_blocks", SINGLE)}
_ORIGINAL = {orig: (ours, table) for ours, (orig, table) in BLOCKS.items()}


def _fused_members() -> dict[tuple[str, str], tuple[str, ...]]:
    members: dict[tuple[str, str], tuple[str, ...]] = {}
    for orig_blocks, table in BLOCKS.values():
        for module, (orig, _) in sorted(table.items(), key=lambda item: item[1][1]):
            members[orig_blocks, orig] = (*members.get((orig_blocks, orig), ()), module)
    return members


#: (original block list, original module) -> the diffusers modules it fuses, in row order
MEMBERS = _fused_members()
_PEFT_KEY = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.(lora_[AB])\.weight$")
_FILE_KEY = re.compile(r"^diffusion_model\.(double_blocks|single_blocks)\.(\d+)\.(.+)\.(lora_[AB])\.weight$")


def incomplete_fused_layers(peft_names) -> list[str]:
    """One line per fused layer the names adapt only in part (e.g. to_q without to_k and to_v).

    Such a LoRA has no exact fused form (the missing members' rows have no size to pad to), so a
    `targets` regex must take all of a fused layer's members or none.
    """
    seen: dict[tuple[str, str, str], set[str]] = {}
    for name in peft_names:
        m = re.match(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+?)(\.lora_[AB]\.weight)?$", name)
        if m is None or m.group(3) not in BLOCKS[m.group(1)][1]:
            continue
        orig_blocks, table = BLOCKS[m.group(1)]
        seen.setdefault((orig_blocks, m.group(2), table[m.group(3)][0]), set()).add(m.group(3))
    lines = []
    for (orig_blocks, index, orig), present in seen.items():
        absent = [d for d in MEMBERS[orig_blocks, orig] if d not in present]
        if absent:
            ours = _ORIGINAL[orig_blocks][0]
            lines.append(f"{setting('targets')} adapts {', '.join(sorted(present))} of {ours}.{index} without "
                         f"{', '.join(absent)}: HunyuanVideo's LoRA files hold them as one fused layer ({orig}); "
                         "adapt all of them or none")
    return lines


class HunyuanLoraKeyMap:
    """`backends.base.LoraKeyMap` for HunyuanVideo-I2V (module doc)."""

    family = "HunyuanVideo"

    def to_file(self, state: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
        """peft names -> fused original names: A stacked, B block-diagonal and scaled by alpha / rank."""
        grouped: dict[tuple[str, str, str], dict[int, dict[str, torch.Tensor]]] = {}
        for key, value in state.items():
            m = _PEFT_KEY.match(key)
            if m is None or m.group(3) not in BLOCKS[m.group(1)][1]:
                raise ValueError(f"cannot name LoRA weight {key!r} in the HunyuanVideo layout")
            orig_blocks, table = BLOCKS[m.group(1)]
            orig, position = table[m.group(3)]
            grouped.setdefault((orig_blocks, m.group(2), orig), {}).setdefault(position, {})[m.group(4)] = value
        incomplete = incomplete_fused_layers(state)
        if incomplete:
            raise ValueError(incomplete[0])
        scale = alpha / rank
        out: dict[str, torch.Tensor] = {}
        for (orig_blocks, index, orig), parts in grouped.items():
            members = [parts[i] for i in range(len(parts))]
            prefix = f"diffusion_model.{orig_blocks}.{index}.{orig}"
            out[f"{prefix}.lora_A.weight"] = torch.cat([p["lora_A"] for p in members], dim=0)  # [m r, in]
            out[f"{prefix}.lora_B.weight"] = torch.block_diag(*[p["lora_B"] for p in members]) * scale  # [out, m r]
        return out

    def from_file(self, tensors: dict[str, torch.Tensor], path: Path, rank: int,
                  alpha: float) -> dict[str, torch.Tensor]:
        """Fused original names -> peft names: each member's rows of A, its diagonal block of B, unscaled."""
        scale = alpha / rank
        state: dict[str, torch.Tensor] = {}
        for (ours, index, member, position, count), (a, b) in self._layers(tensors, path).items():
            r = a.shape[0] // count
            rows = _member_rows(ours, member, position, a.shape[1], b.shape[0])
            cols = slice(position * r, (position + 1) * r)
            outside = torch.cat([b[rows, : cols.start], b[rows, cols.stop:]], dim=1)
            if outside.numel() and bool(outside.ne(0).any()):
                raise InputError(f"LoRA file {path}: the fused layer holding {ours}.{index}.{member} is not "
                                 "block-diagonal, so it was not saved by loraedit: train it again with loraedit")
            state[f"{ours}.{index}.{member}.lora_A.weight"] = a[cols].contiguous()
            state[f"{ours}.{index}.{member}.lora_B.weight"] = (b[rows, cols] / scale).contiguous()
        return state

    def peft_shapes(self, shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, tuple[int, ...]]:
        """Each fused layer's header shapes split into its members' peft shapes (no tensor is read)."""
        out: dict[str, tuple[int, ...]] = {}
        for (ours, index, member, position, count), (a, b) in self._layers(shapes, path).items():
            r = a[0] // count
            rows = _member_rows(ours, member, position, a[1], b[0])
            out[f"{ours}.{index}.{member}.lora_A.weight"] = (r, a[1])
            out[f"{ours}.{index}.{member}.lora_B.weight"] = (rows.stop - rows.start, r)
        return out

    @staticmethod
    def _layers(items: dict, path: Path) -> dict[tuple[str, str, str, int, int], tuple]:
        """(diffusers blocks, index, member, position, members) -> (A, B) of its fused layer (tensors or shapes)."""
        found: dict[tuple[str, str, str], dict[str, object]] = {}
        for key, value in items.items():
            m = _FILE_KEY.match(key)
            if m is None or (m.group(1), m.group(3)) not in MEMBERS:
                raise InputError(f"LoRA file {path} has a weight {key!r} that is not a HunyuanVideo block LoRA: "
                                 "give a LoRA saved by loraedit (or with ComfyUI HunyuanVideo keys)")
            found.setdefault((m.group(1), m.group(2), m.group(3)), {})[m.group(4)] = value
        layers = {}
        for (orig_blocks, index, orig), pair in found.items():
            if set(pair) != {"lora_A", "lora_B"}:
                raise InputError(f"LoRA file {path} has only {next(iter(pair))} of {orig_blocks}.{index}.{orig}: "
                                 "the file was altered; re-export it or train again")
            members = MEMBERS[orig_blocks, orig]
            for position, member in enumerate(members):
                key = (_ORIGINAL[orig_blocks][0], index, member, position, len(members))
                layers[key] = (pair["lora_A"], pair["lora_B"])
        return layers


def _member_rows(ours: str, member: str, position: int, in_features: int, out_rows: int) -> slice:
    """The rows of a fused layer's B that are this member's outputs.

    A single-stream block's q, k and v are each as wide as the block (its `linear1` input) and its MLP input
    takes the rest; a dual-stream qkv splits evenly in three; an unfused layer owns every row.
    """
    members = len(MEMBERS[BLOCKS[ours][0], BLOCKS[ours][1][member][0]])
    if members == 1:
        return slice(0, out_rows)
    if ours == "single_transformer_blocks":
        return slice(position * in_features, (position + 1) * in_features if position < 3 else out_rows)
    third = out_rows // 3
    return slice(position * third, (position + 1) * third)


LORA_KEY_MAP = HunyuanLoraKeyMap()


_FOREIGN_KEY = re.compile(r"^(?:diffusion_model\.|transformer\.)?(double_blocks|single_blocks)\.(\d+)\.(.+?)\."
                          r"(?:(lora_A|lora_B|lora_down|lora_up)\.weight|(alpha))$")


def foreign_modules(shapes: dict[str, tuple[int, ...]]) -> tuple[dict, list[str]] | None:
    """Another tool's HunyuanVideo LoRA (original names, e.g. diffusion-pipe's), read the way diffusers' own
    converter (`_convert_hunyuan_video_lora_to_diffusers`) reads it: a fused layer's lora_A goes whole to each
    member, its lora_B is cut into the members' rows, so each member is a LoRA of the fused rank.

    Returns (peft module -> (lora_A key, lora_B key, alpha key or None, rows of lora_B), keys no layer
    explains), or None when the file names no HunyuanVideo block at all (not this family's file).
    """
    found: dict[tuple[str, str, str], dict[str, str]] = {}
    unknown = []
    for key in shapes:
        m = _FOREIGN_KEY.match(key)
        if m is None or (m.group(1), m.group(3)) not in MEMBERS:
            unknown.append(key)
            continue
        part = {"lora_down": "lora_A", "lora_up": "lora_B"}.get(m.group(4), m.group(4)) or "alpha"
        found.setdefault((m.group(1), m.group(2), m.group(3)), {})[part] = key
    if not found:
        return None
    modules = {}
    for (orig_blocks, index, orig), keys in found.items():
        if "lora_A" not in keys or "lora_B" not in keys:
            unknown.extend(keys.values())  # reported as not explained: half a layer
            continue
        a, b = shapes[keys["lora_A"]], shapes[keys["lora_B"]]
        ours = _ORIGINAL[orig_blocks][0]
        for position, member in enumerate(MEMBERS[orig_blocks, orig]):
            rows = _member_rows(ours, member, position, a[1], b[0]) if len(a) == 2 and len(b) == 2 else None
            modules[f"{ours}.{index}.{member}"] = (keys["lora_A"], keys["lora_B"], keys.get("alpha"), rows)
    return modules, unknown
