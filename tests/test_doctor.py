"""`loraedit doctor` runs anywhere (here: a CPU) and says plainly what the machine can run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loraedit import devices, doctor
from loraedit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_on_this_cpu_says_so_plainly(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for item in ("torch", "diffusers", "CUDA build", "GPU", "bf16", "attention", "host memory", "cache disk",
                 "video I/O", "ui extra", "ray"):
        assert re.search(rf"^[ !] {re.escape(item)}\s", out, re.MULTILINE), item
    if devices.detect_gpu() is None:
        assert "! GPU" in out and "verdict: no CUDA GPU here" in out
        assert "--attention auto trains with `native`" in out


def test_doctor_json_has_every_row_and_the_verdict(capsys):
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["item"] for r in data["rows"]} >= {"torch", "GPU", "attention", "host memory"}
    assert data["verdict"]


def test_tested_versions_are_constraints_txt():
    pins = dict(re.findall(r"^([A-Za-z0-9_-]+)==([^\s#]+)", (ROOT / "constraints.txt").read_text(), re.MULTILINE))
    assert {k: pins[k] for k in doctor.TESTED_WITH} == doctor.TESTED_WITH


def test_a_gpu_row_names_the_card_and_what_plan_assumes(monkeypatch):
    """The GPU branch, on a stand-in for an RTX 4090 (no GPU here): its row, bf16 and fp8 rows, the verdict."""
    import torch

    gpu = devices.Gpu("NVIDIA GeForce RTX 4090", 23.6, 22.9, devices.card_for("NVIDIA GeForce RTX 4090"), True)
    monkeypatch.setattr(devices, "detect_gpu", lambda device=None: gpu)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 9))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    rows = {r.item: r for r in doctor.collect()}
    assert rows["GPU"].ok and "RTX 4090, 23.6 GiB, 22.9 GiB free, sm_89" in rows["GPU"].value
    assert "RTX 4090 24GB's figures (165 TFLOP/s bf16)" in rows["GPU"].meaning
    assert rows["fp8"].value == "storage yes; native fp8 matmul yes (sm_89)"
    assert rows["bf16"].ok


@pytest.mark.parametrize("name, key", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100-pcie"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA A100-PCIE-40GB", "a100-40"),
                                       ("NVIDIA L40S", "l40s"), ("NVIDIA L4", "l4"), ("NVIDIA A10", "a10"),
                                       ("NVIDIA RTX A6000", "a6000"), ("NVIDIA RTX 6000 Ada Generation", "rtx6000ada"),
                                       ("NVIDIA H200", "h200"), ("Tesla T4", None)])
def test_cards_are_recognised_by_torchs_name(name, key):
    card = devices.card_for(name)
    assert (card.key if card else None) == key


def test_host_memory_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       131072000 kB\nMemAvailable:    33554432 kB\n")
    assert devices.host_available_gib(meminfo) == 32.0
    assert devices.host_available_gib(tmp_path / "missing") is None
