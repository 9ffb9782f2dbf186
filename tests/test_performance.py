"""Every speed/memory mode computes what the plain path computes (loss, LoRA, sample), within tolerance.

Speed and memory themselves are measured by `make bench` and bench/gpu.py, never here. fp8 base weights
and group offloading run on the CPU in diffusers, so their code paths are exercised here too (the offload
hooks move weights CPU -> CPU, which checks the hooks and the LoRA placement, not the transfers).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from loraedit import conditioning, performance
from loraedit.encoding import Encoder
from loraedit.backends.wan import load_wan
from loraedit.cli import build_parser
from loraedit.cli.options import configs as _configs
from loraedit.performance import PerformanceConfig, batched_cfg, performance_problems
from loraedit.step_cache import StepCache, choose_step_cache, taylorseer_full_steps
from loraedit.train import TrainConfig, train_lora

CFG = TrainConfig(rank=4, alpha=4.0, learning_rate=2e-3, stage1_steps=4, checkpoint_every=0)
PLAIN = PerformanceConfig()


@pytest.fixture(scope="module")
def clip(toy_clip):
    return toy_clip.video[:9], toy_clip.masks[:9], toy_clip.edited_first_frame


def _train(model_dir, clip, perf: PerformanceConfig, out) -> tuple[list[float], dict, object]:
    backend = load_wan(model_dir, perf=perf)
    video, masks, _ = clip
    sample = Encoder(backend, None, "maxpool").sample(conditioning.motion_sample(video, masks, "p3rs0n, a square"))
    train_lora(backend, [sample], [], CFG, out, progress=False)
    losses = json.loads((out / "train_log.json").read_text())["losses"][0]
    lora = {n: p.detach().clone() for n, p in backend.transformer("transformer").named_parameters() if "lora_" in n}
    return losses, lora, backend


@pytest.fixture(scope="module")
def plain(wan21_dir, clip, tmp_path_factory):
    return _train(wan21_dir, clip, PLAIN, tmp_path_factory.mktemp("plain"))


#: (mode, relative tolerance on the losses, on the trained LoRA). The LoRA is compared by the relative error
#: of its B matrices (which start at zero, so all of them is training): Adam moves each weight by about lr
#: per step whatever the gradient's size, so single tiny weights are no measure.
MODES = [
    (PerformanceConfig(checkpoint_blocks=performance.ALL_BLOCKS), 1e-5, 1e-3),  # every block (plain on CPU: none)
    (PerformanceConfig(checkpoint_blocks=1), 1e-5, 1e-3),  # the first of two blocks only
    (PerformanceConfig(checkpoint_blocks=performance.ALL_BLOCKS, keep_attention=True), 1e-5, 1e-3),
    (PerformanceConfig(memory_mode="offload"), 1e-5, 1e-3),
    (PerformanceConfig(attention="_native_math"), 1e-4, 1e-2),  # the textbook attention, quadratic memory
    (PerformanceConfig(memory_mode="fp8"), 2e-2, 0.25),  # float8 e4m3 base weights: 3 mantissa bits
    (PerformanceConfig(memory_mode="fp8+offload"), 2e-2, 0.25),
]


@pytest.mark.parametrize("perf, rtol, lora_rtol", MODES,
                         ids=["checkpoint-every-block", "checkpoint-1-block", "keep-attention", "offload", "math-attention", "fp8",
                              "fp8+offload"])
def test_every_mode_trains_like_the_plain_path(wan21_dir, clip, plain, tmp_path, perf, rtol, lora_rtol):
    losses, lora, backend = _train(wan21_dir, clip, perf, tmp_path)
    plain_losses, plain_lora, _ = plain
    assert losses == pytest.approx(plain_losses, rel=rtol)
    assert lora.keys() == plain_lora.keys()
    assert all(v.dtype == torch.float32 for v in lora.values())  # the LoRA trains in full precision, any storage
    b, plain_b = (torch.cat([w[n].flatten() for n in sorted(w) if "lora_B" in n]) for w in (lora, plain_lora))
    err = float((b - plain_b).norm() / plain_b.norm())
    assert err < lora_rtol
    base = backend.transformer("transformer").blocks[0].attn1.to_q.base_layer.weight
    assert base.dtype == (torch.float8_e4m3fn if perf.fp8_base else torch.float32)


def test_keep_attention_without_checkpointed_blocks_says_so(wan21_dir, clip, plain, tmp_path, capsys):
    losses, _, _ = _train(wan21_dir, clip, PerformanceConfig(keep_attention=True), tmp_path)  # CPU: none checkpointed
    assert "--keep-attention acts inside checkpointed blocks" in capsys.readouterr().err
    assert losses == plain[0]  # and nothing else changed


def test_gradient_checkpointing_per_block(wan21_dir):
    backend = load_wan(wan21_dir)
    transformer = backend.transformer("transformer")
    assert performance.set_gradient_checkpointing(transformer, None) == 2 and transformer.gradient_checkpointing
    assert performance.set_gradient_checkpointing(transformer, 1) == 1
    assert performance.set_gradient_checkpointing(transformer, 5) == 2  # more than the model has: every block
    assert performance.set_gradient_checkpointing(transformer, 0) == 0 and not transformer.gradient_checkpointing
    auto = PerformanceConfig()
    assert performance.checkpointed_blocks(auto, torch.device("cpu")) == 0  # memory is not the limit on a CPU
    assert performance.checkpointed_blocks(auto, torch.device("cuda")) is None  # every block on a GPU
    assert performance.checkpointed_blocks(replace(auto, checkpoint_blocks=3), torch.device("cpu")) == 3


@pytest.mark.parametrize("perf", [PerformanceConfig(compile=True),
                                  PerformanceConfig(compile=True, checkpoint_blocks=performance.ALL_BLOCKS,
                                                    keep_attention=True)], ids=["compile", "compile+keep-attention"])
def test_compiled_blocks_train_like_the_plain_path(wan21_dir, clip, plain, tmp_path, monkeypatch, perf):
    # The "eager" dynamo backend traces and guards like inductor but needs no C++ toolchain or minutes of
    # code generation: it checks the wiring (compile before LoRA, recompile after), not the kernels.
    monkeypatch.setattr(performance, "COMPILE_KWARGS", {"backend": "eager"})
    torch._dynamo.reset()
    losses, _, backend = _train(wan21_dir, clip, perf, tmp_path)
    assert backend.transformer("transformer").blocks[0]._compiled_call_impl is not None
    assert losses == pytest.approx(plain[0], rel=1e-5)
    torch._dynamo.reset()


# ---- sampling ----------------------------------------------------------------------------------------------


def _sample(backend, clip, guidance=5.0, sampler="unipc"):
    video, masks, first = clip
    enc = Encoder(backend, None, "maxpool")
    cond = enc.sample(conditioning.mask_aware_condition(video, masks, first, "p3rs0n, a square"))
    negative = enc.prompt("")
    backend.pipe.set_progress_bar_config(disable=True)
    return backend.generate(cond.condition, first, cond.text, negative, cond.image, steps=3, guidance=guidance,
                            shift=5.0, seed=0, sampler=sampler)


def test_the_euler_sampler_runs_and_unipc_comes_back_unchanged(wan21_dir, clip):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    backend = load_wan(wan21_dir)
    first = _sample(backend, clip)
    euler = _sample(backend, clip, sampler="euler")
    assert isinstance(backend.pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert backend.pipe.scheduler.config.shift == 5.0
    again = _sample(backend, clip)
    assert isinstance(backend.pipe.scheduler, UniPCMultistepScheduler)
    assert torch.equal(first, again) and euler.shape == first.shape and not torch.equal(first, euler)
    with pytest.raises(ValueError, match="sampler"):
        _sample(backend, clip, sampler="ddim")


@pytest.mark.parametrize("model", ["wan21_dir", "wan22_dir"])
def test_batched_cfg_gives_the_sequential_sample(model, clip, request, monkeypatch):
    model_dir = request.getfixturevalue(model)
    sequential = _sample(load_wan(model_dir, perf=PerformanceConfig(batched_cfg=False)), clip)
    backend = load_wan(model_dir)
    calls = []
    original = performance.BatchedCFG.new_forward

    def counting(self, module, *args, **kwargs):
        calls.append(kwargs["hidden_states"].shape[0])
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(performance.BatchedCFG, "new_forward", counting)
    block_batches = []  # the batch of every forward that actually runs the blocks
    for t in (backend.pipe.transformer, backend.pipe.transformer_2):
        if t is not None:
            t.blocks[0].register_forward_pre_hook(lambda m, args: block_batches.append(args[0].shape[0]))
    batched = _sample(backend, clip)
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)
    assert len(calls) == 6  # 3 steps x (cond, uncond) reach the hook ...
    assert block_batches == [2, 2, 2]  # ... and each step runs one forward, of batch 2
    assert not hasattr(backend.pipe.transformer, "_diffusers_hook") or \
        backend.pipe.transformer._diffusers_hook.get_hook(performance.BATCHED_CFG_HOOK) is None  # removed after


def test_batched_cfg_leaves_other_calls_alone(wan21_dir):
    backend = load_wan(wan21_dir)
    transformer = backend.transformer("transformer")
    backend.place_transformers()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 3, 8, 8, generator=g)
    text, negative = torch.randn(1, 512, 32, generator=g), torch.randn(1, 512, 32, generator=g)
    image, t = torch.randn(1, 17, 4, generator=g), torch.tensor([500.0])

    def call(txt, name=None):
        kwargs = dict(hidden_states=x, timestep=t, encoder_hidden_states=txt, encoder_hidden_states_image=image,
                      return_dict=False)
        if name is None:
            return transformer(**kwargs)[0]
        with transformer.cache_context(name):
            return transformer(**kwargs)[0]

    plain_cond, plain_uncond = call(text), call(negative)
    with batched_cfg([transformer], negative) as (hook,):
        assert torch.allclose(call(text), plain_cond, atol=1e-5)  # outside any cache context: unchanged
        assert hook.batched_calls == 0
        assert torch.allclose(call(text, "cond"), plain_cond, atol=1e-5)
        assert torch.allclose(call(negative, "uncond"), plain_uncond, atol=1e-5)
        assert hook.batched_calls == 1
        call(text, "cond")
        other = torch.randn(1, 512, 32, generator=g)  # not the negative it was built with: computed, not reused
        assert torch.allclose(call(other, "uncond"), call(other), atol=1e-5)


def _sample_with_cache(backend, clip, threshold, steps=6, cache_kind="first-block"):
    video, masks, first = clip
    enc = Encoder(backend, None, "maxpool")
    cond = enc.sample(conditioning.mask_aware_condition(video, masks, first, "p3rs0n, a square"))
    backend.pipe.set_progress_bar_config(disable=True)
    return backend.generate(cond.condition, first, cond.text, enc.prompt(""), cond.image, steps=steps, guidance=5.0,
                            shift=5.0, seed=0, step_cache=StepCache(cache_kind, threshold) if threshold else None)


@pytest.mark.parametrize("model", ["wan21_dir", "wan22_dir"])
def test_first_block_cache_skips_blocks_and_leaves_nothing_behind(model, clip, request):
    backend = load_wan(request.getfixturevalue(model))
    exact = _sample_with_cache(backend, clip, 0.0)
    assert backend.last_block_counter.steps == 0  # threshold 0: nothing installed, the exact sampler
    transformers = [t for t in (backend.pipe.transformer, backend.pipe.transformer_2) if t is not None]
    tail_runs = []
    for t in transformers:
        t.blocks[-1].attn1.register_forward_pre_hook(lambda *_: tail_runs.append(1))
    # A threshold no change reaches: after the first forward of each expert the tail is always reused.
    cached = _sample_with_cache(backend, clip, 1e9)
    counter = backend.last_block_counter
    assert counter.steps == 6 and counter.full == len(transformers) == len(tail_runs)
    assert counter.skipped_fraction == pytest.approx(1 - len(transformers) / 6)
    assert torch.isfinite(cached).all() and not torch.equal(cached, exact)
    for t in transformers:  # the hooks are gone: the same call is exact again
        assert not getattr(t, "is_cache_enabled", False)
    torch.testing.assert_close(_sample_with_cache(backend, clip, 0.0), exact, rtol=0, atol=0)
    assert backend.last_block_counter.full == 0


def test_taylorseer_predicts_whole_blocks_between_full_steps_and_leaves_nothing_behind(wan21_dir, clip):
    backend = load_wan(wan21_dir)
    exact = _sample_with_cache(backend, clip, 0.0, steps=8)
    skipped = {}
    for interval in (2, 4):
        cached = _sample_with_cache(backend, clip, interval, steps=8, cache_kind="taylorseer")
        counter = backend.last_block_counter
        assert counter.steps == 8 and counter.full == taylorseer_full_steps(8, interval)  # what the planner counts
        skipped[interval] = counter.skipped_fraction
        assert torch.isfinite(cached).all() and not torch.equal(cached, exact)
        assert (cached - exact).abs().mean() < 0.5  # an approximation of the same video, not another one
    assert skipped[4] > skipped[2]  # a longer interval predicts more steps
    assert not getattr(backend.pipe.transformer, "is_cache_enabled", False)
    torch.testing.assert_close(_sample_with_cache(backend, clip, 0.0, steps=8), exact, rtol=0, atol=0)


def test_one_step_cache_at_a_time():
    assert choose_step_cache(0.0, 0) is None
    assert choose_step_cache(0.1, 0) == StepCache("first-block", 0.1)
    assert str(choose_step_cache(0.0, 3)) == "taylorseer 3"
    with pytest.raises(ValueError, match="one step cache at a time"):
        choose_step_cache(0.1, 3)
    with pytest.raises(ValueError, match="not one of"):
        StepCache("magcache", 1)


def test_vae_tiling_switch(wan21_dir):
    backend = load_wan(wan21_dir, perf=PerformanceConfig(vae_tiling=True))
    backend.place_transformers()
    assert backend.pipe.vae.use_tiling


# ---- options --------------------------------------------------------------------------------------------------


def test_option_problems_are_named():
    assert performance_problems(PLAIN, trains=True) == []
    problems = performance_problems(PerformanceConfig(memory_mode="fp4", attention="sage", checkpoint_blocks=-1),
                                    trains=True)
    assert any("--memory-mode 'fp4'" in p for p in problems)
    assert any("--attention sage has no backward pass" in p for p in problems)
    assert any("--checkpoint-blocks -1" in p for p in problems)
    assert not any("sage" in p for p in performance_problems(PerformanceConfig(attention="sage"), trains=False)
                   if "backward" in p)
    assert any("--attention 'fast'" in p for p in performance_problems(PerformanceConfig(attention="fast"), False))
    nothing_to_keep = performance_problems(PerformanceConfig(checkpoint_blocks=0, keep_attention=True), trains=True)
    assert nothing_to_keep and "--keep-attention" in nothing_to_keep[0]


def test_command_line_options_reach_the_config(clip_files):
    files = ["--video", str(clip_files["video"]), "--mask", str(clip_files["mask"])]
    args = build_parser().parse_args(["edit", *files, "--edited-first-frame", str(clip_files["edited0"]),
                                      "--memory-mode", "fp8+offload", "--attention", "_native_math", "--compile",
                                      "--checkpoint-blocks", "30", "--no-batched-cfg", "--vae-tiling"])
    perf = _configs(args)[1].performance
    assert perf == PerformanceConfig(memory_mode="fp8+offload", attention="_native_math", compile=True,
                                     checkpoint_blocks=30, batched_cfg=False, vae_tiling=True)
    assert perf.fp8_base and perf.offload
    args = build_parser().parse_args(["train", *files, "--no-gradient-checkpointing"])
    assert _configs(args)[1].performance == replace(PLAIN, checkpoint_blocks=0)
    args = build_parser().parse_args(["train", *files, "--checkpoint-blocks", "all", "--keep-attention"])
    assert _configs(args)[1].performance == replace(PLAIN, checkpoint_blocks=performance.ALL_BLOCKS, keep_attention=True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", *files, "--checkpoint-blocks", "most"])
    args = build_parser().parse_args(["sample", *files, "--edited-first-frame", str(clip_files["edited0"])])
    assert _configs(args)[1].performance == PLAIN and _configs(args)[3].first_block_cache == 0.0
    args = build_parser().parse_args(["sample", *files, "--edited-first-frame", str(clip_files["edited0"]),
                                      "--first-block-cache", "0.1"])
    assert _configs(args)[3].first_block_cache == 0.1


def test_auto_attention_picks_a_backend_with_a_backward_for_training(monkeypatch):
    import diffusers.utils

    cuda = torch.device("cuda")
    monkeypatch.setattr(diffusers.utils, "is_flash_attn_3_available", lambda: True)
    monkeypatch.setattr(diffusers.utils, "is_flash_attn_available", lambda: False)
    assert performance.resolve_attention("auto", cuda, training=False) == "_flash_3"
    assert performance.resolve_attention("auto", cuda, training=True) == "native"  # FA3 has no backward here
    monkeypatch.setattr(diffusers.utils, "is_flash_attn_available", lambda: True)
    assert performance.resolve_attention("auto", cuda, training=True) == "flash"
    assert performance.resolve_attention("auto", torch.device("cpu"), training=True) == "native"
    assert performance.resolve_attention("_native_cudnn", cuda) == "_native_cudnn"
    assert any("_flash_3 has no backward" in p for p in performance_problems(PerformanceConfig(attention="_flash_3"),
                                                                              trains=True))


def test_clip_squash_sees_the_whole_wide_frame_and_equals_crop_on_a_square(wan21_dir):
    backend = load_wan(wan21_dir)
    wide = torch.zeros(3, 32, 64)
    wide[:, :, :8] = 1.0  # an edit at the left edge: outside the centre crop
    plain = torch.zeros(3, 32, 64)
    assert torch.equal(backend.encode_image(wide, "crop"), backend.encode_image(plain, "crop"))  # crop misses it
    assert not torch.equal(backend.encode_image(wide, "squash"), backend.encode_image(plain, "squash"))
    square = torch.rand(3, 48, 48) * 2 - 1
    assert torch.equal(backend.encode_image(square, "squash"), backend.encode_image(square, "crop"))
    with pytest.raises(ValueError, match="CLIP view"):
        backend.encode_image(square, "stretch")
