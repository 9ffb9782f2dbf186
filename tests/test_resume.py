"""Crashes lose nothing: SIGKILL at several points then --resume gives the uninterrupted run's LoRA, bit for bit.

The kill test runs the real command line in subprocesses and kills them with SIGKILL (no cleanup, no
handler) as soon as a given checkpoint exists, so the kill lands wherever the process happens to be:
inside a step, while writing the next checkpoint, or while pruning old ones. The in-process tests
cover what a kill cannot aim at: Ctrl-C, a diverging loss, a damaged checkpoint, a finished run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraedit import conditioning, lora_io
from loraedit.encoding import Encoder
from loraedit.backends.wan import load_wan
from loraedit.errors import InputError, Interrupted, LoraEditError
from loraedit.backends.wan import Expert
from loraedit.checkpoints import latest_checkpoint
from loraedit.train import TrainConfig, _stop_if_diverged, plan_phases, train_lora

# ---- SIGKILL at several points, then --resume ----------------------------------------------------------

#: 4 stage-1 steps, then 3 stage-2 steps on an edited frame; a checkpoint after every step
#: (ckpt-0000004 is the stage boundary). Gradient checkpointing off: same result, faster.
TRAIN_ARGS = ["--frames", "9", "--size", "64x64", "--rank", "4", "--lr", "1e-3", "--stage1-steps", "4",
              "--stage2-steps", "3", "--stage2-repeats", "2", "--checkpoint-every", "1",
              "--no-gradient-checkpointing", "--quiet"]
KILL_AFTER = (2, 4, 5)  # mid stage 1; at the stage boundary (killed in stage 2's first step); mid stage 2


def _train_command(model: Path, files: dict, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "loraedit.cli", "train", "--model", str(model), "--video", str(files["video"]),
            "--mask", str(files["mask"]), "--edited-frame", f"8:{files['edited8']}", "--out", str(out),
            "--cache-dir", str(cache), *TRAIN_ARGS, *extra]


def _env(tmp_path: Path) -> dict:
    # One thread each: the reference runs beside the killed runs, and all runs compute identically.
    return {**os.environ, "LORAEDIT_CACHE": str(tmp_path / "home-cache"), "OMP_NUM_THREADS": "1"}


def _checkpoint_steps(out: Path) -> list[int]:
    try:  # the running process renames and deletes in this folder while we look
        names = [p.name for p in (out / "checkpoints").iterdir() if (p / "state.json").is_file()]
    except FileNotFoundError:
        return []
    return [int(n[5:]) for n in names if re.fullmatch(r"ckpt-\d{7}", n)]


def _kill_after_checkpoint(command: list[str], env: dict, out: Path, step: int, timeout: float = 240) -> None:
    """Start `command`, SIGKILL it as soon as a checkpoint of `step` or later exists."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not any(s >= step for s in _checkpoint_steps(out)):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (code {proc.returncode}) before checkpoint {step}: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint {step} after {timeout} s")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_sigkill_at_several_points_then_resume_gives_the_uninterrupted_lora(wan21_dir, clip_files, tmp_path):
    env = _env(tmp_path)
    reference = subprocess.Popen(_train_command(wan21_dir, clip_files, tmp_path / "ref", tmp_path / "cache-ref"),
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out, cache = tmp_path / "run", tmp_path / "cache-run"
    command = _train_command(wan21_dir, clip_files, out, cache)
    for i, step in enumerate(KILL_AFTER):
        _kill_after_checkpoint(command + (["--resume"] if i else []), env, out, step)
        assert latest_checkpoint(out / "checkpoints") is not None
        assert not (out / "lora.safetensors").exists()
    # What a kill may leave behind, or worse: a half-written checkpoint folder and a half-deleted old one.
    (out / "checkpoints" / ".tmp-ckpt-0000006").mkdir(exist_ok=True)
    (out / "checkpoints" / ".tmp-ckpt-0000006" / "transformer.safetensors").write_bytes(b"\x00" * 10)
    (out / "checkpoints" / ".old-ckpt-0000003").mkdir(exist_ok=True)

    finished = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-2000:]
    _, ref_err = reference.communicate(timeout=240)
    assert reference.returncode == 0, ref_err.decode()[-2000:]

    ref, got = _lora_tensors(tmp_path / "ref" / "lora.safetensors"), _lora_tensors(out / "lora.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    ref_log, log = (json.loads((d / "train_log.json").read_text()) for d in (tmp_path / "ref", out))
    assert log["losses"] == ref_log["losses"] and log["run_key"] == ref_log["run_key"]
    assert not (out / "checkpoints").exists() and not list(out.glob(".*"))  # nothing half-written is left


# ---- in-process: Ctrl-C, divergence, damage, a finished run --------------------------------------------

CFG = TrainConfig(rank=4, alpha=4.0, learning_rate=1e-3, stage1_steps=3, stage2_steps=2, stage2_repeats=2,
                  checkpoint_every=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model gains nothing from a second thread, and loses much when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoded(wan21_dir, toy_clip):
    backend = load_wan(wan21_dir)
    enc = Encoder(backend, None, "maxpool")
    video, masks = toy_clip.video[:9], toy_clip.masks[:9]
    motion = [enc.sample(conditioning.motion_sample(video, masks, "p3rs0n, a red square"))]
    edited = [enc.sample(conditioning.appearance_sample(video[4], toy_clip.edited_video[4], masks[4], "p3rs0n,"))]
    return motion, edited


@pytest.fixture(scope="module")
def reference(wan21_dir, encoded, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    train_lora(load_wan(wan21_dir), *encoded, CFG, out, progress=False)
    return out


def _failing_at(backend, call: int, error: BaseException):
    """The backend's forward raises `error` on call number `call` (1-based), like a crash inside a step."""
    original, count = backend.predict, [0]

    def predict(*args, **kwargs):
        count[0] += 1
        if count[0] == call:
            raise error
        return original(*args, **kwargs)

    backend.predict = predict
    return backend


def _same_lora(a: Path, b: Path) -> bool:
    x, y = _lora_tensors(a / "lora.safetensors"), _lora_tensors(b / "lora.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_ctrl_c_saves_says_how_to_resume_and_resumes_exactly(wan21_dir, encoded, reference, tmp_path):
    """Interrupted right after step 2's checkpoint: the checkpoint of the same step is replaced, never edited."""
    backend = _failing_at(load_wan(wan21_dir), 3, KeyboardInterrupt())
    with pytest.raises(Interrupted, match="run the same command with `resume`") as info:
        train_lora(backend, *encoded, CFG, tmp_path, progress=False)
    assert info.value.exit_code == 130
    assert latest_checkpoint(tmp_path / "checkpoints").name == "ckpt-0000002"
    train_lora(load_wan(wan21_dir), *encoded, CFG, tmp_path, resume=True, progress=False)
    assert _same_lora(reference, tmp_path)


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_divergence_stops_before_the_update_and_keeps_the_last_good_checkpoint(wan21_dir, encoded, tmp_path,
                                                                              monkeypatch, what):
    backend = load_wan(wan21_dir)
    if what == "loss":
        original, count = backend.predict, [0]

        def predict(*args, **kwargs):
            count[0] += 1
            return original(*args, **kwargs) * (float("inf") if count[0] == 3 else 1.0)

        backend.predict = predict
    else:
        real_clip, calls = torch.nn.utils.clip_grad_norm_, [0]

        def clip(params, max_norm):
            calls[0] += 1
            norm = real_clip(params, max_norm)
            return norm * float("inf") if calls[0] == 3 else norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    with pytest.raises(LoraEditError, match=rf"step 3 .*the {what} became (inf|nan).*\(ckpt-0000002\) is kept"):
        train_lora(backend, *encoded, CFG, tmp_path, progress=False)
    kept = latest_checkpoint(tmp_path / "checkpoints")
    assert kept.name == "ckpt-0000002"
    assert all(torch.isfinite(t).all() for t in load_file(str(kept / "transformer.safetensors")).values())
    assert not (tmp_path / "lora.safetensors").exists()


def test_exploding_loss_rule(tmp_path):
    phase = plan_phases([Expert("transformer", 0.0, 1.0)], 1, 0, CFG)[0]
    history = [1.0, 2.0, 1.5, 0.5, 1.2, 1.1, 0.9, 1.3]
    _stop_if_diverged("loss", torch.tensor(90.0), history, 9, phase, tmp_path, CFG)  # large, not exploded
    _stop_if_diverged("loss", torch.tensor(1e6), history[:-1], 9, phase, tmp_path, CFG)  # too little history
    with pytest.raises(LoraEditError, match=r"loss exploded to 120, over 100x its median.*no checkpoint"):
        _stop_if_diverged("loss", torch.tensor(120.0), history, 9, phase, tmp_path, CFG)


def test_damaged_checkpoint_is_named_not_a_traceback(wan21_dir, encoded, tmp_path):
    with pytest.raises(Interrupted):
        train_lora(_failing_at(load_wan(wan21_dir), 4, KeyboardInterrupt()), *encoded, CFG, tmp_path, progress=False)
    latest = latest_checkpoint(tmp_path / "checkpoints")
    (latest / "transformer.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(InputError, match=f"checkpoint .*{latest.name} is damaged"):
        train_lora(load_wan(wan21_dir), *encoded, CFG, tmp_path, resume=True, progress=False)


def test_resume_after_a_finished_run_reuses_its_lora(wan21_dir, encoded, reference, tmp_path, capsys):
    """An `edit` killed while sampling must not train again on --resume: the finished LoRA is reused."""
    for name in ("lora.safetensors", "lora.safetensors.json", "train_log.json"):
        (tmp_path / name).write_bytes((reference / name).read_bytes())
    backend = _failing_at(load_wan(wan21_dir), 1, AssertionError("trained again"))
    paths = train_lora(backend, *encoded, CFG, tmp_path, resume=True, progress=False)
    assert paths == {"transformer": tmp_path / "lora.safetensors"}
    assert "reusing it" in capsys.readouterr().err
    attached = lora_io.lora_state(backend.pipe.transformer)
    saved, _ = lora_io.read_lora(tmp_path / "lora.safetensors")
    assert all(torch.equal(attached[k], saved[k]) for k in saved)
    # other settings are another run: never reused
    with pytest.raises(AssertionError, match="trained again"):
        train_lora(_failing_at(load_wan(wan21_dir), 1, AssertionError("trained again")), *encoded,
                   replace(CFG, learning_rate=5e-4), tmp_path, resume=True, progress=False)
