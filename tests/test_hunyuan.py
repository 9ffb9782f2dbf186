"""HunyuanVideo-I2V, the second family: its folder checks, its layout against the stock pipeline, its LoRA files.

The golden tests check that our condition is *identical* to the one diffusers'
`HunyuanVideoImageToVideoPipeline` builds inline in `__call__` in the one case it covers (first frame
only), that the mask-aware pipeline injects a given condition and nothing else, that prompts are the
stock encoder's, and that our LoRA files load through diffusers' own HunyuanVideo loader.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hunyuan_parts import LATENT_CHANNELS as C
from hunyuan_parts import build_components, transformer_inputs

from loraedit import conditioning, lora_io
from loraedit.backends import hunyuan_layout as L
from loraedit.backends import read_model_folder
from loraedit.backends.hunyuan import HunyuanBackend, MaskAwareHunyuanVideoImageToVideoPipeline
from loraedit.backends.hunyuan_folder import DEFAULT_LORA_TARGETS, DEFAULT_WORKING_SIZE, read_hunyuan_folder
from loraedit.backends.hunyuan_lora import LORA_KEY_MAP
from loraedit.errors import InputError


@pytest.fixture(scope="module")
def hunyuan():
    pipe = MaskAwareHunyuanVideoImageToVideoPipeline(**build_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe, HunyuanBackend(pipe, Path("."), torch.device("cpu"), torch.float32, {})


def _image01(seed=123, size=32):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def _text(pipe, tokens=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return L.pack_text(torch.randn(tokens, 16, generator=g), torch.randn(8, generator=g))


# ------------------------------------------------------------------------------ the folder


def test_folder_facts_and_the_papers_working_size(hunyuan_dir, tmp_path):
    folder = read_model_folder(hunyuan_dir)  # the registry picks the family by the pipeline class
    assert folder.kind == "hunyuan-video-i2v" and folder.experts == ("transformer",)
    assert (folder.working_size, folder.default_frames) == ((64, 64), 9)  # its loraedit_model.json
    assert (folder.size_multiple, folder.temporal_factor, folder.latent_channels) == (16, 4, C)
    bare = tmp_path / "bare"
    shutil.copytree(hunyuan_dir, bare)
    (bare / "loraedit_model.json").unlink()
    assert read_hunyuan_folder(bare).working_size == DEFAULT_WORKING_SIZE == (624, 368)  # the paper's (Sec. 4.4)
    assert all(v % read_hunyuan_folder(bare).size_multiple == 0 for v in DEFAULT_WORKING_SIZE)  # 39 x 23 patches


def test_token_replace_is_refused_with_the_variant_that_works(hunyuan_dir, tmp_path):
    folder = tmp_path / "token_replace"
    shutil.copytree(hunyuan_dir, folder)
    config = json.loads((folder / "transformer/config.json").read_text())
    (folder / "transformer/config.json").write_text(
        json.dumps(config | {"image_condition_type": "token_replace", "in_channels": C}))
    with pytest.raises(InputError) as info:
        read_model_folder(folder)
    assert len(info.value.problems) == 1 and "\n" not in info.value.problems[0]
    assert "token_replace" in info.value.problems[0] and "latent_concat" in info.value.problems[0]
    assert "HunyuanVideo-I2V-33ch" in info.value.problems[0]


def test_a_missing_component_is_refused(hunyuan_dir, tmp_path):
    folder = tmp_path / "incomplete"
    shutil.copytree(hunyuan_dir, folder)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(InputError, match=r"lacks text_encoder_2/config.json: give a complete .*HunyuanVideo-I2V"):
        read_model_folder(folder)
    shutil.copytree(hunyuan_dir / "text_encoder_2", folder / "text_encoder_2")
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(InputError, match="lacks the tokenizer_2/ folder"):
        read_model_folder(folder)


# ------------------------------------------------------------------------------ the layout


def test_latent_mask_keeps_a_cell_only_if_every_frame_of_its_group_keeps_it():
    keep = torch.ones(9, 16, 16)
    keep[3, 0, 0] = 0  # one pixel of frame 3 (latent frame 1: frames 1-4)
    keep[8, 9, 9] = 0  # one pixel of frame 8 (latent frame 2: frames 5-8)
    mask = L.latent_keep_mask(keep, 8, 4)
    assert mask.shape == (1, 3, 2, 2)
    expected = torch.ones(1, 3, 2, 2)
    expected[0, 1, 0, 0] = expected[0, 2, 1, 1] = 0
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="4k\\+1"):
        L.latent_keep_mask(torch.ones(8, 16, 16))


def test_condition_is_zero_where_generated_and_text_round_trips():
    latents, mask = torch.randn(C, 3, 2, 2) + 5, torch.ones(1, 3, 2, 2)
    mask[0, 1:, 0, 0] = 0
    packed = L.pack_condition(latents, mask)
    assert torch.equal(packed[-1:], mask) and (packed[:C, 1:, 0, 0] == 0).all()
    assert torch.equal(packed[:C, 0], latents[:, 0])  # kept cells pass through unchanged
    tokens, pooled = torch.randn(5, 4), torch.randn(10)  # a pooled vector wider than the tokens: 3 rows
    text = L.pack_text(tokens, pooled)
    assert text.shape == (5 + 3, 4)
    got_tokens, got_mask, got_pooled = L.unpack_text(text[None], 10)
    assert torch.equal(got_tokens[0], tokens) and torch.equal(got_pooled[0], pooled) and got_mask.all()


# ------------------------------------------------------------------------------ golden: diffusers


def test_golden_first_frame_condition_matches_the_stock_pipeline(hunyuan):
    """Our first-frame condition equals what the stock `__call__` feeds its transformer, bit for bit."""
    pipe, backend = hunyuan
    image = _image01()
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hidden_states"].clone()), with_kwargs=True)
    tokens, mask, pooled = L.unpack_text(_text(pipe)[None], 8)
    try:
        pipe(image=image[None], prompt_embeds=tokens, prompt_attention_mask=mask, pooled_prompt_embeds=pooled,
             height=32, width=32, num_frames=9, num_inference_steps=1, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    stock = seen[0][0, C:]  # [C + 1, T', h, w]: the stock condition latents and mask
    assert stock.shape == (C + 1, 3, 4, 4)
    assert torch.equal(stock[C:, 0], torch.ones(1, 4, 4)) and torch.equal(stock[C:, 1:], torch.zeros(1, 2, 4, 4))

    frame = pipe.video_processor.preprocess(image[None], 32, 32)[0]  # the pixels the stock pipeline encodes
    ours = backend.condition_tensor(conditioning.first_frame_condition(frame, 9, ""))
    assert torch.equal(ours, stock)
    assert float(stock[:C, 0].abs().max()) > 0.01  # the comparison is not between zeros


def test_mask_aware_pipeline_injects_the_given_condition_and_nothing_else(hunyuan):
    pipe, _ = hunyuan
    cond = torch.randn(C + 1, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    tokens, mask, pooled = L.unpack_text(_text(pipe)[None], 8)
    runs = {}
    for name, given in (("stock", None), ("given", cond)):
        seen = []
        hook = pipe.transformer.register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw["hidden_states"].clone()), with_kwargs=True)
        try:
            pipe(image=_image01()[None], prompt_embeds=tokens, prompt_attention_mask=mask, pooled_prompt_embeds=pooled,
                 height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent", condition=given,
                 generator=torch.Generator().manual_seed(0))
        finally:
            hook.remove()
        runs[name] = seen[0]
    assert torch.equal(runs["given"][0, C:], cond)  # exactly the given condition
    assert torch.equal(runs["given"][:, :C], runs["stock"][:, :C])  # noise drawn (and blended) as the stock does
    assert not pipe.transformer._forward_pre_hooks  # the swap lives for one call
    with pytest.raises(ValueError, match="does not fit"):  # a wrong-sized condition is refused, hook still removed
        pipe(image=_image01()[None], prompt_embeds=tokens, prompt_attention_mask=mask, pooled_prompt_embeds=pooled,
             height=32, width=32, num_frames=9, num_inference_steps=1, output_type="latent", condition=cond)
    assert not pipe.transformer._forward_pre_hooks


def test_prompts_are_the_stock_encoders_and_keep_the_first_word(hunyuan):
    import PIL.Image

    from loraedit import media

    pipe, backend = hunyuan
    image = _image01(7) * 2 - 1
    ours = backend.encode_prompt("p3rs0n, a red square moving right", image)
    stock, pooled, mask = pipe.encode_prompt(image=PIL.Image.fromarray(media.to_uint8(image)),
                                             prompt="p3rs0n, a red square moving right")
    kept = int(mask.sum())
    assert kept == 288 + 8  # 576 image tokens interleaved by 2, then 7 prompt tokens and <|eot_id|>
    tokens, _, got_pooled = L.unpack_text(ours[None], 8)
    assert torch.equal(tokens[0], stock[0, :kept]) and torch.equal(got_pooled[0], pooled[0])
    # The template's crop keeps every prompt token, the concept token first: two fewer tokens, two fewer rows.
    assert backend.encode_prompt("a red square moving right", image).shape[0] == ours.shape[0] - 2
    # The unconditional prompt reads a black frame, as the stock pipeline encodes its negative prompt.
    black = pipe.encode_prompt(image=PIL.Image.new("RGB", (32, 32), 0), prompt="")[0]
    assert torch.equal(backend.encode_prompt("")[:-1], black[0, : backend.encode_prompt("").shape[0] - 1])


# ------------------------------------------------------------------------------ LoRA files


def _random_lora(transformer, rank=2, alpha=2.0, targets=DEFAULT_LORA_TARGETS, seed=1):
    settings = lora_io.LoraSettings(rank, alpha, targets, "fp", "hunyuan-video-i2v")
    lora_io.add_lora(transformer, settings)
    g = torch.Generator().manual_seed(seed)
    lora_io.load_lora_state(transformer, {k: torch.randn(v.shape, generator=g) * 0.3
                                          for k, v in lora_io.lora_state(transformer).items()})
    return settings


@pytest.mark.parametrize("alpha", [2.0, 8.0])  # scale 1 (no fold) and 4 (folded into lora_B, a power of two)
def test_lora_file_fuses_qkv_and_round_trips_exactly(hunyuan_dir, tmp_path, alpha):
    from diffusers import HunyuanVideoTransformer3DModel

    transformer = HunyuanVideoTransformer3DModel.from_config(build_components()["transformer"].config)
    settings = _random_lora(transformer, rank=2, alpha=alpha)
    path = tmp_path / "lora.safetensors"
    lora_io.save_lora(path, transformer, settings)
    header = lora_io.inspect_lora(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        fused_a = f.get_slice("diffusion_model.single_blocks.0.linear1.lora_A.weight").get_shape()
        fused_b = f.get_slice("diffusion_model.single_blocks.0.linear1.lora_B.weight").get_shape()
    assert "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight" in keys
    assert "diffusion_model.double_blocks.0.txt_attn_qkv.lora_B.weight" in keys
    assert "diffusion_model.double_blocks.0.img_mod.linear.lora_A.weight" in keys
    assert not any(k.endswith(".alpha") for k in keys)  # diffusers' HunyuanVideo loader refuses non-"lora" keys
    assert (fused_a, fused_b) == ([4 * 2, 16], [3 * 16 + 32, 4 * 2])  # q, k, v, mlp: rank 4r, rows 3 d + mlp
    folder = read_hunyuan_folder(hunyuan_dir)
    assert header.shapes == folder.lora_shapes("transformer", 2, DEFAULT_LORA_TARGETS)  # from the header alone
    state, _ = lora_io.read_lora(path)
    original = lora_io.lora_state(transformer)
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)


def test_partial_fused_targets_are_refused_before_training(hunyuan_dir):
    with pytest.raises(InputError, match="attn.to_q of transformer_blocks.0 without attn.to_k, attn.to_v"):
        read_hunyuan_folder(hunyuan_dir).lora_shapes("transformer", 4, r"transformer_blocks\.\d+\.attn\.to_q")


def test_a_fused_layer_not_saved_by_loraedit_is_refused(tmp_path):
    from diffusers import HunyuanVideoTransformer3DModel
    from safetensors.torch import load_file, save_file

    transformer = HunyuanVideoTransformer3DModel.from_config(build_components()["transformer"].config)
    settings = _random_lora(transformer)
    path = tmp_path / "lora.safetensors"
    lora_io.save_lora(path, transformer, settings)
    tensors = load_file(str(path))
    tensors["diffusion_model.double_blocks.0.img_attn_qkv.lora_B.weight"][0, -1] = 1.0  # off its diagonal block
    save_file(tensors, str(path), metadata={"loraedit": json.dumps(settings.__dict__), "format": "pt"})
    with pytest.raises(InputError, match="not block-diagonal"):
        lora_io.read_lora(path)


def test_diffusers_own_loader_gives_the_in_memory_output(tmp_path):
    """Our file through `HunyuanVideoImageToVideoPipeline.load_lora_weights` = the peft adapter we trained.

    diffusers' converter splits a single block's fused `linear1` at the real model's width (3072), so on the
    tiny model the LoRA leaves that layer out here; `test_diffusers_converter_splits_linear1_at_real_width`
    covers it at the real shapes.
    """
    from diffusers import HunyuanVideoImageToVideoPipeline

    targets = DEFAULT_LORA_TARGETS.replace(r"attn\.(to_q|to_k|to_v)|proj_mlp|", "")
    ours = build_components()["transformer"]
    settings = _random_lora(ours, rank=2, alpha=4.0, targets=targets)
    path = tmp_path / "lora.safetensors"
    lora_io.save_lora(path, ours, settings)
    pipe = HunyuanVideoImageToVideoPipeline(**build_components())  # the same seeded base weights
    pipe.load_lora_weights(str(path))
    g = torch.Generator().manual_seed(0)
    inputs = transformer_inputs(g)
    with torch.no_grad():
        expected, got = ours(**inputs)[0], pipe.transformer(**inputs)[0]
        lora_io.remove_lora(ours)
        base = ours(**inputs)[0]
    assert not torch.allclose(expected, base, atol=1e-3)  # the LoRA does change the output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_diffusers_converter_splits_linear1_at_real_width():
    """At the real width (3072, MLP 12288) diffusers' converter recovers each member of our fused `linear1`."""
    from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers

    g = torch.Generator().manual_seed(0)
    members = {m: (torch.randn(1, 3072, generator=g), torch.randn(o, 1, generator=g))
               for m, o in (("attn.to_q", 3072), ("attn.to_k", 3072), ("attn.to_v", 3072), ("proj_mlp", 12288))}
    state = {f"single_transformer_blocks.0.{m}.lora_{ab}.weight": t for m, pair in members.items()
             for ab, t in zip("AB", pair)}
    converted = _convert_hunyuan_video_lora_to_diffusers(LORA_KEY_MAP.to_file(state, 1, 1.0))
    for m, (a, b) in members.items():
        ca = converted[f"transformer.single_transformer_blocks.0.{m}.lora_A.weight"]
        cb = converted[f"transformer.single_transformer_blocks.0.{m}.lora_B.weight"]
        assert torch.equal(cb @ ca, b @ a), m  # the member's own delta, the other members' blocks zero
