"""A Wan I2V model folder read without loading any weights: what it is, what it accepts, what fits it.

Up-front validation (`loraedit.validate`) needs the model's constraints (frames 4k+1, size a multiple of
16), its working size and frame count, its kind and experts, its fingerprint and the exact shapes a LoRA
for it must have, all before the minutes-long load of 14B weights. Everything here comes from the
folder's JSON configs and its file listing; the transformer is only ever built on the meta device
(shapes without memory or weights). Only safetensors weights are accepted: a folder whose weights are
pickle files (.bin/.pt/.ckpt, which can run code when opened) is refused, never opened.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .base import model_fingerprint
from .folder_checks import (check_info, component_problems, components, linear_lora_shapes, read_info_json, read_json,
                            window_frames)

REQUIRED_FILES = ("model_index.json", "transformer/config.json", "vae/config.json", "text_encoder/config.json",
                  "scheduler/scheduler_config.json")
PIPELINE_CLASSES = ("WanImageToVideoPipeline", "MaskAwareWanImageToVideoPipeline")
KINDS = ("wan2.1-i2v", "wan2.2-i2v")
#: Pipelines a user may well point --model at, and why loraedit cannot edit with them (one line, not two).
#: (HunyuanVideo-I2V folders never reach this reader: the registry sends them to their own family.)
OTHER_PIPELINES = {
    "WanPipeline": "a text-to-video model, not a Wan image-to-video model",
    "WanVACEPipeline": "Wan VACE, not a Wan image-to-video model",
    "WanVideoToVideoPipeline": "a text-to-video model's video-to-video pipeline, not a Wan image-to-video model",
    "HunyuanVideoPipeline": "HunyuanVideo text-to-video, not an image-to-video model",
}
TRANSFORMER_CLASS = "WanTransformer3DModel"  # the class LoRA shapes and the backend assume
WEIGHT_COMPONENTS = ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder")
DEFAULT_WORKING_SIZE = (832, 480)  # (width, height) of Wan 480P
#: Wan's published resolutions, recognised in a folder's name (the official repositories name theirs).
NAMED_SIZES = {"480p": (832, 480), "720p": (1280, 720)}
DEFAULT_FRAMES = 49
WINDOW_FRAMES = 81  # Wan2.1/2.2 I2V's native clip length: one sampling window
I2V_IN_CHANNELS = 36  # 16 noisy latents + 4 mask channels + 16 condition latents
#: LoRA targets of the authors: every Linear of every block (self- and cross-attention q/k/v/o, both FFN
#: layers) except the CLIP image key/value projections (add_k_proj / add_v_proj). A peft regex, matched
#: against the full module name, so nothing outside `blocks.N` is touched.
DEFAULT_LORA_TARGETS = r"blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0)|ffn\.net\.0\.proj|ffn\.net\.2)"


@dataclass(frozen=True)
class WanFolder:
    """The facts about a model folder that validation and the backend need, read from its configs."""

    path: Path
    kind: str  # "wan2.1-i2v" or "wan2.2-i2v"
    experts: tuple[str, ...]  # pipeline attributes holding a transformer with its own LoRA
    working_size: tuple[int, int]  # (width, height) from loraedit_model.json, else Wan 480P's
    default_frames: int
    window_frames: int  # frames sampled at once; a longer clip is edited window by window (long_video)
    spatial_factor: int  # VAE pixels per latent cell
    temporal_factor: int  # VAE frames per latent frame (after frame 0)
    patch_size: tuple[int, int, int]  # transformer patch (t, h, w) over latents
    latent_channels: int
    fingerprint: str
    transformer_configs: dict[str, dict] = field(repr=False, compare=False)
    #: The negative prompt the model was trained to read as "unconditional" (loraedit_model.json), or None
    #: for Wan's standard one. The toy world learnt the empty caption; Wan's Chinese list means nothing to it.
    negative_prompt: str | None = None
    #: The CFG scale the model samples best at (loraedit_model.json), or None for the authors' 5. The toy
    #: world's frozen random text encoder carries little, and CFG 5 amplifies noise (docs/RESULTS.md).
    guidance: float | None = None
    #: Where working_size came from, for notes and `loraedit plan`.
    working_size_source: str = "default (Wan 480P)"
    #: CLIP image tokens each cross-attention sees (image_encoder/config.json), 0 without an image encoder.
    image_tokens: int = 0
    default_lora_targets: str = DEFAULT_LORA_TARGETS

    @property
    def text_dim(self) -> int:
        """Width of the text encoder's embeddings (UMT5-XXL: 4096)."""
        return int(self.transformer_configs["transformer"].get("text_dim", 4096))

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: the VAE factor times the transformer's patch."""
        return self.spatial_factor * max(self.patch_size[1], self.patch_size[2])

    def lora_shapes(self, expert: str, rank: int, targets: str) -> dict[str, tuple[int, int]]:
        return lora_shapes(self, expert, rank, targets)


def read_wan_folder(model_dir: Path) -> WanFolder:
    """Check a diffusers Wan I2V folder and describe it; one InputError lists every problem found."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"model folder {model_dir} does not exist: give a local diffusers-format Wan I2V folder "
                         "(e.g. Wan2.1-I2V-14B-480P-Diffusers) or 'toy'")
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise InputError(_layout_hint(model_dir) or f"model folder {model_dir} lacks {', '.join(missing)}: give a "
                         "complete diffusers-format Wan I2V folder (e.g. Wan2.1-I2V-14B-480P-Diffusers)")
    problems: list[str] = []
    index = read_json(model_dir / "model_index.json", problems)
    transformer = read_json(model_dir / "transformer/config.json", problems)
    vae = read_json(model_dir / "vae/config.json", problems)
    info_path = model_dir / "loraedit_model.json"
    info = read_info_json(model_dir, problems)
    if problems:
        raise InputError(*problems)

    cls = index.get("_class_name", "")
    if cls not in PIPELINE_CLASSES:  # one line: the channel count of another model says nothing more
        what = OTHER_PIPELINES.get(cls, f"a {cls or 'unknown'} pipeline, not a Wan image-to-video model")
        raise InputError(f"model folder {model_dir} holds {what} ({cls or 'no _class_name'} in model_index.json): "
                         "give a Wan2.1-I2V, Wan2.2-I2V or HunyuanVideo-I2V diffusers folder, e.g. "
                         "Wan2.1-I2V-14B-480P-Diffusers")
    listed = [(name, index[name][1]) for name in ("transformer", "transformer_2")
              if isinstance(index.get(name), list) and len(index[name]) == 2 and index[name][0] is not None]
    for name, component_class in listed:
        if component_class != TRANSFORMER_CLASS:
            problems.append(f"model folder {model_dir}: model_index.json lists {name} as {component_class}, not "
                            f"{TRANSFORMER_CLASS}: loraedit edits with plain Wan I2V transformers; give an official "
                            "Wan2.1-I2V or Wan2.2-I2V folder")
    if transformer.get("in_channels") != I2V_IN_CHANNELS:
        problems.append(f"model folder {model_dir}: transformer has {transformer.get('in_channels')} input channels, "
                        f"an I2V model has {I2V_IN_CHANNELS} (16 noisy + 4 mask + 16 condition): give an I2V model")
    parts = components(index)
    problems.extend(component_problems(model_dir, parts, WEIGHT_COMPONENTS))
    named = _size_from_name(model_dir)
    size_source = ("loraedit_model.json" if "working_size" in info else
                   f"the folder's name ({named[1]})" if named else "default (Wan 480P)")
    declared = check_info(info, info_path, named[0] if named else DEFAULT_WORKING_SIZE, DEFAULT_FRAMES, problems)
    configs = {"transformer": transformer}
    if "transformer_2" in parts and (model_dir / "transformer_2/config.json").is_file():
        configs["transformer_2"] = read_json(model_dir / "transformer_2/config.json", problems)
    if problems:
        raise InputError(*problems)

    two_experts = "transformer_2" in parts and index.get("boundary_ratio") is not None
    return WanFolder(
        path=model_dir, kind="wan2.2-i2v" if "transformer_2" in parts else "wan2.1-i2v",
        experts=("transformer", "transformer_2") if two_experts else ("transformer",),
        working_size=declared.working_size, default_frames=declared.frames,
        window_frames=window_frames(declared, WINDOW_FRAMES), spatial_factor=int(vae.get("scale_factor_spatial", 8)),
        temporal_factor=int(vae.get("scale_factor_temporal", 4)),
        patch_size=tuple(int(v) for v in transformer.get("patch_size", (1, 2, 2))),
        latent_channels=int(vae.get("z_dim", 16)), fingerprint=model_fingerprint(model_dir),
        transformer_configs=configs, negative_prompt=declared.negative_prompt, guidance=declared.guidance,
        working_size_source=size_source, image_tokens=_image_tokens(model_dir, parts, transformer))


def lora_shapes(folder: WanFolder, expert: str, rank: int, targets: str) -> dict[str, tuple[int, int]]:
    """The peft-named LoRA weights (`blocks.N.attn1.to_q.lora_A.weight` -> shape) a LoRA for `expert` has.

    The transformer is built from its config on the meta device, so the shapes are exactly the loaded
    model's (the same modules peft would adapt: Linear layers whose full name matches `targets`).
    """
    import torch
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(folder.transformer_configs[expert])
    return linear_lora_shapes(model, rank, targets)


def _size_from_name(model_dir: Path) -> tuple[tuple[int, int], str] | None:
    """Wan's resolution named in the folder's path (nearest first: an HF cache snapshot is a hash inside
    `models--Wan-AI--Wan2.1-I2V-14B-720P-Diffusers`), with the part that named it; None if none does."""
    for part in reversed(model_dir.resolve().parts):
        for key, size in NAMED_SIZES.items():
            if re.search(rf"(?<![0-9a-z]){key}(?![0-9a-z])", part.lower()):
                return size, part
    return None


def _image_tokens(model_dir: Path, components: dict, transformer: dict) -> int:
    """CLIP tokens per image: a class token plus (image_size / patch_size)^2 patches (257 for ViT-H/14)."""
    config_path = model_dir / "image_encoder" / "config.json"
    if "image_encoder" not in components or transformer.get("image_dim") is None or not config_path.is_file():
        return 0
    try:
        config = json.loads(config_path.read_text())
        config = config.get("vision_config", config)  # a full CLIPModel config nests it
        return (int(config["image_size"]) // int(config["patch_size"])) ** 2 + 1
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # the load reports a broken encoder config; the token count only feeds cost estimates


def _layout_hint(model_dir: Path) -> str | None:
    """A one-line fix for the two folders people give instead of a diffusers Wan folder, or None."""
    snapshots = model_dir / "snapshots"
    if snapshots.is_dir() and not (model_dir / "model_index.json").exists():
        found = sorted(p for p in snapshots.iterdir() if (p / "model_index.json").is_file())
        example = found[-1] if found else snapshots / "<commit>"
        return (f"model folder {model_dir} is a Hugging Face cache entry, not the model: give its snapshot "
                f"folder, e.g. {example}")
    if any(model_dir.glob("*.pth")) and (model_dir / "config.json").is_file():
        return (f"model folder {model_dir} is an original Wan release (.pth weights, no model_index.json), which "
                "loraedit does not read: download the diffusers-format repository (its name ends in -Diffusers)")
    return None
