"""Tiny Wan I2V components, built from configs and written as a local diffusers folder.

They have the real architecture and input layout (36 input channels: 16 noisy, 4 mask, 16 condition;
a VAE with Wan's 4x temporal / 8x spatial compression; a UMT5 text encoder; a CLIP vision encoder), so
every code path that real weights take runs here offline, on CPU, in seconds. The weights are random
(seeded) until the toy world's pretrained weights land: outputs are noise, mechanics are real.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

#: Words the toy tokenizer knows; anything else maps to <unk>. Covers the captions the toy world writes
#: and Wan's standard negative prompt well enough for the mechanics.
TOY_VOCAB = (
    "<pad> </s> <unk> p3rs0n , . a an the of with and on in at is are video image shows frame "
    "red green blue yellow orange purple pink white black grey gray brown cyan magenta "
    "square circle triangle star card ball box object shape background moving moves left right up down "
    "striped checkered dotted solid gradient noise textured bright dark small large turning over back front "
    "blurry low quality worst static still overexposed subtitles style artwork painting picture "
    "deformed disfigured ugly extra fingers hands faces"
).split()

#: Working size and frame count the toy model is meant for (width, height, frames).
TOY_SIZE = (64, 64)
TOY_FRAMES = 9


def _tokenizer(words: list[str] | tuple[str, ...] = TOY_VOCAB):
    """A word-level tokenizer (pad 0, eos 1, unk 2): no hub, no sentencepiece model needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_components(variant: str = "wan2.1", seed: int = 0) -> dict:
    """Random-weight tiny components: "wan2.1" (with CLIP) or "wan2.2" (two experts, no CLIP)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    if variant not in ("wan2.1", "wan2.2"):
        raise ValueError(f"unknown toy variant {variant!r}: choose wan2.1 or wan2.2")
    torch.manual_seed(seed)
    with_clip = variant == "wan2.1"
    heads, head_dim = 2, 12

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=36,
            out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
            image_dim=4 if with_clip else None, added_kv_proj_dim=heads * head_dim if with_clip else None,
        )

    parts = {
        "transformer": transformer(),
        "vae": AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True]),
        "text_encoder": UMT5EncoderModel(UMT5Config(
            d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, relative_attention_num_buckets=8,
            vocab_size=len(TOY_VOCAB))),
        "tokenizer": _tokenizer(),
        "scheduler": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             flow_shift=5.0),
    }
    if with_clip:
        parts["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=8))
        parts["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    else:
        parts["transformer_2"] = transformer()
    return parts


def write_model_folder(path: Path, variant: str = "wan2.1", seed: int = 0) -> Path:
    """Write a tiny random-weight Wan I2V as a diffusers folder (atomically: temp folder, then rename)."""
    from ..backends.wan import MaskAwareWanImageToVideoPipeline

    path = Path(path)
    parts = build_components(variant, seed)
    boundary = 0.9 if variant == "wan2.2" else None
    pipe = MaskAwareWanImageToVideoPipeline(**parts, boundary_ratio=boundary)
    return _save_model_folder(path, pipe, {"working_size": list(TOY_SIZE), "frames": TOY_FRAMES, "window": TOY_FRAMES,
                                           "note": "random weights, mechanics only"})


def _save_model_folder(path: Path, pipe, info: dict, manifest: dict | None = None) -> Path:
    """Save a pipeline as a diffusers folder with its `loraedit_model.json` (and a manifest with sha256s),
    atomically: written into a temporary sibling folder, then renamed into place."""
    import hashlib

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "loraedit_model.json").write_text(json.dumps(info))
        if manifest is not None:
            files = {f.relative_to(tmp).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                     for f in sorted(tmp.rglob("*.safetensors"))}
            (tmp / "MANIFEST.json").write_text(json.dumps({**manifest, "sha256": files}, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def toy_model_folder(variant: str = "wan2.1") -> Path:
    """The embedded toy model's folder, written once into the user cache on first use."""
    root = Path(os.environ.get("LORAEDIT_CACHE", Path.home() / ".cache" / "loraedit"))
    path = root / "models" / f"toy-random-{variant}-v1"
    if not (path / "model_index.json").exists():
        write_model_folder(path, variant)
    return path


# ---- the toy world's pretrained model ----------------------------------------------------------------

#: The committed, pretrained toy-world model (a diffusers folder inside the package).
WORLD_WEIGHTS = Path(__file__).parent / "weights"
#: The difficulty level a world model is meant for when its folder does not say: the first world's.
FIRST_WORLD_LEVEL = 3
WORLD_SIZE = (96, 96)
WORLD_FRAMES = 17
#: The world model samples at CFG 1 (no guidance): its text encoder is frozen at a seeded random init, so
#: the caption carries little and CFG 5 mostly amplifies noise; measured on the base's own task (held-out
#: first frames, step 5,305): 16.09 dB at CFG 1 against 14.73 dB at CFG 5 (docs/RESULTS.md, section 2).
WORLD_GUIDANCE = 1.0


def world_vocab() -> list[str]:
    """Tokenizer vocabulary of the world model: special tokens, the toy words and every caption word."""
    from .scene_captions import CAPTION_WORDS

    words = list(TOY_VOCAB)
    words += [w for w in CAPTION_WORDS if w not in set(words)]
    return words


def build_world_components(seed: int = 0) -> dict:
    """The toy world's model at initialisation: the transformer to pretrain, frozen random text/CLIP encoders.

    The text and image encoders stay at their seeded random init (they are frozen feature extractors
    whose outputs still differ per caption and per image); only the transformer is trained.
    """
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vocab = world_vocab()
    heads, head_dim = 4, 32
    parts = {
        "transformer": WanTransformer3DModel(
            # 2x2 patches over the 4x codec: 8x8-px tokens of 64 latent values in a 128-wide stream. A 4x4
            # patch (256 values per token into 128 dims) was measured first: after 2,800 steps it still could
            # not pass frame 0 through from the condition (x0 error 0.56 on frame 0 at sigma 0.9).
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=36,
            out_channels=16, text_dim=32, freq_dim=64, ffn_dim=384, num_layers=6, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64, image_dim=32, added_kv_proj_dim=heads * head_dim),
        "text_encoder": UMT5EncoderModel(UMT5Config(
            d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, relative_attention_num_buckets=8,
            vocab_size=len(vocab))).eval(),
        "tokenizer": _tokenizer(vocab),
        "image_encoder": CLIPVisionModel(CLIPVisionConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, intermediate_size=64,
            patch_size=8)).eval(),
        "image_processor": CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
        "scheduler": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             flow_shift=5.0),
    }
    for name in ("text_encoder", "image_encoder"):
        parts[name].requires_grad_(False)
    return parts


def world_level(model_dir: str | os.PathLike) -> int:
    """The toy-world difficulty level a model folder was pretrained for (`loraedit_model.json`'s
    "toy_world_level"; the first world's for folders that do not say, real models included). The demo and
    `bench quality` draw their clips from it, so a base is judged on the world it was taught."""
    from ..errors import InputError
    from .scenes import LEVELS

    info = Path(model_dir) / "loraedit_model.json"
    level = json.loads(info.read_text()).get("toy_world_level", FIRST_WORLD_LEVEL) if info.is_file() else FIRST_WORLD_LEVEL
    if level not in LEVELS:
        raise InputError(f"{info} has toy_world_level {level!r}: give one of {', '.join(map(str, LEVELS))}")
    return level


def write_world_folder(path: Path, parts: dict, manifest: dict, level: int = FIRST_WORLD_LEVEL) -> Path:
    """Save the world model as a diffusers folder: fp16 transformer, fp32 codec, manifest with sha256s."""
    from ..backends.wan import MaskAwareWanImageToVideoPipeline

    parts = dict(parts)
    transformer = parts["transformer"]
    keep = tuple(transformer._keep_in_fp32_modules or ())  # norms, time embedder, rope: fp32 as diffusers wants
    for name, param in transformer.named_parameters():
        if not any(part in keep for part in name.split(".")):
            param.data = param.data.to(torch.float16)
    pipe = MaskAwareWanImageToVideoPipeline(**parts)
    return _save_model_folder(Path(path), pipe, {"working_size": list(WORLD_SIZE), "frames": WORLD_FRAMES,
                                                 "window": WORLD_FRAMES,  # 17 at once; longer clips chain
                                                 "negative_prompt": "",  # caption dropout's empty caption
                                                 "guidance": WORLD_GUIDANCE,
                                                 "toy_world_level": level,  # the clips it was taught on
                                                 "note": "toy world, pretrained"}, manifest)
