"""The training loop: it learns, it resumes exactly, it refuses silent mistakes (512 text tokens, NaN)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from loraedit import appearance, conditioning, lora_io
from loraedit.encoding import Encoder
from loraedit.backends.base import Expert
from loraedit.backends.wan import TEXT_TOKENS, load_wan
from loraedit.errors import InputError, LoraEditError
from loraedit.checkpoints import latest_checkpoint
from loraedit.train import TrainConfig, flow_matching_loss, plan_phases, sample_sigma, train_lora

CFG = TrainConfig(rank=4, alpha=4.0, learning_rate=1e-3, stage1_steps=6, stage2_steps=4, stage2_repeats=2,
                  checkpoint_every=2)


def _encoded(backend, clip, edited=True):
    enc = Encoder(backend, None, "maxpool")
    video, masks = clip.video[:9], clip.masks[:9]
    motion = [enc.sample(conditioning.motion_sample(video, masks, "p3rs0n, a red square"))]
    frames = [enc.sample(conditioning.appearance_sample(video[4], clip.edited_video[4], masks[4], "p3rs0n,"))]
    return motion, frames if edited else []


def _final_lora(path):
    state, _ = lora_io.read_lora(path)
    return state


class _Crash(Exception):
    pass


def _crash_after(backend, calls):
    """Make the backend's forward raise on call number `calls` + 1, like a killed process."""
    original, count = backend.predict, [0]

    def predict(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise _Crash
        return original(*args, **kwargs)

    backend.predict = predict


def test_flow_matching_loss_is_mse_to_velocity():
    x0, noise = torch.ones(1, 2, 1, 2, 2), torch.zeros(1, 2, 1, 2, 2)
    assert flow_matching_loss(-torch.ones_like(x0), x0, noise).item() == 0.0
    assert flow_matching_loss(torch.zeros_like(x0), x0, noise).item() == pytest.approx(1.0)


def test_sigma_sampling_stays_in_the_expert_range():
    g = torch.Generator().manual_seed(0)
    for how in ("uniform", "logit-normal", "shifted"):
        values = [float(sample_sigma(g, 0.9, 1.0, how, 3.0)) for _ in range(200)]
        assert min(values) >= 0.9 and max(values) <= 1.0
    with pytest.raises(InputError):
        sample_sigma(g, 0, 1, "cosine", 1.0)


def test_phases_per_expert_and_stage(wan22_dir):
    backend = load_wan(wan22_dir)
    phases = plan_phases(backend.experts, 1, 1, CFG)
    assert [(p.stage, p.expert.name) for p in phases] == [
        (1, "transformer"), (2, "transformer"), (1, "transformer_2"), (2, "transformer_2")]
    assert phases[1].schedule == (0, 1, 1)  # the video once, the edited frame stage2_repeats times
    assert phases[0].expert.sigma_low == 0.9 and phases[2].expert.sigma_high == 0.9


def test_text_embeddings_are_exactly_512_tokens(wan21_dir):
    backend = load_wan(wan21_dir)
    emb = backend.encode_prompt("p3rs0n, a red square moving right")
    assert emb.shape == (TEXT_TOKENS, 32)
    assert TEXT_TOKENS == 512  # Wan's attention processor hard-codes the image/text split at 512
    tokens = len("p3rs0n , a red square moving right".split()) + 1  # + </s>
    assert emb[tokens:].abs().sum() == 0  # zero padding after the prompt and its </s>
    assert (emb[:tokens].abs().sum(dim=1) > 0).all()  # every real token (</s> included) carries an embedding


def test_training_reduces_loss_and_writes_lora(wan21_dir, toy_clip, tmp_path):
    backend = load_wan(wan21_dir)
    motion, _ = _encoded(backend, toy_clip, edited=False)
    cfg = replace(CFG, stage1_steps=40, learning_rate=3e-3, checkpoint_every=0)
    paths = train_lora(backend, motion, [], cfg, tmp_path, progress=False)
    import json

    losses = json.loads((tmp_path / "train_log.json").read_text())["losses"][0]
    assert len(losses) == 40
    assert sum(losses[-10:]) < sum(losses[:10])  # it learns the clip
    assert paths["transformer"].is_file() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("crash_at", [3, 7, 9])  # mid stage 1, just into stage 2, mid stage 2
def test_resume_after_crash_gives_the_same_lora(wan21_dir, toy_clip, tmp_path, crash_at):
    reference = load_wan(wan21_dir)
    motion, edited = _encoded(reference, toy_clip)
    train_lora(reference, motion, edited, CFG, tmp_path / "ref", progress=False)

    crashed = load_wan(wan21_dir)
    _crash_after(crashed, crash_at)
    with pytest.raises(_Crash):
        train_lora(crashed, motion, edited, CFG, tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is not None
    with pytest.raises(InputError, match="`resume`"):  # never silently restarts over a checkpoint
        train_lora(load_wan(wan21_dir), motion, edited, CFG, tmp_path / "run", progress=False)
    train_lora(load_wan(wan21_dir), motion, edited, CFG, tmp_path / "run", resume=True, progress=False)

    ref, got = _final_lora(tmp_path / "ref" / "lora.safetensors"), _final_lora(tmp_path / "run" / "lora.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_resume_refuses_other_inputs(wan21_dir, toy_clip, tmp_path):
    backend = load_wan(wan21_dir)
    motion, edited = _encoded(backend, toy_clip)
    _crash_after(backend, 3)
    with pytest.raises(_Crash):
        train_lora(backend, motion, edited, CFG, tmp_path, progress=False)
    with pytest.raises(InputError, match="other inputs or settings"):
        train_lora(load_wan(wan21_dir), motion, edited, replace(CFG, learning_rate=5e-4), tmp_path, resume=True,
                   progress=False)


def test_nan_loss_stops_with_a_message(wan21_dir, toy_clip, tmp_path):
    backend = load_wan(wan21_dir)
    motion, _ = _encoded(backend, toy_clip, edited=False)
    original = backend.predict
    backend.predict = lambda *a, **k: original(*a, **k) * float("nan")
    with pytest.raises(LoraEditError, match="loss became nan"):
        train_lora(backend, motion, [], CFG, tmp_path, progress=False)


def test_two_experts_each_train_their_own_lora(wan22_dir, toy_clip, tmp_path):
    backend = load_wan(wan22_dir)
    motion, _ = _encoded(backend, toy_clip, edited=False)
    paths = train_lora(backend, motion, [], replace(CFG, checkpoint_every=0), tmp_path, progress=False)
    assert set(paths) == {"transformer", "transformer_2"}
    a, b = _final_lora(paths["transformer"]), _final_lora(paths["transformer_2"])
    key = next(k for k in a if "lora_B" in k)
    assert a[key].abs().sum() > 0 and b[key].abs().sum() > 0 and not torch.equal(a[key], b[key])


def test_stage1_is_reused_when_only_the_edited_frames_change(wan21_dir, toy_clip, tmp_path):
    import json

    backend = load_wan(wan21_dir)
    motion, frames = _encoded(backend, toy_clip)
    video, masks = toy_clip.video[:9], toy_clip.masks[:9]
    other = [Encoder(backend, None, "maxpool").sample(
        conditioning.appearance_sample(video[6], toy_clip.edited_video[6], masks[6], "p3rs0n,"))]
    cfg, cache = replace(CFG, checkpoint_every=0), tmp_path / "stage1"
    train_lora(backend, motion, frames, cfg, tmp_path / "first", progress=False, stage1_cache=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1

    train_lora(load_wan(wan21_dir), motion, other, cfg, tmp_path / "fresh", progress=False)  # trains both stages
    reusing = load_wan(wan21_dir)
    _crash_after(reusing, cfg.stage2_steps)  # any stage-1 step would be one call too many
    train_lora(reusing, motion, other, cfg, tmp_path / "reused", progress=False, stage1_cache=cache)

    fresh, reused = (_final_lora(tmp_path / d / "lora.safetensors") for d in ("fresh", "reused"))
    for key in fresh:
        assert torch.equal(fresh[key], reused[key]), key
    logs = [json.loads((tmp_path / d / "train_log.json").read_text()) for d in ("fresh", "reused")]
    assert logs[0]["losses"] == logs[1]["losses"]
    # Other stage-1 settings are another stage 1: trained, and stored beside the first.
    train_lora(load_wan(wan21_dir), motion, [], replace(cfg, stage1_steps=3), tmp_path / "other", progress=False,
               stage1_cache=cache)
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_on_step_reports_each_step_with_the_losses_so_far(wan21_dir, toy_clip, tmp_path):
    """The live display's hook: one report before the first step and after each, in train_log.json's layout."""
    import json

    from loraedit.report import loss_curve_svg

    backend = load_wan(wan21_dir)
    motion, edited = _encoded(backend, toy_clip)
    seen = []
    train_lora(backend, motion, edited, replace(CFG, checkpoint_every=0), tmp_path, progress=False,
               on_step=seen.append)
    total = CFG.stage1_steps + CFG.stage2_steps
    assert [p.done for p in seen] == list(range(total + 1)) and all(p.total == total for p in seen)
    assert seen[0].losses == ((), ()) and len(seen[3].losses[0]) == 3
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert seen[-1].log() == {"phases": log["phases"], "losses": log["losses"]}
    assert "<polyline" in loss_curve_svg(seen[3].log())  # the curve can be drawn mid-run


def _variants(backend, toy_clip, count):
    enc = Encoder(backend, None, "maxpool")
    video, masks = toy_clip.video[:9], toy_clip.masks[:9]
    motion = conditioning.motion_sample(video, masks, "p3rs0n, a red square")
    return [[enc.sample(v) for v in appearance.appearance_variants(motion, count, seed=0)]]


def test_appearance_augment_trains_on_the_variants_and_resumes_exactly(wan21_dir, toy_clip, tmp_path):
    cfg = replace(CFG, appearance_augment=3)
    reference = load_wan(wan21_dir)
    motion, edited = _encoded(reference, toy_clip)
    variants = _variants(reference, toy_clip, 3)
    seen = []
    original = reference.predict

    def spy(transformer, noisy, condition, *args):
        seen.append(condition)
        return original(transformer, noisy, condition, *args)

    reference.predict = spy
    train_lora(reference, motion, edited, cfg, tmp_path / "ref", progress=False, motion_variants=variants)
    used = {next(i for i, v in enumerate(variants[0]) if torch.equal(c[0], v.condition)) for c in seen
            if any(torch.equal(c[0], v.condition) for v in variants[0])}
    assert len(used) >= 2  # several variants were drawn
    assert not any(torch.equal(c[0], motion[0].condition) for c in seen)  # never the original appearance
    with pytest.raises(ValueError, match="variants"):
        train_lora(load_wan(wan21_dir), motion, edited, cfg, tmp_path / "bad", progress=False)

    crashed = load_wan(wan21_dir)
    _crash_after(crashed, 5)
    with pytest.raises(_Crash):
        train_lora(crashed, motion, edited, cfg, tmp_path / "run", progress=False, motion_variants=variants)
    train_lora(load_wan(wan21_dir), motion, edited, cfg, tmp_path / "run", resume=True, progress=False,
               motion_variants=variants)
    ref, got = _final_lora(tmp_path / "ref" / "lora.safetensors"), _final_lora(tmp_path / "run" / "lora.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_stage2_runs_the_authors_ten_epochs_unless_steps_are_given():
    from loraedit.train import stage2_steps

    assert stage2_steps(TrainConfig(), 1, 1) == 100  # (1 + 9) x 10: the authors' one edited frame
    assert stage2_steps(TrainConfig(), 1, 2) == 190  # (1 + 18) x 10
    assert stage2_steps(TrainConfig(stage2_epochs=3), 4, 1) == 39  # low-cost: 4 clips + 9, three epochs
    assert stage2_steps(TrainConfig(stage2_steps=25), 1, 2) == 25
    phases = plan_phases([Expert("transformer", 0.0, 1.0)], 1, 2, TrainConfig())
    assert [p.steps for p in phases] == [100, 190]
