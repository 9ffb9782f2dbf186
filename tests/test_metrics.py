"""Metrics against ground truth: exact values on hand-made videos."""

import math

import torch

from loraedit.metrics import edit_metrics, masked_psnr, masked_ssim, temporal_error


def test_psnr_known_value_and_mask():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[:, :, :2] = 0.2  # error 0.1 in [0,1] units on the top half only
    top = torch.zeros(2, 4, 4)
    top[:, :2] = 1
    assert masked_psnr(a, b, top) == pytest_approx(20.0)
    assert masked_psnr(a, b, 1 - top) == pytest_approx(100.0)  # identical there (capped)
    assert masked_psnr(a, b) == pytest_approx(10 * math.log10(1 / 0.005))
    assert math.isnan(masked_psnr(a, b, torch.zeros(2, 4, 4)))


def test_ssim_is_one_for_identical_and_lower_for_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    assert masked_ssim(a, a) == pytest_approx(1.0)
    assert masked_ssim(a, (a + 0.5 * torch.randn(a.shape, generator=g)).clamp(-1, 1)) < 0.8


def test_temporal_error_ignores_constant_offsets():
    ref = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    assert temporal_error(ref + 0.3, ref) == pytest_approx(0.0)
    static = ref[:1].expand(5, 3, 4, 4)
    assert temporal_error(static, ref) == pytest_approx(0.5)


def test_edit_metrics_skips_the_first_frame_and_splits_regions():
    src = torch.zeros(3, 3, 8, 8)
    gt = src.clone()
    gt[:, :, :4] = 1.0  # the edit: the top half
    masks = torch.zeros(3, 8, 8)
    masks[:, :4] = 1
    out = gt.clone()
    out[0] = -1  # frame 0 wrong: ignored
    m = edit_metrics(out, src, gt, masks)
    assert m["edit_psnr"] == pytest_approx(100.0) and m["bg_psnr"] == pytest_approx(100.0)
    assert m["temporal_err"] == pytest_approx(0.0)


def test_edit_kept_tells_the_edit_from_the_original_returning():
    """PSNR against the truth rewards the original object in the right place; `edit_kept` says which object is
    drawn where the edit changed the picture: 1 the edit, 0 the original, 0.5 halfway (a blur of both)."""
    from loraedit.metrics import edit_kept

    src = torch.zeros(3, 3, 8, 8)
    gt = src.clone()
    gt[:, 0, :4] = 0.8  # the edit: a redder top half
    assert edit_kept(gt, src, gt) == pytest_approx(1.0)
    assert edit_kept(src, src, gt) == pytest_approx(0.0)
    assert edit_kept((src + gt) / 2, src, gt) == pytest_approx(0.5)
    assert math.isnan(edit_kept(src, src, src))  # no edit, nothing to keep
    assert edit_metrics(gt, src, gt, (gt[:, 0] != 0).float())["edit_kept"] == pytest_approx(1.0)


def test_border_band_is_the_strip_either_side_of_the_mask_edge():
    from loraedit.metrics import border_band

    masks = torch.zeros(1, 1, 12)
    masks[0, 0, 4:8] = 1
    assert border_band(masks, 1)[0, 0].tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0]
    src, gt = torch.zeros(2, 3, 1, 12), torch.zeros(2, 3, 1, 12)
    gt[:, :, :, 4:8] = 1.0
    seam = gt.clone()
    seam[:, :, :, 3] = 0.5  # a seam just outside the mask: only the border metric sees it
    m = edit_metrics(seam, src, gt, masks.expand(2, 1, 12))
    assert m["edit_psnr"] == pytest_approx(100.0) and m["border_psnr"] < 30


def pytest_approx(x):
    import pytest

    return pytest.approx(x, abs=1e-4)
