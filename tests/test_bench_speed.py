"""`make bench` (bench/speed.py) runs end to end at its smallest, so a refactor cannot break it unseen.

The numbers it prints are measured side by side in one run and belong to docs/PERFORMANCE.md, not here:
this only checks that every measurement is taken and that the activation model still matches the count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_speed_bench_measures_every_variant_at_its_smallest(tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), "--model", "toy-random",
                             "--train-steps", "4", "--naive-steps", "4", "--sample-steps", "4", "--rounds", "1",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["train"]) >= {"naive", "loraedit"} and set(data["sample"]) >= {"naive", "loraedit"}
    assert all(v["s_per_step"] > 0 for v in list(data["train"].values()) + list(data["sample"].values()))
    for check in data["model_check"]["at_clip"].values():  # the cost model against counted activation bytes
        assert 0.85 < check["ratio"] < 1.15  # textbook attention on the tiny random model: 0.90


def test_too_few_steps_to_time_are_refused_in_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), "--train-steps", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "at least 4" in result.stderr
