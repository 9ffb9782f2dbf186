"""The toy world's pretraining pieces on a few tiny scenes: encoding, one step, the propagation diagnostic."""

from __future__ import annotations

import math

import pytest
import torch

from loraedit.toyworld import models, pretrain
from loraedit.toyworld.codec import fit_codec, psnr
from loraedit.toyworld.pretrain_checkpoint import switch_levels, work_levels
from loraedit.toyworld.pretrain_data import Encoded, level_of, moving_cells, parse_levels
from loraedit.toyworld.pretrain_export import hours_spent
from loraedit.toyworld.pretrain_objective import (flow_errors, heldout_loss, noise_levels, propagation_errors,
                                                  train_step)
from loraedit.toyworld.scenes import generate


@pytest.fixture(scope="module")
def encoded():
    torch.manual_seed(0)
    videos = [generate(seed).video for seed in range(4)]
    codec = fit_codec(videos, spatial=4)
    data = {"videos": torch.stack([((v + 1) * 127.5).round().to(torch.uint8) for v in videos]),
            "captions": [f"scene {i}" for i in range(4)]}
    parts = models.build_world_components(seed=0)
    return parts, Encoded(parts, codec, data)


def test_encoded_scenes_carry_the_standard_i2v_condition(encoded):
    _, enc = encoded
    assert enc.latents.shape == (4, 16, 5, 24, 24)  # 17 frames -> 1 + 4 latent frames, 96 px / 4
    mask = enc.conditions[:, :4]
    assert torch.all(mask[:, :, 0] == 1) and torch.all(mask[:, :, 1:] == 0)  # frame 0 known, the rest generated
    assert enc.texts.shape[0] == 5  # four captions and the empty one for caption dropout


def test_a_mirrored_clip_is_trained_with_its_mirrored_caption_and_image(encoded):
    """Training mirrors half the clips left-right; a named heading must turn with the clip ("moving left" ->
    "moving right"), and CLIP must see the mirrored frame 0, or the caption contradicts the motion."""
    import copy

    from loraedit.toyworld.scene_captions import mirror_caption

    assert mirror_caption("a red star moving up left and a blue circle moving right on grass.") == \
        "a red star moving up right and a blue circle moving left on grass."
    _, enc = encoded
    assert torch.equal(enc.texts_mirrored, enc.texts)  # "scene i": nothing to mirror
    assert enc.images_mirrored.shape == enc.images.shape and not torch.equal(enc.images_mirrored, enc.images)
    marked = copy.copy(enc)
    marked.texts_mirrored, marked.images_mirrored = enc.texts + 100, enc.images + 100
    seen = {}

    def spy(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict):
        seen.update(cond=hidden_states[:, 16:], text=encoder_hidden_states, image=encoder_hidden_states_image)
        return (torch.zeros_like(hidden_states[:, :16]),)

    idx = torch.arange(4).repeat(4)
    flow_errors(spy, marked, idx, torch.Generator().manual_seed(3), dropout=0.0)
    flipped = [not torch.equal(seen["cond"][i], enc.conditions[j]) for i, j in enumerate(idx.tolist())]
    assert 0 < sum(flipped) < len(idx)
    for i, j in enumerate(idx.tolist()):
        offset = 100 if flipped[i] else 0
        assert torch.equal(seen["text"][i], enc.texts[j] + offset)
        assert torch.equal(seen["image"][i], enc.images[j] + offset)


def test_a_training_step_lowers_the_loss_on_its_batch(encoded):
    parts, enc = encoded
    transformer = parts["transformer"]
    opt = torch.optim.AdamW(transformer.parameters(), lr=1e-3)
    idx = torch.arange(2)
    losses = []
    for _ in range(3):
        loss = train_step(transformer, enc, idx, torch.Generator().manual_seed(0), dropout=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_moving_cells_mark_where_a_square_went_and_nothing_else():
    clip = torch.zeros(1, 3, 17, 32, 32)
    for t in range(17):  # a bright 4-px square moving right 1 px a frame along rows 8-11
        clip[0, :, t, 8:12, 2 + t:6 + t] = 1.0
    cells = moving_cells(clip, spatial=4)
    assert cells.shape == (1, 1, 5, 8, 8)
    assert not cells[:, :, 0].any()  # latent frame 0 is given, never moving
    assert cells[0, 0, 1:, 2].any(-1).all()  # the square's row band moved in every later latent frame
    assert not cells[0, 0, :, :2].any() and not cells[0, 0, :, 3:].any()  # rows it never touched did not
    assert cells[0, 0, 4, 2, 5]  # by the last latent frame it reached x = 14..21 (cells 3-5)


def test_motion_weight_raises_the_share_of_moving_cells_and_zero_is_the_plain_mean(encoded):
    parts, enc = encoded
    transformer, idx = parts["transformer"], torch.arange(4)
    with torch.no_grad():
        plain = train_step(transformer, enc, idx, torch.Generator().manual_seed(3), dropout=0.0)
        same = train_step(transformer, enc, idx, torch.Generator().manual_seed(3), dropout=0.0, motion_weight=0.0)
        weighted = train_step(transformer, enc, idx, torch.Generator().manual_seed(3), dropout=0.0,
                              motion_weight=1e6)
        errors, moving = flow_errors(transformer, enc, idx, torch.Generator().manual_seed(3), dropout=0.0)
    held = heldout_loss(transformer, enc)
    assert set(held) == {"all", "moving"}
    assert enc.moving.any() and not enc.moving.all()  # the scenes' objects move over a still background
    assert torch.equal(plain, same)
    assert held["moving"] != held["all"]
    moving_mean = (errors * moving).sum() / (moving.float().sum() * errors.shape[1])
    # With a huge weight the loss is the moving cells' mean, not the plain one.
    assert weighted.item() == pytest.approx(moving_mean.item(), rel=1e-3)
    assert abs(moving_mean.item() - plain.item()) > 1e-3


def test_propagation_errors_compare_each_latent_frame_with_predicting_zeros(encoded):
    parts, enc = encoded
    report = propagation_errors(parts["transformer"], enc, sigmas=(0.1, 1.0))
    assert set(report) == {"zero_prediction", "sigma 0.1", "sigma 1.0", "moving zero_prediction",
                           "moving sigma 0.1", "moving sigma 1.0"}
    assert all(len(v) == 5 for v in report.values())
    # At low noise the clean latent is nearly visible: far below the latent's own energy.
    assert all(e < z for e, z in zip(report["sigma 0.1"][1:], report["zero_prediction"][1:]))
    # Latent frame 0 never moves, so its moving-cell errors are empty (0); later frames' cells are objects.
    assert report["moving sigma 1.0"][0] == 0 and report["moving zero_prediction"][0] == 0
    assert all(z > 0 for z in report["moving zero_prediction"][1:])


def test_hours_spent_counts_gaps_within_runs_and_one_interval_per_restart():
    log = [{"time": "2026-11-26 03:00"}, {"time": "2026-11-26 03:05"}, {"time": "2026-11-26 05:00"}]
    assert hours_spent(log, 5.0) == pytest.approx(15 / 60)


def test_noise_levels_shift_towards_high_noise_and_one_is_no_shift():
    plain = noise_levels(1000, torch.Generator().manual_seed(0))
    same = noise_levels(1000, torch.Generator().manual_seed(0), shift=1.0)
    shifted = noise_levels(1000, torch.Generator().manual_seed(0), shift=3.0)
    assert torch.equal(plain, same)
    assert torch.all(shifted >= plain) and torch.all((shifted > 0) & (shifted < 1))
    assert (shifted > 0.8).float().mean() > 2 * (plain > 0.8).float().mean()


def test_a_balanced_codec_gives_frame_0_the_spread_of_later_frames_and_decodes_as_well():
    videos = [generate(seed).video for seed in range(6)]
    batch = torch.stack(videos).permute(0, 2, 1, 3, 4)
    plain, balanced = fit_codec(videos, spatial=4), fit_codec(videos, spatial=4, balance_first_frame=True)

    def spreads(codec):
        z = codec.encode(batch).latent_dist.mode()
        return z[:, :, 0].std(dim=(0, 2, 3)), z[:, :, 1:].std(dim=(0, 2, 3, 4))

    first, later = spreads(plain)
    assert float((first / later).mean()) < 0.7  # the imbalance this option exists for
    first, later = spreads(balanced)
    assert torch.allclose(first, later, rtol=1e-3)
    reconstruct = [psnr(c.decode(c.encode(batch).latent_dist.mode()).sample, batch) for c in (plain, balanced)]
    assert abs(reconstruct[0] - reconstruct[1]) < 0.2, reconstruct


def test_levels_cycle_by_seed_and_a_work_keeps_the_levels_it_started_with(tmp_path):
    import json

    assert [level_of(s, (1, 1, 2)) for s in range(6)] == [1, 1, 2, 1, 1, 2]
    assert parse_levels("1,1,2") == (1, 1, 2)
    for bad in ("", "1,x", "4"):
        with pytest.raises(SystemExit, match="--levels"):
            parse_levels(bad)
    assert work_levels(tmp_path, None) == (3,)  # a new work without --levels: the first world
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps({"step": 5, "levels": [1, 1, 2]}))
    assert work_levels(tmp_path, None) == (1, 1, 2)  # resumed, exported and previewed on its own world
    with pytest.raises(SystemExit, match="trained on levels 1,1,2"):
        work_levels(tmp_path, "3")
    # ... unless the run is switched to another world on purpose: recorded with the step it happened at
    assert switch_levels(tmp_path, "0") == (0,)
    assert work_levels(tmp_path, None) == (0,)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["worlds"] == [{"from_step": 0, "levels": [1, 1, 2]}, {"from_step": 5, "levels": [0]}]
    with pytest.raises(SystemExit, match="no checkpoint"):
        switch_levels(tmp_path / "new", "0")


def test_a_run_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
    """Two short runs with a checkpoint between them end where one run of the same steps ends (the device
    path moves tensors but draws every random number on the CPU, so a GPU resume continues the same run)."""
    import json

    from safetensors.torch import load_file

    monkeypatch.setattr(pretrain, "render_dataset", lambda seeds, cache, levels=(3,): _tiny_dataset(min(len(seeds), 4)))
    common = ["--scenes", "4", "--codec-scenes", "4", "--batch", "2", "--total-steps", "50", "--threads", "1",
              "--levels", "1,2", "--device", "cpu"]
    pretrain.main(["--work", str(tmp_path / "a"), "--steps", "3", *common])
    pretrain.main(["--work", str(tmp_path / "a"), "--steps", "3", *common])  # resumed from the checkpoint
    pretrain.main(["--work", str(tmp_path / "b"), "--steps", "6", *common])  # in one go
    a, b = (json.loads((tmp_path / w / "checkpoint" / "state.json").read_text()) for w in "ab")
    assert a["step"] == b["step"] == 6 and a["levels"] == [1, 2]
    wa, wb = (load_file(str(tmp_path / w / "checkpoint" / "transformer.safetensors")) for w in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _tiny_dataset(n: int) -> dict:
    videos = [generate(seed, level=1).video for seed in range(n)]
    return {"videos": torch.stack([((v + 1) * 127.5).round().to(torch.uint8) for v in videos]),
            "captions": [f"scene {i}" for i in range(n)]}
