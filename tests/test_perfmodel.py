"""The analytic cost model agrees with what the real diffusers model holds and computes.

Parameters: exact, tiny and 14B (built on the meta device). FLOPs: torch's FlopCounterMode on the tiny
model (textbook attention, whose products the counter sees; flash kernels are opaque to it). Activation
memory: the bytes autograd saves, counted with saved-tensor hooks under bf16 autocast (the GPU recipe),
on shapes other than the ones the coefficients were counted on; within 2 %.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from loraedit import lora_io, perfmodel, perftables
from loraedit.backends.wan import DEFAULT_LORA_TARGETS
from loraedit.performance import set_gradient_checkpointing
from loraedit.perfmodel import Clip, WanDims


def _config(heads=3, head_dim=32, ffn=160, layers=3, image=True) -> dict:
    return {"patch_size": [1, 2, 2], "num_attention_heads": heads, "attention_head_dim": head_dim, "in_channels": 36,
            "out_channels": 16, "text_dim": 32, "freq_dim": 64, "ffn_dim": ffn, "num_layers": layers,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32,
            "image_dim": 8 if image else None, "added_kv_proj_dim": heads * head_dim if image else None}


def _model(config: dict, rank: int, dtype=torch.float32, attention="native", checkpoint_blocks=0, keep_attention=False):
    torch.manual_seed(0)
    model = WanTransformer3DModel.from_config(config).to(dtype).requires_grad_(False)
    model.set_attention_backend(attention)
    lora_io.add_lora(model, lora_io.LoraSettings(rank, rank, DEFAULT_LORA_TARGETS, "x", "wan"), dtype=torch.float32)
    set_gradient_checkpointing(model, checkpoint_blocks, keep_attention)
    return model


def _inputs(config: dict, frames: int, h: int, w: int, image_tokens: int, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(1)
    inputs = {"hidden_states": torch.randn(1, 36, frames, h, w, generator=g).to(dtype),
              "timestep": torch.tensor([500.0]),
              "encoder_hidden_states": torch.randn(1, 512, config["text_dim"], generator=g).to(dtype),
              "return_dict": False}
    if config["image_dim"]:
        inputs["encoder_hidden_states_image"] = torch.randn(1, image_tokens, config["image_dim"], generator=g).to(dtype)
    return inputs


@pytest.mark.parametrize("config", [_config(), _config(image=False, layers=2), perfmodel.WAN21_I2V_14B],
                         ids=["tiny-wan2.1", "tiny-wan2.2", "wan2.1-14B"])
def test_parameter_counts_are_exact(config):
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    counts = perfmodel.parameter_counts(WanDims.from_config(config))
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    assert sum(p.numel() for p in model.blocks[0].parameters()) == counts["block"]
    if config is perfmodel.WAN21_I2V_14B:
        assert counts["total"] * 2 / 2**30 == pytest.approx(30.5, abs=0.05)  # WAN-NOTES: 30.5 GiB in bf16


def test_lora_and_fp8_counts_are_exact():
    config = _config()
    dims = WanDims.from_config(config)
    model = _model(config, rank=4)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == perfmodel.lora_parameters(dims, 4)
    torch.manual_seed(0)
    base = WanTransformer3DModel.from_config(config)
    base.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    fp8 = sum(p.numel() for p in base.parameters() if p.dtype == torch.float8_e4m3fn)
    assert fp8 == perfmodel.parameter_counts(dims)["fp8"]


@pytest.mark.parametrize("checkpoint_blocks", [0, None], ids=["no-checkpointing", "checkpointing"])
def test_flops_match_the_flop_counter(checkpoint_blocks):
    config = _config()
    dims, rank, image_tokens = WanDims.from_config(config), 4, 5
    model = _model(config, rank, attention="_native_math", checkpoint_blocks=checkpoint_blocks)
    inputs = _inputs(config, 3, 8, 12, image_tokens)
    clip = Clip(perfmodel.video_tokens(dims, 9, 64, 96), image_tokens=image_tokens, rank=rank)
    assert clip.tokens == 3 * 4 * 6
    with FlopCounterMode(display=False) as forward_only, torch.no_grad():
        model(**inputs)
    assert forward_only.get_total_flops() == pytest.approx(perfmodel.forward_flops(dims, clip), rel=1e-3)
    with FlopCounterMode(display=False) as step:
        model(**inputs)[0].float().square().mean().backward()
    modelled = perfmodel.train_step_flops(dims, clip, checkpoint_blocks, flash=False)
    assert step.get_total_flops() == pytest.approx(modelled["total"], rel=1e-3)


@pytest.mark.parametrize("checkpoint_blocks", [0, 1, None], ids=["no-checkpointing", "first-block", "checkpointing"])
def test_activation_memory_matches_what_autograd_saves(checkpoint_blocks):
    # Other shapes than the ones the coefficients were counted on (d 64-128, ffn 96-192, rank 4-8, 2-3 layers).
    config = _config(heads=3, head_dim=32, ffn=160, layers=3)
    dims, rank = WanDims.from_config(config), 8
    model = _model(config, rank, dtype=torch.bfloat16, checkpoint_blocks=checkpoint_blocks)
    inputs = _inputs(config, 4, 8, 12, 5, dtype=torch.bfloat16)
    clip = Clip(4 * 4 * 6, image_tokens=5, rank=rank)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**inputs)

    measured = perfmodel.saved_activation_bytes(model, step)
    memory = perfmodel.train_step_memory(dims, clip, "full", checkpoint_blocks)
    assert measured == pytest.approx(memory["activations"] * perfmodel.GIB, rel=0.02)
    if checkpoint_blocks is None:  # the recomputed block holds what one unchecked block holds
        full = perfmodel.train_step_memory(dims, clip, "full", 0)["activations"]
        assert memory["recompute"] == pytest.approx((full - memory["activations"]) / dims.layers, rel=0.1)


class _AttentionKernelCalls(TorchDispatchMode):
    """Counts the fused SDPA kernel's calls by whether its queries and keys are the same tokens."""

    def __init__(self):
        super().__init__()
        self.calls = {"self": 0, "cross": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) == "aten._scaled_dot_product_flash_attention_for_cpu.default":  # the forward kernel
            self.calls["self" if args[0].shape[2] == args[1].shape[2] else "cross"] += 1
        return func(*args, **(kwargs or {}))


def test_keep_attention_keeps_the_modelled_bytes_and_skips_the_recomputed_self_attention():
    config = _config(heads=3, head_dim=32, ffn=160, layers=3)
    dims, rank = WanDims.from_config(config), 8
    inputs = _inputs(config, 4, 8, 12, 5, dtype=torch.bfloat16)
    clip = Clip(4 * 4 * 6, image_tokens=5, rank=rank)
    saved, calls, grads = {}, {}, {}
    for keep in (False, True):
        model = _model(config, rank, dtype=torch.bfloat16, checkpoint_blocks=None, keep_attention=keep)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(**inputs)[0]

        saved[keep] = perfmodel.saved_activation_bytes(model, step)
        with _AttentionKernelCalls() as counter:
            step().float().square().mean().backward()
        calls[keep] = counter.calls
        grads[keep] = torch.cat([p.grad.flatten() for n, p in sorted(model.named_parameters()) if p.grad is not None])
    layers = dims.layers
    # Forward + recompute: self-attention once per block instead of twice; cross-attention (text, CLIP) twice.
    assert calls[False] == {"self": 2 * layers, "cross": 4 * layers}
    assert calls[True] == {"self": layers, "cross": 4 * layers}
    assert saved[True] - saved[False] == layers * perfmodel.kept_attention_bytes(dims, clip)
    modelled = {k: perfmodel.train_step_memory(dims, clip, "full", None, keep_attention=k)["activations"] for k in calls}
    assert (modelled[True] - modelled[False]) * perfmodel.GIB == pytest.approx(saved[True] - saved[False], rel=1e-6)
    assert torch.equal(grads[True], grads[False])  # the same kernels on the same inputs: the same gradients
    flops = {k: perfmodel.train_step_flops(dims, clip, None, keep_attention=k)["recompute"] for k in calls}
    assert flops[False] - flops[True] == layers * perfmodel.self_attention_flops(dims, clip)


def test_memory_is_linear_in_frames_with_checkpointing_and_flash():
    dims = WanDims.from_config(perfmodel.WAN21_I2V_14B)
    peaks = {}
    for frames in (17, 49, 81):
        clip = Clip(perfmodel.video_tokens(dims, frames, 480, 832), image_tokens=257)
        peaks[frames] = perfmodel.train_step_memory(dims, clip)["peak"]
    assert peaks[81] - peaks[49] == pytest.approx(peaks[49] - peaks[17], rel=1e-6)  # equal steps of 8 latent frames
    clip = Clip(perfmodel.video_tokens(dims, 49, 480, 832), image_tokens=257)
    textbook = perfmodel.train_step_memory(dims, clip, attention="math", checkpoint_blocks=0)["activations"]
    assert textbook > 40 * 60  # GiB: the attention probabilities alone, 66 GB a block


def test_the_14b_table():
    rows = perftables.table_14b()
    assert {r["frames"] for r in rows} == {49, 81} and len(rows) == 16
    full_49 = next(r for r in rows if r["frames"] == 49 and r["mode"] == "full" and r["checkpointing"] == "every block")
    assert full_49["tokens"] == 20280  # WAN-NOTES: 13 latent frames x 30 x 52
    assert full_49["fits"]["H100 SXM 80GB"] and not full_49["fits"]["RTX 4090 24GB"]
    small = next(r for r in rows
                 if r["frames"] == 49 and r["mode"] == "fp8+offload" and r["checkpointing"] == "every block")
    assert small["fits"]["RTX 4090 24GB"]
    assert "| 81 | 32,760 |" in perftables.format_table(rows)


def test_edit_recipes():
    recipes = perftables.edit_recipes()
    short = {"49 frames": "49 ", "low-cost (13-frame clips)": "low", "49 frames, --train-size 0.5 (416x240)": "half"}
    rows = {(r["device"].split()[0], short[r["recipe"]], "keep" in r["mode"]): r for r in recipes}
    assert len(rows) == len(recipes)
    # --train-size at half the sides: 4x fewer tokens, so a training step costs less than a quarter (attention
    # falls 16x); sampling is unchanged, so it is most of what is left.
    half, plain = rows[("H100", "half", False)], rows[("H100", "49 ", False)]
    assert half["train_s"] < plain["train_s"] / 4 and half["sample_s"] == plain["sample_s"]
    assert half["peak_gib"] < plain["peak_gib"]
    assert rows[("H100", "49 ", False)]["edit_min"] > rows[("H100", "low", False)]["edit_min"]
    assert rows[("RTX", "low", False)]["peak_gib"] < perftables.RTX4090.memory_gib
    # --keep-attention: faster, more memory; listed only where it fits (not at 49 frames on a 24 GB card).
    kept, plain = rows[("H100", "49 ", True)], rows[("H100", "49 ", False)]
    assert kept["train_s"] < plain["train_s"] and kept["peak_gib"] > plain["peak_gib"]
    assert ("RTX", "49 ", True) not in rows and ("RTX", "low", True) in rows
    assert "the authors, measured" in perftables.format_recipes(recipes)
    # A first-block cache that skips 60 % of the 39 later blocks leaves 1/40 + 39/40 x 0.4 of each sampling step.
    cached = perftables.edit_recipes(cache_skipped=0.6)
    assert cached[0]["sample_s"] == pytest.approx(recipes[0]["sample_s"] * (1 + 39 * 0.4) / 40)
    assert cached[0]["train_s"] == recipes[0]["train_s"] and cached[0]["edit_min"] < recipes[0]["edit_min"]


def test_load_time_of_wan_14b_from_its_parts():
    folder = Path(__file__).parent / "fixtures" / "models" / "Wan2.1-I2V-14B-480P-Diffusers"
    t5 = json.loads((folder / "text_encoder" / "config.json").read_text())
    d, inner = t5["d_model"], t5["num_heads"] * t5["d_kv"]
    layer = 4 * d * inner + 3 * d * t5["d_ff"] + 2 * d + t5["relative_attention_num_buckets"] * t5["num_heads"]
    assert perftables.WAN21_I2V_14B_PARTS["text_encoder"][0] == t5["vocab_size"] * d + t5["num_layers"] * layer + d
    clip = json.loads((folder / "image_encoder" / "config.json").read_text())
    w, mlp, p = clip["hidden_size"], clip["intermediate_size"], clip["patch_size"]
    layer = 4 * (w * w + w) + 2 * w * mlp + mlp + w + 4 * w
    embed = 3 * p * p * w + w + ((clip["image_size"] // p) ** 2 + 1) * w
    assert perftables.WAN21_I2V_14B_PARTS["image_encoder"][0] == embed + 2 * w + clip["num_hidden_layers"] * layer + 2 * w
    nvme = perftables.load_seconds_14b(2e9)
    assert round(nvme["disk_gb"], 1) == 91.3 and round(nvme["gpu_gb"], 1) == 45.9  # float32 files, bf16 on the GPU
    assert nvme["total_s"] == pytest.approx(91.33 / 2 + 45.92 / 20, abs=0.1)
    assert perftables.load_seconds_14b(2e9, as_loaded=True)["read_s"] == pytest.approx(nvme["read_s"] / 2, rel=0.01)
