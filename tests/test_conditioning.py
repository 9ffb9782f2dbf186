"""Tests for loraedit.conditioning: the method's masks, samples and latent layout, with exact values.

The golden tests at the end check that our packing is *identical* to diffusers' own
`WanImageToVideoPipeline.prepare_latents` in the one case diffusers covers (first frame only), and that
the mask-aware pipeline injects a given condition unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loraedit import appearance as A
from loraedit import conditioning as C
from loraedit.backends import wan_layout as L
from loraedit.conditioning import Sample


def distinct_video(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """[T, 3, H, W] in [-1, 1] with no zero pixels, so a blanked pixel (0) is always recognisable."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(t, 3, h, w, generator=g) * 1.8 - 0.9  # in [-0.9, 0.9]
    v = torch.where(v.abs() < 0.05, torch.full_like(v, 0.5), v)
    assert (v != 0).all()
    return v


# ------------------------------------------------------------------------------ masks in pixel space


def test_keep_mask_from_edit_masks_exact_values_and_input_untouched():
    edit = torch.tensor([
        [[1.0, 1.0], [0.0, 1.0]],  # frame 0: ignored, frame 0 is always fully known
        [[1.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [1.0, 1.0]],
    ])
    before = edit.clone()
    keep = C.keep_mask_from_edit_masks(edit)
    expected = torch.tensor([
        [[1.0, 1.0], [1.0, 1.0]],
        [[0.0, 1.0], [1.0, 1.0]],
        [[1.0, 1.0], [0.0, 0.0]],
    ])
    assert keep.dtype == torch.float32
    assert torch.equal(keep, expected)
    assert torch.equal(edit, before), "the caller's edit masks were mutated"
    # writing into the result must not reach the input either (no shared storage)
    keep.fill_(7.0)
    assert torch.equal(edit, before)


def test_keep_mask_from_bool_edit_masks():
    edit = torch.tensor([[[True, False]], [[False, True]]])
    keep = C.keep_mask_from_edit_masks(edit)
    assert keep.dtype == torch.float32
    assert torch.equal(keep, torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]]))
    assert torch.equal(edit, torch.tensor([[[True, False]], [[False, True]]]))


@pytest.mark.parametrize("shape", [(4, 4), (1, 2, 4, 4)])
def test_keep_mask_rejects_non_3d_masks(shape):
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        C.keep_mask_from_edit_masks(torch.zeros(shape))


def test_first_frame_keep_mask():
    keep = C.first_frame_keep_mask(3, 2, 4)
    assert keep.shape == (3, 2, 4)
    assert torch.equal(keep[0], torch.ones(2, 4))
    assert torch.equal(keep[1:], torch.zeros(2, 2, 4))


def test_blank_unknown_zeroes_exactly_the_generated_pixels():
    video = distinct_video(2, 2, 3)
    keep = torch.tensor([
        [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]],
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
    ])
    out = C.blank_unknown(video, keep)
    assert out.shape == video.shape
    for t in range(2):
        for y in range(2):
            for x in range(3):
                for c in range(3):
                    if keep[t, y, x] == 1:
                        assert out[t, c, y, x] == video[t, c, y, x]
                    else:
                        assert out[t, c, y, x] == 0.0
    # the zero count is exactly 3 channels x the number of generated pixels
    assert int((out == 0).sum()) == 3 * int((keep == 0).sum())


def test_blank_unknown_rejects_mismatched_sizes():
    video = torch.ones(3, 3, 4, 4)
    with pytest.raises(ValueError, match="do not match"):
        C.blank_unknown(video, torch.ones(2, 4, 4))  # frame count
    with pytest.raises(ValueError, match="do not match"):
        C.blank_unknown(video, torch.ones(3, 4, 5))  # spatial size


# ------------------------------------------------------------------------------ training samples


EDIT_3x2x2 = torch.tensor([
    [[1.0, 0.0], [0.0, 0.0]],
    [[0.0, 1.0], [0.0, 0.0]],
    [[0.0, 0.0], [1.0, 1.0]],
])
KEEP_3x2x2 = torch.tensor([
    [[1.0, 1.0], [1.0, 1.0]],
    [[1.0, 0.0], [1.0, 1.0]],
    [[1.0, 1.0], [0.0, 0.0]],
])


def test_motion_sample_exact():
    video = distinct_video(3, 2, 2)
    s = C.motion_sample(video, EDIT_3x2x2, "p3rs0n, a red ball")
    assert isinstance(s, Sample)
    assert s.name == "motion"
    assert s.prompt == "p3rs0n, a red ball"
    assert s.num_frames == 3
    assert torch.equal(s.keep_mask, KEEP_3x2x2)
    assert torch.equal(s.target, video)
    assert torch.equal(s.clip_image, video[0])
    # frame 0 whole (even where its own edit mask is 1), later frames blanked inside their mask
    assert torch.equal(s.condition_video[0], video[0])
    expected = video.clone()
    expected[1, :, 0, 1] = 0.0
    expected[2, :, 1, :] = 0.0
    assert torch.equal(s.condition_video, expected)


@pytest.mark.parametrize(
    "video_shape, mask_shape",
    [((3, 3, 2, 2), (2, 2, 2)), ((3, 3, 2, 2), (3, 2, 3)), ((3, 1, 2, 2), (3, 2, 2)), ((3, 2, 2), (3, 2, 2))],
)
def test_motion_sample_rejects_mismatched_inputs(video_shape, mask_shape):
    with pytest.raises(ValueError):
        C.motion_sample(torch.zeros(video_shape), torch.zeros(mask_shape), "p")


def test_appearance_sample_exact():
    frame = distinct_video(1, 2, 2, seed=1)[0]
    edited = distinct_video(1, 2, 2, seed=2)[0]
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = C.appearance_sample(frame, edited, mask, "p3rs0n, a blue ball")
    assert s.name == "appearance"
    assert s.prompt == "p3rs0n, a blue ball"
    assert s.num_frames == 1
    # its own keep mask is NOT all ones (unlike frame 0 of every video sample)
    assert torch.equal(s.keep_mask, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    assert not bool((s.keep_mask == 1).all())
    expected_condition = frame.clone()[None]
    expected_condition[0, :, 0, 0] = 0.0
    expected_condition[0, :, 1, 1] = 0.0
    assert torch.equal(s.condition_video, expected_condition)
    assert torch.equal(s.target, edited[None])  # target: the user's edited frame, T = 1
    assert torch.equal(s.clip_image, frame)  # CLIP: the unedited frame (authors' code)
    assert s.target.shape == (1, 3, 2, 2)


def test_appearance_sample_rejects_mismatched_sizes():
    f = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="one size"):
        C.appearance_sample(f, torch.zeros(3, 4, 5), torch.zeros(4, 4), "p")
    with pytest.raises(ValueError, match="one size"):
        C.appearance_sample(f, f, torch.zeros(4, 5), "p")


def test_naive_sample_exact():
    video = distinct_video(3, 2, 2)
    s = C.naive_sample(video, "p3rs0n, a ball")
    assert s.name == "naive"
    assert s.num_frames == 3
    assert torch.equal(s.keep_mask, torch.tensor([[[1.0, 1.0], [1.0, 1.0]]] + [[[0.0, 0.0], [0.0, 0.0]]] * 2))
    assert torch.equal(s.condition_video[0], video[0])
    assert torch.equal(s.condition_video[1:], torch.zeros(2, 3, 2, 2))
    assert torch.equal(s.target, video)
    assert torch.equal(s.clip_image, video[0])


# ------------------------------------------------------------------------------ low-cost clips


@pytest.mark.parametrize(
    "num_frames, clip, expected",
    [
        (49, 13, [0, 12, 24, 36]),  # the paper's 1-13, 13-25, 25-37, 37-49
        (17, 5, [0, 4, 8, 12]),
        (21, 9, [0, 8, 12]),  # does not tile: the last clip is moved back to end on frame 20
        (25, 9, [0, 8, 16]),
        (13, 13, [0]),
        (9, 13, [0]),  # clip longer than the video: one clip
    ],
)
def test_clip_starts(num_frames, clip, expected):
    starts = C.clip_starts(num_frames, clip)
    assert starts == expected
    if clip < num_frames:
        assert starts[0] == 0
        assert starts[-1] + clip == num_frames  # the last clip ends on the last frame
        for a, b in zip(starts, starts[1:]):
            assert a < b <= a + clip - 1  # consecutive clips share at least their boundary frame


@pytest.mark.parametrize("clip", [0, -3, 2, 4, 6, 12, 14])
def test_clip_starts_rejects_non_4k_plus_1(clip):
    with pytest.raises(ValueError, match="4k\\+1"):
        C.clip_starts(49, clip)


def test_clip_starts_one_frame_clip_raises():
    # 1 = 4*0+1 passes the length check but a 1-frame clip has stride 0 (and would be all-known);
    # today it raises ValueError from range() itself, with a cryptic message.
    with pytest.raises(ValueError):
        C.clip_starts(49, 1)


def test_low_cost_samples_49_frames_in_13_frame_clips():
    t, h, w = 49, 2, 2
    video = distinct_video(t, h, w, seed=3)
    g = torch.Generator().manual_seed(4)
    edit = (torch.rand(t, h, w, generator=g) > 0.5).float()
    edit[:, 0, 0] = 1.0  # at least one edited pixel in every frame, boundary frames included
    samples = C.low_cost_samples(video, edit, "p3rs0n, x", clip_frames=13)
    assert [s.name for s in samples] == ["clip0", "clip12", "clip24", "clip36"]
    for s, start in zip(samples, [0, 12, 24, 36]):
        assert s.num_frames == 13
        assert s.prompt == "p3rs0n, x"
        assert torch.equal(s.target, video[start : start + 13])
        assert torch.equal(s.keep_mask[0], torch.ones(h, w))  # each clip's first frame is kept whole
        assert torch.equal(s.condition_video[0], video[start])
        assert torch.equal(s.keep_mask[1:], 1.0 - edit[start + 1 : start + 13])
        assert torch.equal(s.clip_image, video[start])
    for a, b in zip(samples, samples[1:]):
        # boundary frame shared: clip k's last input frame is clip k+1's first
        assert torch.equal(a.target[-1], b.target[0])
        # ... blanked inside the mask as clip k's last frame, whole as clip k+1's first frame
        assert a.keep_mask[-1, 0, 0] == 0.0
        assert torch.equal(b.keep_mask[0], torch.ones(h, w))
    assert torch.equal(samples[-1].target[-1], video[-1])


def test_low_cost_samples_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="do not match"):
        C.low_cost_samples(torch.zeros(17, 3, 2, 2), torch.zeros(13, 2, 2), "p", clip_frames=5)


def test_stage2_schedule_one_video_one_frame():
    assert C.stage2_schedule(1, 1, 9) == [0] + [1] * 9
    assert C.stage2_schedule(1, 1) == [0] + [1] * 9  # 9 repeats by default (authors' dataset)


def test_stage2_schedule_two_motion_two_edited():
    sched = C.stage2_schedule(2, 2, 3)
    assert sched == [0, 1, 2, 2, 2, 3, 3, 3]
    assert sorted(set(sched)) == [0, 1, 2, 3]
    assert C.stage2_schedule(4, 0, 9) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ inference conditions


def test_mask_aware_condition_exact():
    video = distinct_video(3, 2, 2)
    edited0 = distinct_video(1, 2, 2, seed=9)[0]
    s = C.mask_aware_condition(video, EDIT_3x2x2, edited0, "p3rs0n, a green ball")
    train = C.motion_sample(video, EDIT_3x2x2, "p3rs0n, x")
    assert s.name == "mask-aware"
    assert s.prompt == "p3rs0n, a green ball"
    assert s.target is None
    assert torch.equal(s.keep_mask, KEEP_3x2x2)
    assert torch.equal(s.keep_mask, train.keep_mask)  # same M_cond as training
    assert torch.equal(s.condition_video[0], edited0)  # the edited first frame, whole
    assert torch.equal(s.condition_video[1:], train.condition_video[1:])  # blanked input
    expected = video.clone()
    expected[0] = edited0
    expected[1, :, 0, 1] = 0.0
    expected[2, :, 1, :] = 0.0
    assert torch.equal(s.condition_video, expected)
    assert torch.equal(s.clip_image, edited0)
    assert torch.equal(video, distinct_video(3, 2, 2)), "the input video was mutated"


def test_mask_aware_condition_rejects_wrong_first_frame():
    with pytest.raises(ValueError, match="edited first frame"):
        C.mask_aware_condition(torch.zeros(3, 3, 2, 2), torch.zeros(3, 2, 2), torch.zeros(3, 2, 3), "p")


def test_first_frame_condition_exact():
    edited0 = distinct_video(1, 2, 3, seed=5)[0]
    s = C.first_frame_condition(edited0, 5, "p")
    assert s.name == "first-frame"
    assert s.target is None
    assert s.num_frames == 5
    assert s.condition_video.shape == (5, 3, 2, 3)
    assert torch.equal(s.condition_video[0], edited0)
    assert torch.equal(s.condition_video[1:], torch.zeros(4, 3, 2, 3))
    assert torch.equal(s.keep_mask, C.first_frame_keep_mask(5, 2, 3))
    assert torch.equal(s.clip_image, edited0)


# ------------------------------------------------------------------------------ latent layout


@pytest.mark.parametrize("frames, expected", [(1, 1), (5, 2), (9, 3), (49, 13), (81, 21)])
def test_latent_num_frames(frames, expected):
    assert L.latent_num_frames(frames) == expected


@pytest.mark.parametrize("frames", [2, 4, 10, 48])
def test_latent_num_frames_rejects_non_4k_plus_1(frames):
    with pytest.raises(ValueError, match="4k\\+1"):
        L.latent_num_frames(frames)


def test_downsample_maxpool_single_edited_pixel_marks_one_cell():
    keep = torch.ones(1, 16, 16)
    keep[0, 3, 13] = 0.0  # one edited pixel, inside latent cell (0, 1)
    out = C.downsample_keep_mask(keep, 8, "maxpool")
    assert torch.equal(out, torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]))
    assert int((out == 0).sum()) == 1
    assert torch.equal(C.downsample_keep_mask(keep, 8), out)  # maxpool is the default


def test_downsample_nearest_misses_a_single_edited_pixel():
    """The authors' nearest down-sampling silently keeps a thin edit: its weakness, documented."""
    keep = torch.ones(1, 16, 16)
    keep[0, 3, 13] = 0.0
    out = C.downsample_keep_mask(keep, 8, "nearest")
    assert torch.equal(out, torch.ones(1, 2, 2))  # the edited pixel is lost: the cell is kept
    # nearest only samples one pixel per cell (the top-left one, torch's floor(i * 8)): that one it sees
    keep2 = torch.ones(1, 16, 16)
    keep2[0, 8, 8] = 0.0
    assert torch.equal(C.downsample_keep_mask(keep2, 8, "nearest"), torch.tensor([[[1.0, 1.0], [1.0, 0.0]]]))


def test_downsample_is_per_frame():
    keep = torch.ones(3, 8, 16)
    keep[1, 7, 0] = 0.0
    keep[2, 0, 15] = 0.0
    keep[2, 4, 4] = 0.0
    out = C.downsample_keep_mask(keep, 8)
    assert torch.equal(out, torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]], [[0.0, 0.0]]]))


def test_downsample_rejects_bad_mode_and_size():
    with pytest.raises(ValueError, match="unknown mask downsampling mode"):
        C.downsample_keep_mask(torch.ones(1, 16, 16), 8, "bilinear")
    with pytest.raises(ValueError, match="not a multiple"):
        C.downsample_keep_mask(torch.ones(1, 12, 16), 8)
    with pytest.raises(ValueError, match="not a multiple"):
        C.downsample_keep_mask(torch.ones(1, 16, 20), 8)


def test_pack_temporal_mask_layout():
    t, h, w = 9, 2, 3
    mask = torch.arange(t, dtype=torch.float32).view(t, 1, 1).expand(t, h, w).contiguous()
    packed = L.pack_temporal_mask(mask)
    assert packed.shape == (4, 3, h, w)
    for c in range(4):
        assert torch.equal(packed[c, 0], torch.full((h, w), 0.0))  # frame 0, repeated 4 times
        assert torch.equal(packed[c, 1], torch.full((h, w), 1.0 + c))  # frames 1, 2, 3, 4
        assert torch.equal(packed[c, 2], torch.full((h, w), 5.0 + c))  # frames 5, 6, 7, 8
    assert packed.is_contiguous()


def test_pack_temporal_mask_single_frame_and_bad_length():
    mask = torch.tensor([[[0.25, 0.5]]])
    packed = L.pack_temporal_mask(mask)
    assert torch.equal(packed, mask[None].expand(4, 1, 1, 2))
    with pytest.raises(ValueError):
        L.pack_temporal_mask(torch.zeros(8, 2, 2))


def test_latent_keep_mask_combines_downsample_and_pack():
    keep = torch.ones(5, 16, 8)
    keep[2, 9, 1] = 0.0  # pixel frame 2 -> latent frame 1, channel 1; row 9 -> latent row 1
    out = L.latent_keep_mask(keep, 8, 4)
    expected = torch.ones(4, 2, 2, 1)
    expected[1, 1, 1, 0] = 0.0
    assert torch.equal(out, expected)
    # nearest misses it (pixel (9, 1) is not the sampled (8, 0))
    assert torch.equal(L.latent_keep_mask(keep, 8, 4, "nearest"), torch.ones(4, 2, 2, 1))


def test_pack_condition_channel_order():
    mask = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2)
    latents = -torch.arange(1, 16 * 3 * 2 * 2 + 1, dtype=torch.float32).view(16, 3, 2, 2)
    out = L.pack_condition(mask, latents)
    assert out.shape == (20, 3, 2, 2)
    assert torch.equal(out[:4], mask)  # mask channels first
    assert torch.equal(out[4:], latents)  # then latents


def test_pack_condition_casts_mask_to_latent_dtype():
    out = L.pack_condition(torch.ones(4, 1, 1, 1), torch.zeros(16, 1, 1, 1, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([1.0] * 4 + [0.0] * 16, dtype=torch.float64))


@pytest.mark.parametrize("lat_shape", [(16, 2, 2, 2), (16, 3, 2, 1), (16, 3, 1, 2)])
def test_pack_condition_rejects_mismatched_sizes(lat_shape):
    with pytest.raises(ValueError, match="differ in size"):
        L.pack_condition(torch.ones(4, 3, 2, 2), torch.zeros(lat_shape))


# ------------------------------------------------------------------------------ post-processing


def test_paste_background_exact():
    video = distinct_video(3, 2, 2, seed=11)
    output = distinct_video(3, 2, 2, seed=12)
    edit_before = EDIT_3x2x2.clone()
    pasted = C.paste_background(output, video, EDIT_3x2x2)
    assert torch.equal(EDIT_3x2x2, edit_before)
    assert torch.equal(pasted[0], output[0])  # frame 0: the generated (edited) frame, whole
    for t in (1, 2):
        for y in range(2):
            for x in range(2):
                src = output if EDIT_3x2x2[t, y, x] == 1 else video
                assert torch.equal(pasted[t, :, y, x], src[t, :, y, x]), (t, y, x)


def test_paste_background_feathers_outside_the_mask_and_is_exact_beyond():
    video, output = distinct_video(2, 1, 9, seed=1), distinct_video(2, 1, 9, seed=2)
    edit = torch.zeros(2, 1, 9)
    edit[:, 0, 4] = 1  # one edited pixel in the middle of a 1x9 strip
    pasted = C.paste_background(output, video, edit, feather=2)
    assert torch.equal(pasted[0], output[0])
    assert torch.equal(pasted[1, :, 0, 4], output[1, :, 0, 4])  # inside the mask: generated
    for x, w in ((3, 2 / 3), (2, 1 / 3), (5, 2 / 3), (6, 1 / 3)):  # a linear ramp over 2 px outside it
        assert torch.allclose(pasted[1, :, 0, x], w * output[1, :, 0, x] + (1 - w) * video[1, :, 0, x])
    for x in (0, 1, 7, 8):  # farther than the feather: the input, bit-exact
        assert torch.equal(pasted[1, :, 0, x], video[1, :, 0, x])


# ------------------------------------------------------------------------------ property: latent mask


def _diffusers_style_pack(mask: torch.Tensor) -> torch.Tensor:
    """diffusers 0.42.1 `prepare_latents`' packing ops, applied to an arbitrary per-frame mask."""
    t, h, w = mask.shape
    m = mask[None, None]  # [1, 1, T, h, w]
    first = torch.repeat_interleave(m[:, :, 0:1], dim=2, repeats=4)
    m = torch.concat([first, m[:, :, 1:]], dim=2)
    m = m.view(1, -1, 4, h, w).transpose(1, 2)
    return m[0]


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(0, 4),
    h8=st.integers(1, 4),
    w8=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    density=st.floats(0.0, 0.2),
)
def test_latent_keep_mask_never_keeps_an_edited_pixel(k, h8, w8, seed, density):
    t, h, w = 4 * k + 1, 8 * h8, 8 * w8
    g = torch.Generator().manual_seed(seed)
    edit = (torch.rand(t, h, w, generator=g) < density).float()
    keep = C.keep_mask_from_edit_masks(edit)
    lat = L.latent_keep_mask(keep, 8, 4)
    assert lat.shape == (4, k + 1, h8, w8)
    assert bool(((lat == 0) | (lat == 1)).all())
    # pixel frame of (channel c, latent frame l): frame 0 for l == 0, else 4(l-1)+1+c
    for c in range(4):
        for l in range(k + 1):
            f = 0 if l == 0 else 4 * (l - 1) + 1 + c
            cells = keep[f].view(h8, 8, w8, 8).amin(dim=(1, 3))  # 1 iff every pixel under it is kept
            # a kept latent cell never covers an edited pixel; and maxpool is exact (no cell lost)
            assert bool((cells[lat[c, l] == 1] == 1).all())
            assert torch.equal(lat[c, l], cells)
    # latent frame 0 is frame 0, fully known
    assert torch.equal(lat[:, 0], torch.ones(4, h8, w8))
    # the packing agrees with diffusers' own ops on any per-frame mask
    down = C.downsample_keep_mask(keep, 8)
    assert torch.equal(L.pack_temporal_mask(down), _diffusers_style_pack(down))


# ------------------------------------------------------------------------------ golden: diffusers


@pytest.fixture(scope="module")
def wan():
    from loraedit.backends.wan import MaskAwareWanImageToVideoPipeline, WanBackend
    from loraedit.toyworld.models import build_components

    pipe = MaskAwareWanImageToVideoPipeline(**build_components("wan2.1"))
    pipe.set_progress_bar_config(disable=True)
    backend = WanBackend(pipe, Path("."), torch.device("cpu"), torch.float32, {})
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(123)) * 2 - 1
    with torch.no_grad():
        stock_noise, stock_cond = pipe.prepare_latents(
            image, 1, 16, 32, 32, 9, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
        )
    return pipe, backend, image, stock_noise, stock_cond


def test_golden_first_frame_condition_matches_diffusers(wan):
    pipe, backend, image, _, stock = wan
    assert stock.shape == (1, 20, 3, 4, 4)
    sample = C.first_frame_condition(image[0], 9, "")
    mask = L.latent_keep_mask(sample.keep_mask, 8, 4)
    assert torch.equal(mask, stock[0, :4])  # identical mask channels
    # diffusers' mask: latent frame 0 all ones, later all zeros
    assert torch.equal(stock[0, :4, 0], torch.ones(4, 4, 4))
    assert torch.equal(stock[0, :4, 1:], torch.zeros(4, 2, 4, 4))

    ours = backend.condition_tensor(sample)
    assert ours.shape == (20, 3, 4, 4)
    assert torch.equal(ours[:4], stock[0, :4])
    # diffusers multiplies by 1/std, we divide by std: equal up to float rounding
    assert torch.allclose(ours[4:], stock[0, 4:], rtol=0, atol=1e-6)
    assert float(stock[0, 4:].abs().max()) > 0.01  # the comparison is not between zeros

    # the same, computed by hand from the VAE (what the backend must be equivalent to)
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        raw = vae.encode(sample.condition_video.permute(1, 0, 2, 3)[None]).latent_dist.mode()
    assert torch.allclose((raw - mean) / std, stock[:, 4:], rtol=0, atol=1e-6)


def test_mask_aware_pipeline_prepare_latents_given_and_stock(wan):
    pipe, backend, image, stock_noise, stock_cond = wan
    args = (image, 1, 16, 32, 32, 9, torch.float32, torch.device("cpu"))
    cond = torch.randn(20, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    assert pipe._given_condition is None
    pipe._given_condition = cond
    try:
        noise, got = pipe.prepare_latents(*args, torch.Generator().manual_seed(0))
        noise2, got2 = pipe.prepare_latents(image, 2, 16, 32, 32, 9, torch.float32, torch.device("cpu"),
                                            torch.Generator().manual_seed(0))
        pipe._given_condition = cond[None]  # a batched [1, 20, T', h, w] condition is accepted as is
        _, got3 = pipe.prepare_latents(*args, torch.Generator().manual_seed(0))
    finally:
        pipe._given_condition = None
    assert torch.equal(got, cond[None])  # exactly the given condition
    assert torch.equal(noise, stock_noise)  # noise drawn as the stock pipeline does
    assert got2.shape == (2, 20, 3, 4, 4)
    assert torch.equal(got2[0], cond) and torch.equal(got2[1], cond)
    assert noise2.shape == (2, 16, 3, 4, 4)
    assert torch.equal(got3, cond[None])
    # without a given condition: the stock result
    with torch.no_grad():
        noise4, got4 = pipe.prepare_latents(*args, torch.Generator().manual_seed(0))
    assert torch.equal(noise4, stock_noise)
    assert torch.equal(got4, stock_cond)


def test_mask_aware_pipeline_call_injects_condition_and_resets(wan):
    pipe = wan[0]
    cond = torch.randn(20, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    clip = torch.randn(17, 4, generator=torch.Generator().manual_seed(7))
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["hidden_states"].clone(), kw["encoder_hidden_states_image"].clone())),
        with_kwargs=True,
    )
    try:
        out = pipe(image=torch.rand(1, 3, 32, 32), prompt_embeds=torch.randn(1, 512, 32), height=32, width=32,
                   num_frames=5, num_inference_steps=1, guidance_scale=1.0, output_type="latent",
                   condition=cond, clip_embeds=clip, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert len(seen) == 1
    hidden, image_tokens = seen[0]
    assert hidden.shape == (1, 36, 2, 4, 4)
    assert torch.equal(hidden[0, 16:], cond)  # noise (16) then our condition (4 + 16)
    assert torch.equal(image_tokens, clip[None])
    assert out.frames.shape == (1, 16, 2, 4, 4)
    assert pipe._given_condition is None and pipe._given_clip_embeds is None
    # reset even when the stock pipeline raises
    with pytest.raises(ValueError):
        pipe(image=None, prompt_embeds=None, condition=cond, clip_embeds=clip)
    assert pipe._given_condition is None and pipe._given_clip_embeds is None


def test_recolour_changes_only_the_edit_region_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1
    masks = torch.zeros(5, 8, 8)
    masks[:, 2:6, 2:6] = 1
    a = A.recolour_edit_region(video, masks, torch.Generator().manual_seed(1))
    b = A.recolour_edit_region(video, masks, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    outside = masks == 0
    assert torch.equal(a.permute(1, 0, 2, 3)[:, outside], video.permute(1, 0, 2, 3)[:, outside])
    assert not torch.allclose(a[:, :, 2:6, 2:6], video[:, :, 2:6, 2:6])
    assert a.min() >= -1 and a.max() <= 1
    samples = A.appearance_augmented_samples(video, masks, "p", copies=2)
    assert len(samples) == 2 and not torch.equal(samples[0].target, samples[1].target)
    assert torch.equal(samples[0].keep_mask, C.keep_mask_from_edit_masks(masks))
    assert torch.equal(samples[0].condition_video[0], samples[0].target[0])  # frame 0 shows the recolour


def test_colour_transform_is_seeded_affine_and_keeps_blank_pixels_blank():
    video = distinct_video(5, 6, 6)
    masks = torch.zeros(5, 6, 6)
    masks[1:, 1:4, 1:4] = 1
    sample = C.motion_sample(video, masks, "p")
    t1 = A.random_colour_transform(torch.Generator().manual_seed(3))
    t2 = A.random_colour_transform(torch.Generator().manual_seed(3))
    assert torch.equal(t1.matrix, t2.matrix) and torch.equal(t1.offset, t2.offset)
    out = A.recolour_sample(sample, t1, region="frame")
    assert torch.allclose(out.target, (torch.einsum("ij,tjhw->tihw", t1.matrix, video)
                                       + t1.offset.view(3, 1, 1)).clamp(-1, 1))
    assert torch.equal(out.keep_mask, sample.keep_mask)
    blank = sample.keep_mask == 0
    assert (out.condition_video.permute(1, 0, 2, 3)[:, blank] == 0).all()  # unknown stays unknown (0)
    assert torch.allclose(out.condition_video[0], out.target[0]) and torch.allclose(out.clip_image, out.target[0])
    assert out.target.min() >= -1 and out.target.max() <= 1


def test_path_recolouring_changes_only_the_edit_regions_path_the_same_in_every_frame():
    video = distinct_video(5, 6, 6)
    masks = torch.zeros(5, 6, 6)
    masks[1, 1:3, 1:3] = 1
    masks[2:, 3:5, 2:4] = 1  # the region moves: its path is the union of both boxes
    sample = C.motion_sample(video, masks, "p")
    path = A.edit_path(sample.keep_mask)
    assert path.sum() == 8 and torch.equal(path, masks.amax(0))
    out = A.recolour_sample(sample, A.random_colour_transform(torch.Generator().manual_seed(0)), region="path")
    changed = (out.target != video).any(dim=1)  # [T, H, W]
    assert changed.any(dim=0).logical_and(path == 0).sum() == 0  # nothing outside the path changes
    assert changed[0, 1:3, 1:3].all() and changed[0, 3:5, 2:4].all()  # frame 0 too, where the region goes later
    assert (out.condition_video.permute(1, 0, 2, 3)[:, sample.keep_mask == 0] == 0).all()
    with pytest.raises(ValueError, match="region"):
        A.recolour_sample(sample, A.random_colour_transform(torch.Generator()), region="box")


def test_appearance_variants_differ_in_hue_and_keep_the_motion():
    video = distinct_video(5, 6, 6)
    masks = torch.zeros(5, 6, 6)
    masks[1:, 1:4, 1:4] = 1
    variants = A.appearance_variants(C.motion_sample(video, masks, "p"), 8, seed=0)
    assert len(variants) == 8 and len({v.name for v in variants}) == 8
    means = torch.stack([v.target[:, :, 1:4, 1:4].mean(dim=(0, 2, 3)) for v in variants])  # in the region
    assert means.std(dim=0).min() > 0.05  # the colours really vary from draw to draw
    again = A.appearance_variants(C.motion_sample(video, masks, "p"), 8, seed=0)
    assert all(torch.equal(a.target, b.target) for a, b in zip(variants, again))


def test_one_recipe_per_mode():
    video = distinct_video(9, 4, 4)
    masks = torch.zeros(9, 4, 4)
    masks[:, 1:3, 1:3] = 1
    first = distinct_video(1, 4, 4, seed=5)[0]
    frame = C.EditedFrameSample(4, video[4], first, masks[4])
    motion, edited = C.training_samples("mask-aware", video, masks, "p", edited_frames=(frame,))
    assert [s.name for s in motion] == ["motion"] and [s.name for s in edited] == ["frame4"]
    assert torch.equal(motion[0].keep_mask, C.motion_sample(video, masks, "p").keep_mask)
    clips, _ = C.training_samples("mask-aware", video, masks, "p", low_cost_clip_frames=5)
    assert [s.name for s in clips] == ["clip0", "clip4"]
    captioned = C.EditedFrameSample(4, video[4], first, masks[4], prompt="tok the red back")
    motion, edited = C.training_samples("mask-aware", video, masks, "p", edited_frames=(captioned,))
    assert motion[0].prompt == "p" and edited[0].prompt == "tok the red back"  # stage 2: each frame's own words
    assert edited[0].name == "frame4"
    naive, none = C.training_samples("naive", video, masks, "p", edited_frames=(frame,))
    assert torch.equal(naive[0].keep_mask, C.naive_sample(video, "p").keep_mask) and none == []
    with pytest.raises(ValueError, match="trains nothing"):
        C.training_samples("no-lora", video, masks, "p")
    for mode, expected in (("mask-aware", C.mask_aware_condition(video, masks, first, "p")),
                           ("mask-no-lora", C.mask_aware_condition(video, masks, first, "p")),
                           ("naive", C.first_frame_condition(first, 9, "p")),
                           ("no-lora", C.first_frame_condition(first, 9, "p"))):
        got = C.inference_condition(mode, video, masks, first, "p")
        assert torch.equal(got.condition_video, expected.condition_video) and torch.equal(got.keep_mask,
                                                                                          expected.keep_mask)
