"""Tiny random-weight HunyuanVideo-I2V components built from configs, saved as a local diffusers folder.

The real architecture and input layout at toy sizes: a Llava (Llama + CLIP vision) text encoder that reads
the first frame with the prompt, a CLIP text encoder for the pooled vector, a HunyuanVideo VAE (4x time,
8x space) with 4 latent channels, and a transformer with one dual- and one single-stream block. No hub:
the tokenizers are word-level vocabularies built here. The Llama tokenizer's vocabulary is chosen so the
stock prompt template tokenizes as the real Llama-3 tokenizer does where the pipeline relies on it:
`<image>` is token 5 and the template's prefix is 103 tokens (its `crop_start`), so the stock crops keep
exactly the prompt's tokens ("behaviors" splits into two WordPiece tokens, as a subword tokenizer may).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL = ["<pad>", "<|begin_of_text|>", "<unk>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>"]
WORDS = ["\n", "\n\n", "system", "user", "assistant", "behavior", "##s", "p3rs0n", ",", ".", ":", "a", "an", "the",
         "red", "green", "blue", "yellow", "square", "circle", "moving", "moves", "right", "left", "video", "image",
         "deformation", "poor", "composition", "and", "deformed", "bad", "teeth", "eyes", "limbs"]
LATENT_CHANNELS = 4


def _llama_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),  # "\n\n" is one token, as in Llama-3
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<|begin_of_text|>",
                                   unk_token="<unk>", model_max_length=4096)


def _clip_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<unk>", model_max_length=77)


def build_components(condition_type: str = "latent_concat", guidance_embeds: bool = False, seed: int = 0) -> dict:
    """Random-weight tiny components of `HunyuanVideoImageToVideoPipeline` (seeded)."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, LlamaConfig,
                              LlavaConfig, LlavaForConditionalGeneration)

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = _llama_tokenizer(), _clip_tokenizer()
    llama = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=4, max_position_embeddings=2048,
                        pad_token_id=0)
    # 48 px / 2 px patches = 576 image tokens: the stock template's image_emb_len.
    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                              image_size=48, patch_size=2)
    c = LATENT_CHANNELS
    return {
        "text_encoder": LlavaForConditionalGeneration(LlavaConfig(
            vision_config=vision, text_config=llama, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="default", vision_feature_layer=-2, pad_token_id=0)).eval(),
        "tokenizer": tokenizer,
        "text_encoder_2": CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer_2), hidden_size=8, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=8, pad_token_id=0, bos_token_id=1,
            eos_token_id=2)).eval(),
        "tokenizer_2": tokenizer_2,
        "image_processor": CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}),
        "vae": AutoencoderKLHunyuanVideo(
            in_channels=3, out_channels=3, latent_channels=c, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
            temporal_compression_ratio=4, mid_block_add_attention=True),
        "transformer": HunyuanVideoTransformer3DModel(
            in_channels=2 * c + 1 if condition_type == "latent_concat" else c, out_channels=c, num_attention_heads=2,
            attention_head_dim=8, num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0,
            patch_size=2, patch_size_t=1, guidance_embeds=guidance_embeds, text_embed_dim=16,
            pooled_projection_dim=8, rope_axes_dim=(2, 2, 4), image_condition_type=condition_type),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
    }


def write_hunyuan_folder(path: Path, condition_type: str = "latent_concat", guidance_embeds: bool = False,
                         info: dict | None = None) -> Path:
    """Save the tiny model as the stock pipeline would (a real download's layout) plus `loraedit_model.json`."""
    from diffusers import HunyuanVideoImageToVideoPipeline

    pipe = HunyuanVideoImageToVideoPipeline(**build_components(condition_type, guidance_embeds))
    pipe.save_pretrained(path, safe_serialization=True)
    (Path(path) / "loraedit_model.json").write_text(json.dumps(info or {"working_size": [64, 64], "frames": 9}))
    return Path(path)


def transformer_inputs(g: torch.Generator) -> dict:
    """Seeded random inputs of one forward of the tiny transformer (latent_concat: noisy + image latents + mask)."""
    c = LATENT_CHANNELS
    return dict(hidden_states=torch.randn(1, 2 * c + 1, 2, 4, 4, generator=g), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 6, 16, generator=g), encoder_attention_mask=torch.ones(1, 6),
                pooled_projections=torch.randn(1, 8, generator=g), return_dict=False)
