"""HunyuanVideo-I2V end to end: the trainer, resume, the command line and the performance options drive it
through the same protocol as Wan (a tiny random-weight folder; outputs are noise, mechanics are real)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from loraedit import api, conditioning, lora_io, media, performance
from loraedit.encoding import Encoder
from loraedit.backends import load_backend
from loraedit.cli import main
from loraedit.performance import PerformanceConfig
from loraedit.step_cache import StepCache
from loraedit.checkpoints import latest_checkpoint
from loraedit.train import TrainConfig, train_lora

CFG = TrainConfig(rank=4, alpha=4.0, learning_rate=1e-3, stage1_steps=6, stage2_steps=4, stage2_repeats=2,
                  checkpoint_every=2)
FAST = ["--frames", "9", "--size", "64x64", "--quiet"]


def _encoded(backend, clip):
    enc = Encoder(backend, None, "maxpool")
    video, masks = clip.video[:9], clip.masks[:9]
    motion = [enc.sample(conditioning.motion_sample(video, masks, "p3rs0n, a red square"))]
    frames = [enc.sample(conditioning.appearance_sample(video[4], clip.edited_video[4], masks[4], "p3rs0n,"))]
    return motion, frames


class _Crash(Exception):
    pass


def test_training_learns_and_resumes_bit_for_bit(hunyuan_dir, toy_clip, tmp_path):
    reference = load_backend(hunyuan_dir)
    motion, edited = _encoded(reference, toy_clip)
    assert motion[0].condition.shape == (5, 3, 8, 8)  # 4 condition latents + 1 mask channel
    assert edited[0].condition[-1].min() == 0  # the edited frame's own mask: not all ones
    learn = replace(CFG, stage1_steps=30, learning_rate=3e-3, checkpoint_every=0)
    train_lora(reference, motion, [], learn, tmp_path / "learn", progress=False)
    losses = json.loads((tmp_path / "learn" / "train_log.json").read_text())["losses"][0]
    assert sum(losses[-8:]) < sum(losses[:8])  # it fits the clip

    train_lora(load_backend(hunyuan_dir), motion, edited, CFG, tmp_path / "ref", progress=False)
    crashed, calls = load_backend(hunyuan_dir), [0]
    original = crashed.predict

    def predict(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 7:  # just into stage 2
            raise _Crash
        return original(*args, **kwargs)

    crashed.predict = predict
    with pytest.raises(_Crash):
        train_lora(crashed, motion, edited, CFG, tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is not None
    train_lora(load_backend(hunyuan_dir), motion, edited, CFG, tmp_path / "run", resume=True, progress=False)
    ref, got = (lora_io.read_lora(tmp_path / d / "lora.safetensors")[0] for d in ("ref", "run"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_edit_through_the_command_line_then_sample_and_resume(hunyuan_dir, clip_files, tmp_path):
    out = tmp_path / "result" / "edit.mp4"
    args = ["--model", str(hunyuan_dir), "--video", str(clip_files["video"]), "--mask", str(clip_files["mask"]),
            "--cache-dir", str(tmp_path / "cache"), *FAST]
    train = ["--stage1-steps", "4", "--stage2-steps", "2", "--rank", "4", "--lr", "1e-3", "--checkpoint-every", "2"]
    edit = ["edit", *args, "--edited-first-frame", str(clip_files["edited0"]), "--edited-frame",
            f"8:{clip_files['edited8']}", "--out", str(out), "--prompt", "a blue square", *train, "--steps", "2"]
    assert main(edit) == 0
    assert media.read_video(out)[0].shape == (9, 3, 64, 64)
    work = api.work_dir_for(out)
    info = json.loads((work / "train_info.json").read_text())
    assert info["kind"] == "hunyuan-video-i2v" and info["edited_frames"] == [8]
    with safe_open(str(work / "lora.safetensors"), "pt") as f:
        assert "diffusion_model.single_blocks.0.linear1.lora_A.weight" in set(f.keys())  # ComfyUI's names

    # The same command with --resume reuses the finished LoRA instead of training again.
    lora = (work / "lora.safetensors").read_bytes()
    assert main([*edit, "--resume"]) == 0
    assert (work / "lora.safetensors").read_bytes() == lora

    sampled = tmp_path / "sampled.mp4"
    assert main(["sample", *args, "--edited-first-frame", str(clip_files["edited0"]), "--lora",
                 str(work / "lora.safetensors"), "--out", str(sampled), "--prompt", "a blue square", "--steps", "2",
                 "--guidance", "2"]) == 0  # CFG > 1: true guidance with the negative prompt
    assert media.read_video(sampled)[0].shape == (9, 3, 64, 64)


def test_the_sampler_gets_the_mask_aware_condition_and_cfg_runs_twice(hunyuan_dir, toy_clip):
    backend = load_backend(hunyuan_dir)
    video, masks = toy_clip.video[:9], toy_clip.masks[:9]
    sample = conditioning.mask_aware_condition(video, masks, toy_clip.edited_first_frame, "x")
    condition = backend.condition_tensor(sample)
    text, negative = backend.encode_prompt("x", sample.clip_image), backend.encode_prompt("")
    seen = []
    backend.pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["hidden_states"][0, 4:].clone()), with_kwargs=True)
    out = backend.generate(condition, sample.clip_image, text, negative, None, steps=2, guidance=2.0, shift=5.0,
                           seed=0)
    assert out.shape == (9, 3, 64, 64)  # every frame, latent frame 0 included (the stock pipeline drops it)
    assert len(seen) == 4  # 2 steps x (cond + uncond)
    assert torch.equal(seen[0], condition) and condition[-1, 1:].min() == 0  # later frames generate in the mask


def test_checkpointing_walks_both_block_stacks_and_changes_nothing(hunyuan_dir, toy_clip, tmp_path):
    plain = load_backend(hunyuan_dir)
    transformer = plain.transformer("transformer")
    blocks = performance.transformer_blocks(transformer)
    assert blocks == [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert performance.set_gradient_checkpointing(transformer, None) == 2
    assert performance.set_gradient_checkpointing(transformer, 1) == 1
    performance.set_gradient_checkpointing(transformer, 0)

    motion, _ = _encoded(plain, toy_clip)
    cfg = replace(CFG, stage1_steps=3, checkpoint_every=0)
    train_lora(plain, motion, [], cfg, tmp_path / "plain", progress=False)
    checkpointed = load_backend(hunyuan_dir, perf=PerformanceConfig(checkpoint_blocks=performance.ALL_BLOCKS,
                                                                     keep_attention=True))
    train_lora(checkpointed, motion, [], cfg, tmp_path / "ckpt", progress=False)
    a, b = (lora_io.read_lora(tmp_path / d / "lora.safetensors")[0] for d in ("plain", "ckpt"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("guidance", [1.0, 2.0])  # no CFG (the model's default); CFG: cond and uncond cached apart
def test_first_block_cache_counts_hunyuans_blocks(hunyuan_dir, toy_clip, guidance):
    backend = load_backend(hunyuan_dir)
    sample = conditioning.first_frame_condition(toy_clip.video[0], 9, "x")
    text = backend.encode_prompt("x", sample.clip_image)
    backend.generate(backend.condition_tensor(sample), sample.clip_image, text, backend.encode_prompt(""), None,
                     steps=4, guidance=guidance, shift=5.0, seed=0, step_cache=StepCache("first-block", 10.0))
    counter, calls = backend.last_block_counter, 4 * (2 if guidance > 1 else 1)
    assert counter.steps == calls and counter.full == calls // 4  # a huge threshold: only the first step runs all
    assert not backend.pipe.transformer.single_transformer_blocks[-1].attn._forward_pre_hooks  # nothing left behind
