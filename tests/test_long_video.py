"""Clips longer than the model's window: the window plan, each window's condition, chaining and colour matching."""

from __future__ import annotations

import json

import pytest
import torch

from loraedit import api, conditioning, media
from loraedit.sampling import PreparedSampling, sample_windows
from loraedit.backends import EncodedSample
from loraedit.cli import main
from loraedit.config import RunOptions, SampleConfig
from loraedit.metrics import edit_colour_error
from loraedit.validate import Clip
from loraedit.long_video import Window, match_colour, plan_windows, window_condition


def test_windows_tile_a_clip_sharing_one_frame():
    assert plan_windows(161, 81) == [Window(0, 81, 1), Window(80, 81, 1)]
    assert [w.start for w in plan_windows(65, 17)] == [0, 16, 32, 48]
    assert plan_windows(17, 17) == [Window(0, 17, 1)]
    assert plan_windows(9, 17) == [Window(0, 9, 1)]


def test_the_last_window_moves_back_and_is_given_more():
    windows = plan_windows(40, 17)
    assert [(w.start, w.given) for w in windows] == [(0, 1), (16, 1), (23, 10)]
    assert windows[-1].stop == 40


def test_a_wider_overlap_gives_each_window_more_frames():
    windows = plan_windows(41, 17, overlap=5)
    assert [(w.start, w.given) for w in windows] == [(0, 1), (12, 5), (24, 5)]


@pytest.mark.parametrize("window, overlap", [(16, 1), (3, 1), (17, 0), (17, 14)])
def test_bad_windows_are_refused(window, overlap):
    with pytest.raises(ValueError):
        plan_windows(100, window, overlap)


def _clip(frames=33, size=16):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(frames, 3, size, size, generator=g) * 2 - 1
    masks = torch.zeros(frames, size, size)
    masks[:, 4:10, 4:10] = 1
    return video, masks


def test_the_first_window_is_the_single_window_condition():
    video, masks = _clip(17)
    edited = torch.zeros(3, 16, 16)
    sample = window_condition("mask-aware", video, masks, Window(0, 17, 1), edited[None], "p")
    reference = conditioning.mask_aware_condition(video, masks, edited, "p")
    assert torch.equal(sample.condition_video, reference.condition_video)
    assert torch.equal(sample.keep_mask, reference.keep_mask)


def test_a_later_window_keeps_its_given_frames_whole_and_the_background_elsewhere():
    video, masks = _clip(33)
    given = torch.full((5, 3, 16, 16), 0.5)
    sample = window_condition("mask-aware", video, masks, Window(16, 17, 5), given, "p")
    assert torch.equal(sample.keep_mask[:5], torch.ones(5, 16, 16))
    assert torch.equal(sample.condition_video[:5], given)
    assert torch.equal(sample.keep_mask[5:], 1 - masks[21:33])  # the background of the window's own frames
    assert torch.equal(sample.condition_video[5:], video[21:33] * (1 - masks[21:33])[:, None])
    with pytest.raises(ValueError, match="takes 5 given"):
        window_condition("mask-aware", video, masks, Window(16, 17, 5), given[:1], "p")


def test_colour_matching_moves_only_the_edit_region_to_the_reference_statistics():
    video, masks = _clip(3)
    reference = torch.zeros(3, 16, 16)
    reference[0, 4:10, 4:10] = torch.linspace(-0.5, 0.5, 36).view(6, 6)
    matched = match_colour(video, masks, reference, masks[0])
    inside = matched[:, :, 4:10, 4:10].flatten(2)
    ref = reference[:, 4:10, 4:10].flatten(1)
    assert torch.allclose(inside.mean(2), ref.mean(1).expand(3, 3), atol=1e-5)
    assert torch.allclose(inside.std(2, unbiased=False)[:, 0], ref.std(1, unbiased=False)[0].expand(3), atol=1e-4)
    outside = masks[:, None].expand_as(video) == 0
    assert torch.equal(matched[outside], video[outside])
    assert torch.equal(match_colour(video, masks, reference, torch.zeros(16, 16)), video)


def test_colour_error_measures_the_mean_colour_inside_the_mask():
    video, masks = _clip(4)
    assert edit_colour_error(video, video, masks) == 0
    shifted = video.clone()
    shifted[:, 0] += 0.2  # red up by 0.2 in [-1, 1] = 25.5 in 0-255
    assert edit_colour_error(shifted, video, masks) == pytest.approx(25.5, rel=1e-4)


class _RecordingBackend:
    """Stands in for a model: the condition is the condition video itself; each window "generates" its
    condition with the unknown pixels filled by the window's index, so the chain can be followed."""

    uses_clip = False
    prompt_sees_image = False

    def __init__(self):
        self.conditions = []

    def fingerprint(self):
        return "recording"

    def condition_tensor(self, sample, mask_mode="maxpool"):
        return torch.cat([sample.condition_video, sample.keep_mask[:, None]], dim=1)

    def generate(self, condition, first_frame, text, negative, image, *, seed, **_):
        self.conditions.append(condition)
        video, keep = condition[:, :3], condition[:, 3:]
        return video * keep + (1 - keep) * (seed + 1) / 10


def test_chained_sampling_gives_each_window_the_frames_generated_before_it():
    video, masks = _clip(33)
    backend = _RecordingBackend()
    first = torch.full((3, 16, 16), -0.3)
    windows = plan_windows(33, 17)
    cond0 = window_condition("mask-aware", video, masks, windows[0], first[None], "p")
    encoded = EncodedSample("w0", backend.condition_tensor(cond0), torch.zeros(1, 4), None, None)
    prepared = PreparedSampling(Clip(video, masks, 16.0, video, masks), first, encoded, torch.zeros(1, 4), windows, "p")
    out = sample_windows(backend, prepared, RunOptions(progress=False), SampleConfig(guidance=1.0))
    assert out.shape == video.shape
    assert len(backend.conditions) == 2
    given = backend.conditions[1][0, :3]
    assert torch.equal(given, out[16])  # window 2 starts from window 1's last frame
    assert torch.allclose(out[20, :, 5, 5], torch.full((3,), 0.2))  # filled by window 2 (seed 1)
    assert torch.allclose(out[10, :, 5, 5], torch.full((3,), 0.1))  # filled by window 1 (seed 0)


def test_edit_beyond_the_window_chains_windows_end_to_end(wan21_dir, clip_files, tmp_path):
    out = tmp_path / "long.mp4"
    code = main(["edit", "--model", str(wan21_dir), "--video", str(clip_files["video"]), "--mask",
                 str(clip_files["mask"]), "--cache-dir", str(tmp_path / "cache"), "--frames", "17", "--window", "9",
                 "--window-overlap", "1", "--window-colour-match", "--size", "64x64", "--quiet",
                 "--edited-first-frame", str(clip_files["edited0"]), "--out", str(out), "--stage1-steps", "2",
                 "--rank", "4", "--checkpoint-every", "0", "--steps", "2"])
    assert code == 0
    assert media.read_video(out)[0].shape == (17, 3, 64, 64)
    info = json.loads((api.work_dir_for(out) / "train_info.json").read_text())
    assert info["frames"] == 17
    settings = json.loads(out.with_suffix(".metrics.json").read_text())["settings"]
    assert settings["window"] == 9 and settings["window_overlap"] == 1 and settings["window_colour_match"] is True


def test_a_window_that_is_not_4k_plus_1_is_refused_in_one_line(wan21_dir, clip_files, tmp_path, capsys):
    code = main(["edit", "--model", str(wan21_dir), "--video", str(clip_files["video"]), "--mask",
                 str(clip_files["mask"]), "--frames", "17", "--window", "10", "--size", "64x64", "--quiet",
                 "--edited-first-frame", str(clip_files["edited0"]), "--out", str(tmp_path / "x.mp4")])
    assert code != 0
    err = capsys.readouterr().err
    assert "--window 10 is not 4k+1" in err


def test_training_on_a_long_clip_uses_one_sample_per_window():
    video, masks = _clip(33)
    motion, _ = conditioning.training_samples("mask-aware", video, masks, "p", low_cost_clip_frames=17)
    assert [s.num_frames for s in motion] == [17, 17]
    assert [s.name for s in motion] == ["clip0", "clip16"]
