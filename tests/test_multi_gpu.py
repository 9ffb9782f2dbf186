"""The multi-GPU model's sanity (perfmodel_parallel) and the one-line refusals of the torchrun options on a CPU."""

from __future__ import annotations

import pytest

from loraedit import context_parallel
from loraedit.cli import main
from loraedit.perfmodel import CLIP_TOKENS_14B, WAN21_I2V_14B, Clip, WanDims, train_step_memory, video_tokens
from loraedit.perftables import H100
from loraedit.perfmodel_parallel import (NVLINK, PCIE, context_parallel_bytes, context_parallel_step,
                                         format_scaling, fsdp_step, fsdp_train_memory, scaling_table)

DIMS = WanDims.from_config(WAN21_I2V_14B)


def _clip(frames: int) -> Clip:
    return Clip(video_tokens(DIMS, frames, 480, 832), image_tokens=CLIP_TOKENS_14B)


def test_sharding_divides_the_base_but_not_the_activations():
    clip = _clip(49)
    peaks = [fsdp_train_memory(DIMS, clip, n)["peak"] for n in (1, 2, 4, 8)]
    assert peaks[0] == pytest.approx(train_step_memory(DIMS, clip, "full")["peak"])  # one GPU: perfmodel's own
    assert all(a > b for a, b in zip(peaks, peaks[1:]))  # more GPUs, less memory each
    one = train_step_memory(DIMS, clip, "full")
    floor = one["peak"] - one["weights"]  # activations, LoRA + AdamW, context: whole on every GPU
    assert all(p > floor for p in peaks)


def test_sharded_training_scales_at_most_linearly_and_nvlink_never_loses():
    clip = _clip(49)
    for n in (1, 2, 4, 8):
        nv, pc = (fsdp_step(DIMS, clip, n, H100, link)["draws_per_s"]
                  / fsdp_step(DIMS, clip, 1, H100, link)["draws_per_s"] for link in (NVLINK, PCIE))
        assert 0 < pc <= nv <= n + 1e-9


def test_sequence_parallel_sampling_speedups_are_sane():
    for frames in (49, 81):
        clip = _clip(frames)
        one = context_parallel_step(DIMS, clip, 1, H100, NVLINK)
        assert context_parallel_bytes(DIMS, clip.tokens, 1, "ulysses") == 0
        previous = 1.0
        for n in (2, 4, 8):
            speed = {(kind, link.name): one / context_parallel_step(DIMS, clip, n, H100, link, kind)
                     for kind in ("ulysses", "ring") for link in (NVLINK, PCIE)}
            assert all(s <= n for s in speed.values())
            assert speed["ulysses", "NVLink"] >= speed["ulysses", "PCIe 4.0"]
            ulysses, ring = (context_parallel_bytes(DIMS, clip.tokens, n, kind) for kind in ("ulysses", "ring"))
            assert ulysses == pytest.approx(ring * 2 / n)  # Ulysses moves 2/N of ring's bytes (the same at 2)
            if n > 2:
                assert speed["ulysses", "PCIe 4.0"] > speed["ring", "PCIe 4.0"]
            assert speed["ulysses", "NVLink"] > previous  # on NVLink every doubling pays
            previous = speed["ulysses", "NVLink"]
    assert context_parallel_step(DIMS, _clip(49), 3, H100, NVLINK, "ulysses") is None  # 3 does not divide 40 heads
    longer = [context_parallel_step(DIMS, _clip(f), 1, H100, PCIE)
              / context_parallel_step(DIMS, _clip(f), 4, H100, PCIE) for f in (49, 81)]
    assert longer[1] > longer[0]  # attention grows faster than the exchanged slices: longer clips split better


def test_the_table_prints_ratios_for_every_row():
    rows = scaling_table(H100, frames=(49,), gpus=(1, 2, 3))
    assert [r["gpus"] for r in rows] == [1, 2, 3] and rows[0]["train_memory_ratio"] == 1.0
    assert rows[2]["sample_ulysses_nvlink"] is None and rows[2]["sample_ring_nvlink"] > 1
    text = format_scaling(rows)
    assert "ulysses" in text and text.count("\n") == len(rows) + 2


def test_plan_gpus_command(capsys):
    assert main(["plan-gpus", "--frames", "49", "--gpus", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "train --fsdp" in out and "2.00x" in out


@pytest.mark.parametrize("kind, device, world, heads, attention, says", [
    ("ulysses", "cpu", 2, 40, "native", "needs CUDA GPUs"),
    ("ulysses", "cuda", 1, 40, "native", "needs several processes"),
    ("ulysses", "cuda", 3, 40, "native", "use 2, 4, 5, 8 GPUs, or ring"),
    ("ring", "cuda", 2, 40, "native", "add --attention _native_cudnn"),
])
def test_context_parallel_refusals(kind, device, world, heads, attention, says):
    assert says in context_parallel.problem(kind, device, world, heads, attention)
    assert context_parallel.problem("ulysses", "cuda", 4, 40, "native") is None


def test_the_torchrun_options_refuse_in_one_line_on_a_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    clip = ["--model", "toy", "--video", str(tmp_path / "v.mp4"), "--mask", str(tmp_path / "m")]
    assert main(["sample", *clip, "--edited-first-frame", str(tmp_path / "e.png"), "--context-parallel",
                 "ulysses", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--context-parallel needs CUDA GPUs" in err and "\n" not in err
    assert main(["train", *clip, "--fsdp"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--fsdp needs one process per GPU started by torchrun" in err and "\n" not in err


def test_draws_per_step_is_checked_with_the_other_inputs(clip_files, capsys, monkeypatch):
    from loraedit import distributed

    clip = ["train", "--model", "toy", "--video", str(clip_files["video"]), "--mask", str(clip_files["mask"]),
            "--dry-run"]
    assert main([*clip, "--draws-per-step", "0"]) == 2
    assert "--draws-per-step 0 is invalid: give a value at least 1" in capsys.readouterr().err
    monkeypatch.setattr(distributed, "_active", distributed.Parallel(rank=0, world=2))  # as under torchrun
    assert main([*clip, "--draws-per-step", "3"]) == 2
    assert "--draws-per-step 3 does not split over the 2 processes of this job" in capsys.readouterr().err
