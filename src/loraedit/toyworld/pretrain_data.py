"""The pretraining data: toy-world scenes rendered once to a cache, then encoded once for training.

`render_dataset` turns a seed range into one uint8 tensor on disk (the scenes are drawn by
`scenes.generate` at the level `level_of` gives each seed, so a cached file is the same on every machine);
`Encoded` holds what every training step reads: target latents, standard-I2V conditions, text and CLIP.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import conditioning
from ..backends import wan_layout
from ..media import atomic_path
from .codec import PatchCodec
from .models import FIRST_WORLD_LEVEL, WORLD_FRAMES, WORLD_SIZE
from .scene_captions import mirror_caption
from .scenes import DIFFICULTY, LEVELS, generate

FRAMES, SIZE = WORLD_FRAMES, WORLD_SIZE
#: The first world's levels, for checkpoints written before levels existed.
FIRST_WORLD_LEVELS = (FIRST_WORLD_LEVEL,)


def level_of(seed: int, levels: tuple[int, ...]) -> int:
    """The difficulty level of scene ``seed`` in a mix that cycles through ``levels`` by seed
    (``(1, 1, 2)``: two scenes of level 1 for each of level 2), so every seed range holds the mix."""
    return levels[seed % len(levels)]


def parse_levels(text: str) -> tuple[int, ...]:
    """"1,1,2" -> (1, 1, 2); each must be one of the world's LEVELS."""
    try:
        levels = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--levels {text!r}: give comma-separated levels from {LEVELS}, e.g. 1,1,2") from None
    if not levels or any(lv not in LEVELS for lv in levels):
        raise SystemExit(f"--levels {text!r}: give comma-separated levels from {LEVELS}, e.g. 1,1,2")
    return levels


def render_dataset(seeds: range, cache: Path, levels: tuple[int, ...] = FIRST_WORLD_LEVELS) -> dict[str, torch.Tensor]:
    """Videos of the given seeds as one uint8 tensor [N, T, 3, H, W] plus captions (cached on disk)."""
    tag = "" if levels == FIRST_WORLD_LEVELS else "-levels" + "".join(map(str, levels))
    if any(DIFFICULTY[level].compass for level in levels):  # headings named in the captions (2026-12-04 on)
        tag += "-compass"
    if any(DIFFICULTY[level].lattice for level in levels):  # level 0 on the token lattice (2026-12-05 on)
        tag += "-lattice"
    path = cache / f"videos-{seeds.start}-{seeds.stop}{tag}.safetensors"
    if path.is_file():
        data = load_file(str(path))
        captions = json.loads(path.with_suffix(".json").read_text())
        return {"videos": data["videos"], "captions": captions}
    videos, captions = [], []
    for seed in tqdm(seeds, desc=f"rendering {len(seeds)} scenes", dynamic_ncols=True):
        s = generate(seed, FRAMES, SIZE, level=level_of(seed, levels))
        videos.append(((s.video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        captions.append(s.caption)
    data = torch.stack(videos)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"videos": data}, str(tmp))
    path.with_suffix(".json").write_text(json.dumps(captions))
    return {"videos": data, "captions": captions}


def to_unit(videos_uint8: torch.Tensor) -> torch.Tensor:
    return videos_uint8.float() / 127.5 - 1


class Encoded:
    """Everything training needs, encoded once: target latents, standard-I2V conditions, text, CLIP, and
    the text and CLIP of each clip mirrored left-right (training mirrors clips; "left" must become "right")."""

    def __init__(self, parts: dict, codec: PatchCodec, data: dict, batch: int = 64):
        self.latents, self.conditions, self.images, self.images_mirrored, self.moving = [], [], [], [], []
        mean = torch.tensor(codec.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(codec.config.latents_std).view(1, -1, 1, 1, 1)
        keep = conditioning.first_frame_keep_mask(FRAMES, SIZE[1], SIZE[0])
        mask = wan_layout.latent_keep_mask(keep, codec.config.scale_factor_spatial, 4)
        processor, clip = parts["image_processor"], parts["image_encoder"]
        with torch.no_grad():
            for i in tqdm(range(0, len(data["videos"]), batch), desc="encoding", dynamic_ncols=True):
                videos = to_unit(data["videos"][i:i + batch])  # [B, T, 3, H, W]
                x = videos.permute(0, 2, 1, 3, 4)
                self.latents.append((codec.encode(x).latent_dist.mode() - mean) / std)
                self.moving.append(moving_cells(x, codec.config.scale_factor_spatial))
                cond_video = torch.zeros_like(x)
                cond_video[:, :, 0] = x[:, :, 0]
                cond = (codec.encode(cond_video).latent_dist.mode() - mean) / std
                self.conditions.append(torch.cat([mask.expand(len(x), *mask.shape), cond], dim=1))
                for first, out in ((videos[:, 0], self.images), (videos[:, 0].flip(-1), self.images_mirrored)):
                    pixels = processor(images=((first + 1) / 2).clamp(0, 1), do_rescale=False,
                                       return_tensors="pt")["pixel_values"]
                    out.append(clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2])
        self.latents = torch.cat(self.latents)
        self.conditions = torch.cat(self.conditions)
        self.images = torch.cat(self.images)
        self.images_mirrored = torch.cat(self.images_mirrored)
        self.moving = torch.cat(self.moving)
        self.texts = encode_captions(parts, list(data["captions"]) + [""])  # last one: the empty caption
        self.texts_mirrored = encode_captions(parts, [mirror_caption(c) for c in data["captions"]] + [""])

    def __len__(self) -> int:
        return len(self.latents)

    def to(self, device: torch.device) -> Encoded:
        """Move every tensor to `device` (a GPU holds the whole encoded set: ~0.6 GB for 3,000 scenes)."""
        for name in ("latents", "conditions", "images", "images_mirrored", "texts", "texts_mirrored", "moving"):
            setattr(self, name, getattr(self, name).to(device))
        return self


#: A pixel differing from frame 0 by more than this (on [-1, 1]) counts as moving: well above the codec's
#: rounding, well below any object's contrast against its background.
MOVING_THRESHOLD = 0.1


def moving_cells(videos: torch.Tensor, spatial: int, temporal: int = 4) -> torch.Tensor:
    """Which latent cells of clips [B, 3, T, H, W] show something that moved since frame 0: [B, 1, T', H', W'] bool.

    A latent frame k >= 1 covers pixel frames 4k-3..4k (Wan's causal temporal packing); a cell counts as
    moving when any of its pixels in those frames differs from frame 0. Latent frame 0 never moves. The
    map is taken in pixels because frame 0's latents are normalised on their own (codec variant V1), so
    latents of frame 0 and of later frames cannot be compared directly.
    """
    change = (videos[:, :, 1:] - videos[:, :, :1]).abs().amax(1) > MOVING_THRESHOLD  # [B, T-1, H, W]
    b, t, h, w = change.shape
    per_frame = change.view(b, t // temporal, temporal, h, w).any(2)  # [B, T'-1, H, W]
    cells = torch.nn.functional.max_pool2d(per_frame.float(), spatial).bool()
    first = torch.zeros(b, 1, h // spatial, w // spatial, dtype=torch.bool)
    return torch.cat([first, cells], 1)[:, None]


def encode_captions(parts: dict, captions: list[str]) -> torch.Tensor:
    """Unique captions -> [N, 512, D] text embeddings, zero-padded after each caption's tokens."""
    tok, enc = parts["tokenizer"], parts["text_encoder"]
    out = []
    with torch.no_grad():
        for i in range(0, len(captions), 64):
            t = tok(captions[i:i + 64], padding="max_length", max_length=512, truncation=True, return_tensors="pt")
            hidden = enc(t.input_ids, t.attention_mask).last_hidden_state
            out.append(hidden * t.attention_mask[..., None])
    return torch.cat(out)
