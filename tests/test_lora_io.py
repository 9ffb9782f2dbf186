"""LoRA files: ComfyUI-style keys, diffusers' own loader gives the same output as the in-memory adapter."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from loraedit import lora_io
from loraedit.backends.wan import DEFAULT_LORA_TARGETS, load_wan
from loraedit.errors import InputError
from tiny_wan import tiny_wan_forward




def _trained_lora(backend, rank=4, alpha=8.0):
    settings = lora_io.LoraSettings(rank, alpha, DEFAULT_LORA_TARGETS, backend.fingerprint(), backend.kind)
    lora_io.add_lora(backend.pipe.transformer, settings)
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in lora_io.lora_state(backend.pipe.transformer).items()}
    lora_io.load_lora_state(backend.pipe.transformer, state)
    return settings


def test_targets_are_block_linears_except_clip_kv(wan21_dir):
    backend = load_wan(wan21_dir)
    _trained_lora(backend)
    names = {k.rsplit(".lora_", 1)[0] for k in lora_io.lora_state(backend.pipe.transformer)}
    per_block = {n.split(".", 2)[2] for n in names}
    assert per_block == {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                         "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"}
    assert len(names) == 10 * 2  # two blocks


def test_saved_file_has_comfy_keys_and_alpha_folded_into_lora_b(wan21_dir, tmp_path):
    backend = load_wan(wan21_dir)
    settings = _trained_lora(backend, rank=4, alpha=8.0)
    state = lora_io.lora_state(backend.pipe.transformer)
    path = tmp_path / "lora.safetensors"
    lora_io.save_lora(path, backend.pipe.transformer, settings)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        b = f.get_tensor("diffusion_model.blocks.0.self_attn.q.lora_B.weight")
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert "diffusion_model.blocks.1.ffn.0.lora_B.weight" in keys
    assert "diffusion_model.blocks.0.cross_attn.o.lora_A.weight" in keys
    assert not any("k_img" in k or "v_img" in k for k in keys)
    assert not any(k.endswith(".alpha") for k in keys)  # portable: DiffSynth and the authors' init read it alike
    torch.testing.assert_close(b, state["blocks.0.attn1.to_q.lora_B.weight"] * 2.0, rtol=0, atol=0)  # alpha / rank
    assert (tmp_path / "lora.safetensors.json").is_file()
    read, read_settings = lora_io.read_lora(path)  # the fold is divided out again: training's own numbers
    assert read_settings == settings
    torch.testing.assert_close(read, state, rtol=0, atol=0)


def test_diffusers_load_lora_weights_matches_in_memory_adapter(wan21_dir, tmp_path):
    trained = load_wan(wan21_dir)
    settings = _trained_lora(trained, rank=4, alpha=8.0)
    expected = tiny_wan_forward(trained.pipe.transformer)
    path = tmp_path / "lora.safetensors"
    lora_io.save_lora(path, trained.pipe.transformer, settings)

    via_diffusers = load_wan(wan21_dir)
    base = tiny_wan_forward(via_diffusers.pipe.transformer)
    via_diffusers.pipe.load_lora_weights(str(path))
    ours = load_wan(wan21_dir)
    lora_io.load_lora(path, ours.pipe.transformer, ours.fingerprint())

    assert (expected - base).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(tiny_wan_forward(via_diffusers.pipe.transformer), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiny_wan_forward(ours.pipe.transformer), expected, rtol=0, atol=0)


def test_lora_for_other_rank_or_model_is_refused(wan21_dir, wan22_dir, tmp_path):
    trained = load_wan(wan21_dir)
    settings = _trained_lora(trained, rank=4)
    path = tmp_path / "lora.safetensors"
    lora_io.save_lora(path, trained.pipe.transformer, settings)
    other = load_wan(wan22_dir)
    with pytest.raises(InputError, match="another base model"):
        lora_io.load_lora(path, other.pipe.transformer, other.fingerprint())
    # Same model, but the file's shapes were tampered with (e.g. another rank): named, not a torch error.
    state, s = lora_io.read_lora(path)
    fresh = load_wan(wan21_dir)
    lora_io.add_lora(fresh.pipe.transformer, lora_io.LoraSettings(8, 8.0, s.targets))
    with pytest.raises(InputError, match="does not fit this model"):
        lora_io.load_lora_state(fresh.pipe.transformer, state)


def test_corrupt_lora_file_is_a_clear_error(tmp_path, wan21_dir):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    backend = load_wan(wan21_dir)
    with pytest.raises(InputError, match="not a readable safetensors"):
        lora_io.load_lora(bad, backend.pipe.transformer, backend.fingerprint())
