"""`loraedit plan`, `--dry-run` and the memory check before a run, on the published folders (tests/fixtures/models).

No GPU is needed: `plan` plans for a named card, and the check before a run is exercised on a stand-in GPU
(`devices.detect_gpu` replaced), so what is tested is the decision, not CUDA.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loraedit import api, devices, perfmodel, perftables, plan
from loraedit.backends.wan_folder import read_wan_folder
from loraedit.cli import main

MODELS = Path(__file__).parent / "fixtures" / "models"
WAN21 = MODELS / "Wan2.1-I2V-14B-480P-Diffusers"
WAN22 = MODELS / "Wan2.2-I2V-A14B-Diffusers"


def _rows(out: str) -> dict[tuple[str, str, str], list[str]]:
    """The markdown table as {(frames, GPU, mode): cells}."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            rows[(cells[0], cells[1], cells[2].replace(" **(pick)**", ""))] = cells
    return rows


def test_plan_for_wan21_480p_on_24_48_and_80_gb_cards(capsys):
    assert main(["plan", "--model", str(WAN21), "--frames", "49", "81", "--gpu", "rtx4090", "l40s", "h100"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 2 * 3 * 4
    picks = {(f, g): m for (f, g, m), cells in rows.items() if cells[2].endswith("**(pick)**")}
    assert picks == {("49", "RTX 4090 24GB"): "fp8+offload", ("49", "L40S 48GB"): "fp8",
                     ("49", "H100 SXM 80GB"): "full",
                     ("81", "L40S 48GB"): "fp8+offload", ("81", "H100 SXM 80GB"): "full"}
    assert "pick for 81 frames on RTX 4090 24GB: none: no memory mode fits" in out
    assert "closest that fits: --low-cost (trains on 13-frame clips), or --frames 57" in out
    assert "20,280 video tokens, 257 CLIP and 512 text tokens" in out
    # The folder's numbers give perfmodel's 14B table (which uses its copy of the config) exactly.
    table = {(r["frames"], r["mode"]): r for r in perftables.table_14b() if r["checkpointing"] == "every block"}
    full49 = rows[("49", "H100 SXM 80GB", "full")]
    assert full49[3] == f"{table[(49, 'full')]['peak_gib']:.1f}" == "49.5"
    assert full49[7] == f"{100 * table[(49, 'full')]['train_s_h100'] / 60:.1f}"
    assert rows[("49", "RTX 4090 24GB", "fp8+offload")][3] == f"{table[(49, 'fp8+offload')]['peak_gib']:.1f}"


def test_fast_and_train_size_are_planned_as_the_levers_table_models_them(capsys):
    plain_rows, fast_rows, small_rows = ({}, {}, {})
    for extra, into in (([], plain_rows), (["--fast"], fast_rows), (["--train-size", "0.5"], small_rows)):
        assert main(["plan", "--model", str(WAN21), "--gpu", "h100", *extra]) == 0
        into.update(_rows(capsys.readouterr().out))
    key = ("49", "H100 SXM 80GB", "full")
    plain, fast, small = plain_rows[key], fast_rows[key], small_rows[key]
    # --fast: half the training steps; 15 sampling steps of which TaylorSeer (every 3rd) runs 6 in full.
    assert float(fast[7]) == pytest.approx(float(plain[7]) / 2, abs=0.06)
    assert float(fast[8]) == pytest.approx(float(plain[8]) * 6 / 30, abs=0.06)
    assert float(fast[9]) == pytest.approx(float(fast[7]) + float(fast[8]), abs=0.11) and float(fast[9]) < 6
    # --train-size 0.5 trains 4x fewer tokens (416x240) and samples at 832x480: the levers table's 3.3 minutes.
    half = next(r for r in perftables.edit_recipes() if r["recipe"].startswith("49 frames, --train-size 0.5")
                and r["device"].startswith("H100") and r["mode"] == "full")
    assert small[9] == f"{half['edit_min']:.1f}" and small[8] == plain[8] and float(small[3]) < float(plain[3])


def test_taylorseer_full_steps_follow_diffusers_rule():
    from loraedit.step_cache import taylorseer_full_steps

    assert taylorseer_full_steps(30, 3) == 11  # steps 1, 2, then 4, 7, ..., 28
    assert taylorseer_full_steps(15, 3) == 6
    assert taylorseer_full_steps(8, 2) == 5  # 1, 2, 4, 6, 8


def test_wan22_keeps_both_experts_and_trains_each():
    wan21, wan22 = read_wan_folder(WAN21), read_wan_folder(WAN22)
    gpu, shape = devices.named_gpu("h100"), plan.RunShape(49, (832, 480))
    one, two = plan.plan_run(wan21, shape, gpu), plan.plan_run(wan22, shape, gpu)
    dims = perfmodel.WanDims.from_folder(wan22)
    params = perfmodel.parameter_counts(dims)
    bf16, fp8 = params["total"] * 2, params["fp8"] + (params["total"] - params["fp8"]) * 2
    clip = perfmodel.Clip(20280, image_tokens=0)  # no CLIP tokens: Wan2.2 has no image encoder
    lora = perfmodel.lora_parameters(dims, 16)
    full = two.modes[0]
    # both transformers resident while sampling, each with its LoRA (bf16)
    assert full.sample_gib == pytest.approx(perfmodel.sample_step_memory(dims, clip, "full")["peak"]
                                            + (bf16 + 2 * lora * 2) / perfmodel.GIB)
    # training: the idle expert's weights and fp32 LoRA stay; each expert trains its own 100 steps
    assert full.train_gib == pytest.approx(perfmodel.train_step_memory(dims, clip, "full")["peak"]
                                           + (bf16 + lora * 4) / perfmodel.GIB)
    flops = perfmodel.train_step_flops(dims, clip)["total"]
    assert full.train_min == pytest.approx(2 * 100 * flops / (989e12 * perfmodel.ASSUMED_UTILISATION) / 60)
    assert two.modes[3].host_gib == pytest.approx(2 * fp8 / perfmodel.GIB)  # fp8+offload pins both experts
    assert one.modes[3].host_gib < two.modes[3].host_gib
    assert "(wan2.2-i2v, 2 experts" in plan.format_plans([two])


def test_plan_json_and_bad_options(capsys):
    assert main(["plan", "--model", str(WAN21), "--gpu", "a100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["pick"] == "full" and data[0]["tokens"] == 20280 and len(data[0]["modes"]) == 4
    assert main(["plan", "--model", str(WAN21), "--frames", "50", "--gpu", "h100"]) == 2
    assert "--frames 50 is not 4k+1" in capsys.readouterr().err
    assert main(["plan", "--model", str(WAN21), "--gpu", "b9000"]) == 2
    err = capsys.readouterr().err
    assert "--gpu 'b9000' is not a card loraedit knows: choose one of h200, h100-pcie, h100" in err


def test_plan_without_a_gpu_says_how_to_plan_for_one(capsys):
    if devices.detect_gpu() is not None:
        pytest.skip("this machine has a GPU")
    assert main(["plan", "--model", str(WAN21)]) == 0
    out = capsys.readouterr().out
    assert "GPU: none detected" in out and "give --gpu NAME (or --gpu-memory GIB)" in out


# ---- the check before a run, and --dry-run ---------------------------------------------------------------------


def _fake_gpu(monkeypatch, free_gib: float, name: str = "NVIDIA GeForce RTX 4090"):
    gpu = devices.Gpu(name, free_gib, free_gib, devices.card_for(name), detected=True)
    monkeypatch.setattr(devices, "detect_gpu", lambda device=None: gpu)
    monkeypatch.setattr(devices, "host_available_gib", lambda meminfo=None: 64.0)
    return gpu


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded")


def _edit(model, clip_files, tmp_path, *extra):
    return ["edit", "--model", str(model), "--video", str(clip_files["video"]), "--mask", str(clip_files["mask"]),
            "--frames", "9", "--size", "64x64", "--edited-first-frame", str(clip_files["edited0"]), "--out",
            str(tmp_path / "out.mp4"), "--cache-dir", str(tmp_path / "cache"), *extra]


def test_edit_is_refused_when_its_memory_mode_will_not_fit_and_told_the_one_that_does(monkeypatch, clip_files,
                                                                                        tmp_path, capsys):
    monkeypatch.setattr(api, "load_backend", _no_load)
    _fake_gpu(monkeypatch, 23.6)
    assert main(_edit(WAN21, clip_files, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"--memory-mode full needs about 3\d\.\d GiB of GPU memory but NVIDIA GeForce RTX 4090 has 23\.6 "
                     r"GiB free: use --memory-mode fp8 \(about 1\d\.\d GiB\)", err), err
    assert "--no-memory-check runs anyway" in err


def test_nothing_fits_names_what_would(monkeypatch, clip_files, tmp_path, capsys):
    monkeypatch.setattr(api, "load_backend", _no_load)
    _fake_gpu(monkeypatch, 0.5)  # less than the CUDA context alone
    assert main(_edit("toy-random", clip_files, tmp_path, "--frames", "17")) == 2
    err = capsys.readouterr().err
    assert ("and no memory mode fits: no smaller setting loraedit can choose fits: use a GPU with more free memory"
            in err)


def test_dry_run_prints_the_plan_and_loads_nothing(monkeypatch, clip_files, tmp_path, capsys):
    monkeypatch.setattr(api, "load_backend", _no_load)
    _fake_gpu(monkeypatch, 23.6)
    assert main(_edit(WAN21, clip_files, tmp_path, "--dry-run", "--memory-mode", "fp8")) == 0
    out = capsys.readouterr().out
    assert "edit with Wan2.1-I2V-14B-480P-Diffusers" in out and "9 frames at 64x64" in out
    assert "GPU: NVIDIA GeForce RTX 4090 (this machine's): 23.6 GiB free" in out
    assert "dry run: the inputs are fine; nothing was loaded" in out
    # The run that would be refused: the plan, then the refusal; --no-memory-check lets it through.
    assert main(_edit(WAN21, clip_files, tmp_path, "--dry-run")) == 2
    captured = capsys.readouterr()
    assert "| memory mode |" in captured.out and "--memory-mode full needs about" in captured.err
    assert main(_edit(WAN21, clip_files, tmp_path, "--dry-run", "--no-memory-check")) == 0


def test_dry_run_on_a_cpu_checks_the_inputs(monkeypatch, clip_files, tmp_path, capsys):
    monkeypatch.setattr(api, "load_backend", _no_load)
    monkeypatch.setattr(devices, "detect_gpu", lambda device=None: None)
    assert main(_edit("toy-random", clip_files, tmp_path, "--dry-run", "--frames", "10")) == 2
    assert "--frames 10 is not 4k+1" in capsys.readouterr().err
    assert main(["train", "--model", "toy-random", "--video", str(clip_files["video"]), "--mask",
                 str(clip_files["mask"]), "--out", str(tmp_path / "lora"), "--cache-dir", str(tmp_path / "c"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train with" in out and "no GPU here: the run would compute on the CPU" in out
