"""A HunyuanVideo-I2V model folder read without loading any weights: what it is, what fits it.

Like `wan_folder`, everything comes from the folder's JSON configs and file listing (the transformer is
only built on the meta device, for LoRA shapes), and only safetensors weights are accepted. What is
particular to HunyuanVideo-I2V:

- Only the latent_concat variant can run the method. Its transformer reads a mask channel beside the
  condition latents (`hunyuan_layout`); the token_replace variant (the updated 16-channel
  HunyuanVideo-I2V) swaps the first frame's tokens in and has no channel for a spatial mask, so it is
  refused here, before anything loads.
- Frames 4k+1 and sizes a multiple of 16 (VAE 4x in time, 8x in space; 2x2 patches).
- The working size is the paper's (Sec. 4.4): 624x368, both multiples of 16 (39 x 23 patches of 16 px).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .base import model_fingerprint
from .folder_checks import (check_info, component_problems, components, linear_lora_shapes, read_info_json, read_json,
                            window_frames)
from .hunyuan_lora import incomplete_fused_layers

REQUIRED_FILES = ("model_index.json", "transformer/config.json", "vae/config.json", "text_encoder/config.json",
                  "text_encoder_2/config.json", "scheduler/scheduler_config.json")
PIPELINE_CLASSES = ("HunyuanVideoImageToVideoPipeline", "MaskAwareHunyuanVideoImageToVideoPipeline")
KIND = "hunyuan-video-i2v"
KINDS = (KIND,)
WEIGHT_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")
DEFAULT_WORKING_SIZE = (624, 368)  # (width, height): the paper's HunyuanVideo-I2V results (Sec. 4.4)
DEFAULT_FRAMES = 49  # the paper's clip length, as for Wan
WINDOW_FRAMES = 129  # HunyuanVideo-I2V's native clip length: one sampling window
#: The variant that works, named in the refusal of the other one.
LATENT_CONCAT_RELEASE = "hunyuanvideo-community/HunyuanVideo-I2V-33ch"
#: Every Linear of every dual- and single-stream block, as diffusion-pipe (the authors' framework) adapts
#: HunyuanVideo: attention q/k/v/out of the video and text streams, both streams' MLPs, the single
#: blocks' fused input (q, k, v, MLP) and output layers, and each block's modulation. Nothing outside the
#: blocks (embedders, token refiner, final layer). A peft regex over full module names.
DEFAULT_LORA_TARGETS = (
    r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|norm1\.linear|norm1_context\.linear)"
    r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp|proj_out|norm\.linear)"
)


@dataclass(frozen=True)
class HunyuanFolder:
    """The facts about a HunyuanVideo-I2V folder that validation and the backend need, read from its configs."""

    path: Path
    kind: str
    experts: tuple[str, ...]
    working_size: tuple[int, int]  # (width, height) from loraedit_model.json, else the paper's 624x368
    default_frames: int
    window_frames: int  # frames sampled at once; a longer clip is edited window by window (long_video)
    spatial_factor: int
    temporal_factor: int
    patch_size: int  # spatial patch over latents
    latent_channels: int
    fingerprint: str
    transformer_config: dict = field(repr=False, compare=False)
    negative_prompt: str | None = None  # loraedit_model.json's, else HunyuanVideo-I2V's own (backend)
    guidance: float | None = None  # loraedit_model.json's, else 1 (the official sampler's default)

    default_lora_targets: str = DEFAULT_LORA_TARGETS

    @property
    def text_dim(self) -> int:
        """Width of the Llava text encoder's hidden states (Llava-Llama-3-8B: 4096)."""
        return int(self.transformer_config.get("text_embed_dim", 4096))

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: the VAE factor times the transformer's patch."""
        return self.spatial_factor * self.patch_size

    def lora_shapes(self, expert: str, rank: int, targets: str) -> dict[str, tuple[int, int]]:
        """peft-named LoRA weights -> shapes for these targets; InputError if they split a fused layer."""
        import torch
        from diffusers import HunyuanVideoTransformer3DModel

        with torch.device("meta"):
            model = HunyuanVideoTransformer3DModel.from_config(self.transformer_config)
        shapes = linear_lora_shapes(model, rank, targets)
        incomplete = incomplete_fused_layers(shapes)
        if incomplete:
            raise InputError(incomplete[0])
        return shapes


def read_hunyuan_folder(model_dir: Path) -> HunyuanFolder:
    """Check a diffusers HunyuanVideo-I2V folder and describe it; one InputError lists every problem found."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"model folder {model_dir} does not exist: give a local diffusers-format HunyuanVideo-I2V "
                         f"folder (e.g. {LATENT_CONCAT_RELEASE})")
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise InputError(f"model folder {model_dir} lacks {', '.join(missing)}: give a complete diffusers-format "
                         f"HunyuanVideo-I2V folder (e.g. {LATENT_CONCAT_RELEASE})")
    problems: list[str] = []
    index = read_json(model_dir / "model_index.json", problems)
    transformer = read_json(model_dir / "transformer/config.json", problems)
    vae = read_json(model_dir / "vae/config.json", problems)
    info = read_info_json(model_dir, problems)
    if problems:
        raise InputError(*problems)

    cls = index.get("_class_name", "")
    if cls not in PIPELINE_CLASSES:
        problems.append(f"model folder {model_dir} holds a {cls or 'unknown'} pipeline, not HunyuanVideo "
                        f"image-to-video: give a HunyuanVideo-I2V folder (e.g. {LATENT_CONCAT_RELEASE})")
    problems.extend(_condition_problems(model_dir, transformer, int(vae.get("latent_channels", 16))))
    problems.extend(component_problems(model_dir, components(index), WEIGHT_COMPONENTS))
    declared = check_info(info, model_dir / "loraedit_model.json", DEFAULT_WORKING_SIZE, DEFAULT_FRAMES, problems)
    if problems:
        raise InputError(*problems)

    return HunyuanFolder(
        path=model_dir, kind=KIND, experts=("transformer",), working_size=declared.working_size,
        default_frames=declared.frames, window_frames=window_frames(declared, WINDOW_FRAMES),
        spatial_factor=int(vae.get("spatial_compression_ratio", 8)),
        temporal_factor=int(vae.get("temporal_compression_ratio", 4)),
        patch_size=int(transformer.get("patch_size", 2)), latent_channels=int(vae.get("latent_channels", 16)),
        fingerprint=model_fingerprint(model_dir), transformer_config=transformer,
        negative_prompt=declared.negative_prompt, guidance=declared.guidance)


def _condition_problems(model_dir: Path, transformer: dict, latent_channels: int) -> list[str]:
    """The transformer must take the first frame by latent concatenation, with a mask channel."""
    kind = transformer.get("image_condition_type")
    channels = transformer.get("in_channels")
    if kind == "token_replace":
        return [f"model folder {model_dir}: its transformer takes the first frame by token_replace ({channels} input "
                "channels, no channel for a spatial mask), so it cannot run mask-aware editing: use the "
                f"latent_concat HunyuanVideo-I2V ({LATENT_CONCAT_RELEASE}, {2 * latent_channels + 1} channels)"]
    if kind != "latent_concat":
        return [f"model folder {model_dir}: its transformer has image_condition_type {kind!r}, not an image-to-video "
                f"model: use the latent_concat HunyuanVideo-I2V ({LATENT_CONCAT_RELEASE})"]
    if channels != 2 * latent_channels + 1:
        return [f"model folder {model_dir}: transformer has {channels} input channels, the latent_concat I2V model "
                f"has {2 * latent_channels + 1} ({latent_channels} noisy + {latent_channels} condition + 1 mask): "
                "restore transformer/config.json from the download"]
    return []
