"""Sharded training (FSDP2, two gloo processes on the CPU) learns exactly the LoRA one process learns."""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraedit import distributed, lora_io
from loraedit.backends.wan import load_wan
from loraedit.errors import InputError
from loraedit.train import train_lora

sys.path.insert(0, str(Path(__file__).parent))
from test_train import CFG, _encoded  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_samples(samples, path: Path) -> None:
    tensors = {}
    for i, s in enumerate(samples):
        tensors |= {f"{i}.condition": s.condition, f"{i}.text": s.text, f"{i}.target": s.target}
        if s.image is not None:
            tensors[f"{i}.image"] = s.image
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def test_two_sharded_processes_learn_the_single_process_lora(wan21_dir, toy_clip, tmp_path):
    """2 ranks x 1 draw each, gradients summed = 1 process x 2 draws: equal in math, so equal within rounding.

    Stage 1 and stage 2, with a checkpoint every 2 steps (rank 0 writes them), on the tiny Wan2.1; the ranks
    checkpoint every block (the GPU default), the single process none (the CPU default): that changes nothing.
    """
    import torch.multiprocessing as mp

    from distributed_worker import load_samples, train_rank

    cfg = replace(CFG, draws_per_step=2, stage1_steps=4, stage2_steps=2)
    backend = load_wan(wan21_dir)
    motion, edited = _encoded(backend, toy_clip)
    _save_samples(motion + edited, tmp_path / "samples.safetensors")
    samples = load_samples(tmp_path / "samples.safetensors")  # the very tensors the ranks read
    single = train_lora(backend, samples[:1], samples[1:], cfg, tmp_path / "single", progress=False)

    # Forked, not spawned: the ranks inherit the imported torch and diffusers (importing them twice more would
    # take most of this test's time on a small machine); the parent has started no threads that fork would break.
    mp.start_processes(train_rank, args=(2, _free_port(), str(wan21_dir), str(tmp_path / "samples.safetensors"), 1,
                                         cfg, str(tmp_path / "fsdp")), nprocs=2, join=True, start_method="fork")

    want = lora_io.read_lora(single["transformer"])[0]
    got = lora_io.read_lora(tmp_path / "fsdp" / "lora.safetensors")[0]
    assert want.keys() == got.keys() and any(t.abs().max() > 0 for k, t in want.items() if "lora_B" in k)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    losses = [json.loads((tmp_path / run / "train_log.json").read_text())["losses"] for run in ("single", "fsdp")]
    assert [len(p) for p in losses[1]] == [4, 2]
    for want_phase, got_phase in zip(*losses):
        assert got_phase == pytest.approx(want_phase, rel=1e-5)
    assert not (tmp_path / "fsdp" / "checkpoints").exists()  # rank 0 removed them after the final files


def test_ulysses_sampling_on_two_processes_gives_the_one_process_video(wan21_dir, toy_clip, tmp_path):
    """`--context-parallel ulysses` over two gloo processes (diffusers' device lookup patched, see the worker):
    each rank's blocks see half the tokens, and every rank's video is the one-process video, CFG included."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from distributed_worker import sample_rank

    backend = load_wan(wan21_dir)
    motion, _ = _encoded(backend, toy_clip, edited=False)
    inputs = {"condition": motion[0].condition, "text": motion[0].text, "negative": torch.zeros_like(motion[0].text),
              "first_frame": toy_clip.video[0]} | ({"image": motion[0].image} if motion[0].image is not None else {})
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp_path / "inputs.safetensors"))
    want = backend.generate(inputs["condition"], inputs["first_frame"], inputs["text"], inputs["negative"],
                            inputs.get("image"), steps=2, guidance=5.0, shift=5.0, seed=0)

    mp.start_processes(sample_rank, args=(2, _free_port(), str(wan21_dir), str(tmp_path / "inputs.safetensors"),
                                          str(tmp_path / "video")), nprocs=2, join=True, start_method="fork")
    tokens = motion[0].condition[0].numel() // 4  # latent cells over the 1x2x2 patch
    for rank in range(2):
        got = load_file(tmp_path / f"video.{rank}.safetensors")
        assert set(got["tokens"].tolist()) == {tokens // 2}  # the split ran: half the video tokens a rank
        torch.testing.assert_close(got["video"], want, rtol=1e-4, atol=1e-4)


def test_one_draw_per_step_keeps_the_keys_of_earlier_runs():
    """draws_per_step 1 (the default) draws what the trainer drew before draws existed (draw 0 keeps the
    step's generator; test_train's resume tests pin the draws), so its keys must not change either."""
    cfg = replace(CFG, stage1_steps=2, checkpoint_every=0)
    assert "draws_per_step" not in cfg.key_fields()  # old run keys and cached stage-1 LoRAs still match
    assert replace(cfg, draws_per_step=2).key_fields()["draws_per_step"] == 2


def test_draws_must_split_evenly_over_the_processes():
    with pytest.raises(InputError, match="`draws_per_step` 3 does not split over 2 processes"):
        distributed.Parallel(rank=0, world=2).draws(3)
    assert list(distributed.Parallel(rank=1, world=2).draws(4)) == [1, 3]
    assert list(distributed.SINGLE.draws(2)) == [0, 1]
