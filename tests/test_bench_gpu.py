"""bench/gpu.py runs the same code on a tiny config on the CPU, so a GPU window is never lost to a typo."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from loraedit import perfmodel

ROOT = Path(__file__).resolve().parents[1]


def _gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_on_cpu_measures_every_mode(tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text("# Performance\n")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--device", "cpu",
                             "--json", str(tmp_path / "gpu.json"), "--doc", str(doc)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    runs = data["runs"]
    assert [(r["mode"], r["clip"]) for r in runs] == [(m, c) for m in ("full", "fp8", "offload", "fp8+offload")
                                                      for c in ("5x32x48", "9x32x48")]
    for run in runs:
        assert run["train"]["s_per_step"] > 0 and run["sample"]["s_per_step"] > 0, run
        assert run["train"]["loss"] == run["train"]["loss"]  # finite, not NaN
    by_mode = {r["mode"]: r["train"]["loss"] for r in runs if r["clip"] == "5x32x48"}
    assert abs(by_mode["offload"] - by_mode["full"]) < 1e-5 and abs(by_mode["fp8"] - by_mode["full"]) < 0.05
    assert "| fp8+offload | 9x32x48 |" in doc.read_text()
    kept = [r["train_keep_attention"] for r in runs if r["mode"] == "full"]
    assert len(kept) == 2 and all(k["s_per_step"] > 0 for k in kept)
    assert kept[0]["loss"] == runs[0]["train"]["loss"]  # the same step, the same kernels: the same loss
    assert "| full, --keep-attention | 5x32x48 |" in doc.read_text()


def test_the_14b_model_is_typed_before_it_is_allocated():
    model = _gpu_bench().meta_transformer(perfmodel.WAN21_I2V_14B, torch.bfloat16)
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params)
    gib = sum(p.numel() * p.element_size() for p in params) / 2**30
    assert 30.5 < gib < 31.0  # bf16, but for the small modules Wan keeps in fp32
    assert sum(p.numel() for p in params) == perfmodel.parameter_counts(perfmodel.WanDims.from_config(
        perfmodel.WAN21_I2V_14B))["total"]


def test_the_first_gpu_check_runs_a_real_folder_on_cpu(wan21_dir, tmp_path):
    """`bench/gpu.py --model DIR`: the folder's own weights, 2 training + 2 sampling steps at 49 frames, measured
    against modelled. Here on the CPU with the tiny Wan2.1 folder (no speed figures, so no time ratios)."""
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--model",
                             str(wan21_dir), "--json", str(out)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "full" and data["clip"].startswith("49x") and not data["picked_by_plan"]
    assert data["train"]["s_per_step"] > 0 and data["sample"]["s_per_step"] > 0
    assert data["measured_over_modelled"]["train_gib"] > 0 and data["measured_over_modelled"]["train_s"] is None
    assert "| train peak GiB |" in result.stdout
