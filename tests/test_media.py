"""Tests for loraedit.media: I/O round trips, frame selection, geometry, masks, errors, atomicity."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from loraedit import media
from loraedit.errors import InputError


def gradient_video(t: int = 9, h: int = 24, w: int = 32) -> torch.Tensor:
    """Smooth moving gradient in [-1, 1]: compresses well, so a round trip stays close."""
    ys = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    ts = torch.linspace(0, 0.5, t).view(t, 1, 1, 1)
    r = (xs + ts).clamp(-1, 1).expand(t, 1, h, w)
    g = ys.expand(t, 1, h, w)
    b = (0.5 * (xs - ys)).expand(t, 1, h, w)
    return torch.cat([r, g, b], dim=1).contiguous()


def save_png(path, arr) -> None:
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def no_temp_files(folder) -> bool:
    return not [p for p in os.listdir(folder) if ".tmp-" in p]


# ---------------------------------------------------------------------------------- video I/O


def test_write_read_video_round_trip(tmp_path):
    video = gradient_video()
    out = tmp_path / "sub" / "clip.mp4"
    media.write_video(out, video, fps=12.0)
    frames, fps = media.read_video(out)
    assert frames.shape == video.shape and frames.dtype == torch.float32
    assert frames.min() >= -1 and frames.max() <= 1
    assert (frames - video).abs().mean() < 0.1
    assert fps == pytest.approx(12.0)
    assert no_temp_files(out.parent)


def test_write_video_fractional_fps_and_odd_size(tmp_path):
    out = tmp_path / "odd.mp4"
    media.write_video(out, gradient_video(t=5, h=15, w=21), fps=29.97)
    frames, fps = media.read_video(out)
    assert frames.shape == (5, 3, 16, 22)  # padded by one replicated pixel
    assert fps == pytest.approx(29.97, abs=0.01)


def test_read_video_folder_natural_sort(tmp_path):
    for i in (10, 2, 1):  # value encodes the frame number; frame10 must come last
        save_png(tmp_path / f"frame{i}.png", np.full((6, 8, 3), i * 20))
    (tmp_path / "notes.txt").write_text("ignored")
    frames, fps = media.read_video(tmp_path)
    assert frames.shape == (3, 3, 6, 8) and fps == 16.0
    values = ((frames[:, 0, 0, 0] + 1) * 127.5).round().tolist()
    assert values == [20, 40, 200]


def test_read_image_drops_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = media.read_image(tmp_path / "a.png")
    assert img.shape == (3, 4, 5)
    assert torch.allclose(img[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


# ------------------------------------------------------------------------------------- errors


def test_corrupt_video_raises_input_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="bad.mp4"):
        media.read_video(bad)
    with pytest.raises(InputError, match="bad.mp4"):
        media.read_masks(bad)


def test_corrupt_image_raises_input_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="bad.png"):
        media.read_image(bad)
    with pytest.raises(InputError, match="bad.png"):
        media.read_mask_image(bad)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(InputError, match="no frame images"):
        media.read_video(tmp_path)
    with pytest.raises(InputError, match="no frame images"):
        media.read_masks(tmp_path)
    for reader in (media.read_video, media.read_image, media.read_masks):
        with pytest.raises(InputError, match="does not exist"):
            reader(tmp_path / "nope.mp4")


def test_folder_frames_of_different_size(tmp_path):
    save_png(tmp_path / "f1.png", np.zeros((6, 8, 3)))
    save_png(tmp_path / "f2.png", np.zeros((6, 9, 3)))
    with pytest.raises(InputError, match="same size"):
        media.read_video(tmp_path)


def test_mask_count_and_aspect_mismatch():
    frames = torch.zeros(9, 3, 24, 32)
    with pytest.raises(InputError, match="5 frames but the video has 9"):
        media.check_masks_match(torch.zeros(5, 24, 32), frames, "masks/")
    with pytest.raises(InputError, match="aspect ratio"):
        media.check_masks_match(torch.zeros(9, 24, 24), frames, "masks/")
    media.check_masks_match(torch.zeros(9, 48, 64), frames, "masks/")  # same ratio: fine


# ----------------------------------------------------------------------------- frame selection


def test_uniform_frame_indices():
    idx = media.uniform_frame_indices(100, 49)
    assert len(idx) == 49 and idx[0] == 0 and idx[-1] == 99
    assert all(b > a for a, b in zip(idx, idx[1:]))
    assert media.uniform_frame_indices(9, 9) == list(range(9))
    assert media.uniform_frame_indices(7, 1) == [0]
    assert media.uniform_frame_indices(9, 5) == [0, 2, 4, 6, 8]


def test_uniform_frame_indices_errors():
    with pytest.raises(InputError, match="`frames` 45"):
        media.uniform_frame_indices(48, 49)
    with pytest.raises(InputError, match="ask for 45 or 49"):
        media.uniform_frame_indices(100, 48)
    assert [media.largest_valid_frame_count(n) for n in (1, 4, 5, 48, 49)] == [1, 1, 5, 45, 49]


def test_prepare_video_and_masks():
    video, masks = gradient_video(t=13), torch.ones(13, 24, 32)
    out = media.prepare_video(video, 5, (16, 16))
    assert out.shape == (5, 3, 16, 16)
    assert torch.allclose(out[0], media.cover_crop(video[0], (16, 16)))
    assert torch.allclose(out[-1], media.cover_crop(video[-1], (16, 16)))
    assert media.prepare_masks(masks, 5, (16, 16)).shape == (5, 16, 16)


# ------------------------------------------------------------------------------------ geometry


def test_cover_crop_4x3_to_square_keeps_centre():
    img = torch.arange(8.0).view(1, 1, 8).expand(3, 6, 8) / 8  # W=8, H=6, column index as value
    out = media.cover_crop(img, (6, 6))
    assert out.shape == (3, 6, 6)
    assert torch.equal(out, img[..., 1:7])


def test_cover_crop_image_and_mask_align():
    img = -torch.ones(2, 3, 60, 80)
    mask = torch.zeros(2, 60, 80)
    img[..., 20:40, 40:60] = 1.0
    mask[..., 20:40, 40:60] = 1.0
    out_img = media.cover_crop(img, (30, 30))  # scale 0.5 -> 40x30, crop 5 px each side
    out_mask = media.cover_crop(mask, (30, 30), mode="nearest")
    assert out_img.shape == (2, 3, 30, 30) and out_mask.shape == (2, 30, 30)
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    expected = torch.zeros(30, 30)
    expected[10:20, 15:25] = 1.0
    assert torch.equal(out_mask[0], expected)
    assert torch.equal((out_img[0, 0] > 0).float(), expected)


@settings(max_examples=30, deadline=None)
@given(src_h=st.integers(1, 40), src_w=st.integers(1, 40), dst_h=st.integers(1, 40),
       dst_w=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_cover_crop_property(src_h, src_w, dst_h, dst_w, seed):
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(2, 3, src_h, src_w, generator=gen) * 2 - 1
    mask = (torch.rand(2, src_h, src_w, generator=gen) > 0.5).float()
    out_img = media.cover_crop(img, (dst_w, dst_h))
    out_mask = media.cover_crop(mask, (dst_w, dst_h), mode="nearest")
    assert out_img.shape == (2, 3, dst_h, dst_w)
    assert out_mask.shape == (2, dst_h, dst_w)
    assert out_img.min() >= -1 and out_img.max() <= 1
    assert torch.all((out_mask == 0) | (out_mask == 1))


# --------------------------------------------------------------------------------------- masks


def test_read_masks_png_folder(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    for i in range(3):
        arr = np.zeros((6, 8, 3), np.uint8)
        arr[:, i] = 255  # white column i = edit region
        arr[0, 7] = 100  # dark grey stays outside the edit region
        save_png(folder / f"m{i}.png", arr)
    masks = media.read_masks(folder)
    assert masks.shape == (3, 6, 8) and masks.dtype == torch.float32
    for i in range(3):
        expected = torch.zeros(6, 8)
        expected[:, i] = 1
        assert torch.equal(masks[i], expected)


def test_read_masks_alpha_and_single_image(tmp_path):
    rgba = np.zeros((6, 8, 4), np.uint8)  # black colour everywhere; shape only in alpha
    rgba[2:4, 3:5, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    masks = media.read_masks(tmp_path / "cut.png")
    assert masks.shape == (1, 6, 8)
    assert masks.sum() == 4 and torch.all(masks[0, 2:4, 3:5] == 1)
    # Fully opaque alpha: fall back to luminance (white = edit).
    opaque = np.full((6, 8, 4), 255, np.uint8)
    opaque[:, :4, :3] = 0
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    mask = media.read_mask_image(tmp_path / "opaque.png")
    assert mask.shape == (6, 8) and mask[:, :4].sum() == 0 and mask[:, 4:].sum() == 24


def test_read_masks_from_mp4(tmp_path):
    masks = torch.zeros(5, 32, 32)
    masks[:, 8:24, 8:24] = 1
    media.write_video(tmp_path / "mask.mp4", masks.unsqueeze(1).expand(-1, 3, -1, -1) * 2 - 1)
    back = media.read_masks(tmp_path / "mask.mp4")
    assert back.shape == (5, 32, 32)
    assert torch.all((back == 0) | (back == 1))
    assert (back != masks).float().mean() < 0.02  # codec may blur an edge pixel or two


# ------------------------------------------------------------------------------ writing helpers


def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "deep" / "out.png"
    with media.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp != target
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x" and no_temp_files(target.parent)

    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        with media.atomic_path(failed) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer broke")
    assert not failed.exists() and no_temp_files(tmp_path)


def test_write_image_and_to_uint8(tmp_path):
    img = gradient_video(t=1)[0]
    media.write_image(tmp_path / "img.png", img)
    back = media.read_image(tmp_path / "img.png")
    assert (back - img).abs().max() <= 1 / 127.5 + 1e-6
    assert media.to_uint8(img).shape == (24, 32, 3)
    assert media.to_uint8(gradient_video(t=2)).shape == (2, 24, 32, 3)
    assert no_temp_files(tmp_path)


def test_contact_sheet(tmp_path):
    video = gradient_video(t=9)
    masks = torch.zeros(5, 12, 16)  # shorter and smaller: indices clamp, tiles cover-cropped
    sheet = media.contact_sheet({"source": video, "mask": masks}, num_columns=4)
    assert sheet.shape == (3, 2 * 24 + 2, 4 * 32 + 3 * 2)
    assert sheet.min() >= -1 and sheet.max() <= 1
    assert torch.allclose(sheet[:, 24:26, :], torch.tensor(-0.8), atol=0.01)  # separator
    assert torch.all(sheet[:, 40:, 102:] < -0.99)  # mask tile is black away from the label
    media.write_contact_sheet(tmp_path / "sheet.png", {"source": video}, num_columns=3)
    assert Image.open(tmp_path / "sheet.png").size == (3 * 32 + 2 * 2, 24)


def test_shrunk_masks_keep_every_pixel_an_edit_region_touches():
    masks = torch.zeros(2, 8, 8)
    masks[0, 3, 5] = 1  # one pixel: its 2x2 cell stays editable at half size
    small = media.shrink_masks(masks, (4, 4))
    assert small.shape == (2, 4, 4) and small[0, 1, 2] == 1 and small.sum() == 1
    video = torch.rand(2, 3, 8, 8) * 2 - 1
    same = media.shrink_clip(video, masks, (8, 8))
    assert same[0] is video and same[1] is masks  # the clip's own size: untouched
    v, m = media.shrink_clip(video, masks, (4, 4))
    assert v.shape == (2, 3, 4, 4) and torch.equal(m, small)
    with pytest.raises(ValueError, match="smaller"):
        media.shrink_masks(masks, (16, 16))


def test_scaled_size_rounds_each_side_to_the_model_step():
    assert media.scaled_size((832, 480), 0.5, 16) == (416, 240)
    assert media.scaled_size((96, 96), 0.5, 8) == (48, 48)
    assert media.scaled_size((64, 64), 0.1, 16) == (16, 16)  # never below one step
    assert media.resolve_size(0.5, (832, 480), 16) == (416, 240)  # a fraction, or WxH as given
    assert media.resolve_size((64, 32), (832, 480), 16) == (64, 32) and media.resolve_size(None, (832, 480), 16) is None
