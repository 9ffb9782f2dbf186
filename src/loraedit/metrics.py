"""Ground-truth metrics of an edited video: inside the edit region, outside it, whole frame, over time.

All videos are [T, 3, H, W] in [-1, 1]; masks [T, H, W] in {0, 1} (1 = edit region). Unless told
otherwise, metrics use the frames after the first: frame 0 is the user's edited frame, given whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_psnr(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    """PSNR (dB, peak-to-peak 2) over the pixels where `weight` is 1 ([T, H, W]); all pixels if None."""
    err = ((a.float() - b.float()) / 2).pow(2).mean(dim=1)  # [T, H, W]
    if weight is None:
        mse = float(err.mean())
    else:
        total = float(weight.sum())
        if total == 0:
            return float("nan")
        mse = float((err * weight).sum()) / total
    return 10 * math.log10(1 / max(mse, 1e-10))


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-pixel SSIM [T, H, W] (mean over RGB) with a uniform window, on images mapped to [0, 1]."""
    x, y = (a.float() + 1) / 2, (b.float() + 1) / 2
    c1, c2 = 0.01**2, 0.03**2
    pad = window // 2

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(t, [pad] * 4, mode="replicate"), window, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=1)


def masked_ssim(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    s = ssim_map(a, b)
    if weight is None:
        return float(s.mean())
    total = float(weight.sum())
    return float((s * weight).sum()) / total if total else float("nan")


def temporal_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean absolute difference of consecutive-frame differences (output vs reference), in [0, 2] units.

    Zero when the output moves exactly as the reference does, whatever its per-frame error.
    """
    return float(((output[1:] - output[:-1]) - (reference[1:] - reference[:-1])).abs().mean())


#: Half-width in pixels of the band around the mask edge that `border_psnr` scores.
BORDER_BAND = 3


def border_band(edit_masks: torch.Tensor, width: int = BORDER_BAND) -> torch.Tensor:
    """Pixels within `width` of the mask's edge, on either side: where a seam would show ([T, H, W])."""
    m = edit_masks.float()[:, None]
    grown = F.max_pool2d(m, 2 * width + 1, stride=1, padding=width)
    shrunk = -F.max_pool2d(-m, 2 * width + 1, stride=1, padding=width)
    return (grown - shrunk)[:, 0]


def edit_metrics(output: torch.Tensor, source: torch.Tensor, ground_truth: torch.Tensor,
                 edit_masks: torch.Tensor, skip_first: bool = True) -> dict[str, float]:
    """The toy world's table row for one output: edit region vs ground truth, background vs the input,
    and the band around the mask's edge vs ground truth (where a pasted background would leave a seam)."""
    start = 1 if skip_first else 0
    out, src, gt, m = output[start:], source[start:], ground_truth[start:], edit_masks[start:].float()
    bg = 1 - m
    return {
        "border_psnr": masked_psnr(out, gt, border_band(m)),
        "edit_psnr": masked_psnr(out, gt, m),
        "edit_ssim": masked_ssim(out, gt, m),
        "bg_psnr": masked_psnr(out, src, bg),
        "bg_ssim": masked_ssim(out, src, bg),
        "psnr": masked_psnr(out, gt),
        "temporal_err": temporal_error(output[start:], ground_truth[start:]),
        "edit_kept": edit_kept(out, src, gt),
    }


#: A pixel whose edited and original values differ by more than this (on [-1, 1]) is one the edit changed.
EDIT_CHANGE_THRESHOLD = 0.1


def edit_kept(output: torch.Tensor, source: torch.Tensor, ground_truth: torch.Tensor) -> float:
    """Which object the output draws where the edit changed the picture: 1 = the edited one, 0 = the original.

    Over the pixels where the truth differs from the source, the output's squared error to the source as a
    share of its errors to both. PSNR against the truth cannot see a LoRA painting the original object back
    (the original in the right place scores well, issue 18); this can: a returning original scores near 0,
    a blur or noise between the two near 0.5, the edit carried through near 1. NaN where the edit changed
    nothing.
    """
    changed = (ground_truth - source).abs().amax(dim=1) > EDIT_CHANGE_THRESHOLD  # [T, H, W]
    if not changed.any():
        return float("nan")
    to_source = (output - source).pow(2).mean(dim=1)[changed].mean()
    to_truth = (output - ground_truth).pow(2).mean(dim=1)[changed].mean()
    return float(to_source / (to_source + to_truth).clamp_min(1e-12))


def edit_colour_error(output: torch.Tensor, ground_truth: torch.Tensor, edit_masks: torch.Tensor) -> float:
    """Colour drift: how far the mean colour inside the edit region is from the truth's, in 0-255 units
    (Euclidean over RGB), averaged over the frames whose mask is not empty.

    PSNR cannot tell an object of the wrong colour in the right place from a blur of the right colour; this
    can: it sees only the region's average colour, the quantity that drifts when windows are chained and that
    a memorising LoRA pulls back to the original.
    """
    errors = []
    for out, gt, m in zip(output, ground_truth, edit_masks.float()):
        area = m.sum()
        if area == 0:
            continue
        mean_out = (out * m).flatten(1).sum(1) / area
        mean_gt = (gt * m).flatten(1).sum(1) / area
        errors.append(float(torch.linalg.vector_norm(mean_out - mean_gt)) * 127.5)
    return sum(errors) / len(errors) if errors else float("nan")


def scored_frames(frame_set: str, frames: int) -> list[int]:
    """Frame indices a score covers: "after-first" (frame 0 is the user's edit, given whole) or "all"."""
    return list(range(1 if frame_set == "after-first" else 0, frames))


def pixel_metrics(output: torch.Tensor, source: torch.Tensor, masks: torch.Tensor | None,
                  reference: torch.Tensor | None = None, frame_set: str = "after-first") -> dict:
    """Background PSNR/SSIM vs the input outside the mask; PSNR/SSIM vs a reference; on the scored frames."""
    idx = scored_frames(frame_set, output.shape[0])
    out = output[idx].float()
    result = {}
    if masks is not None:
        keep = 1 - masks[idx].float()
        result["bg_psnr"] = masked_psnr(out, source[idx], keep)
        result["bg_ssim"] = masked_ssim(out, source[idx], keep)
    if reference is not None:
        ref = reference[idx]
        result["ref_psnr"] = masked_psnr(out, ref)
        result["ref_ssim"] = masked_ssim(out, ref)
        if masks is not None:
            result["ref_edit_psnr"] = masked_psnr(out, ref, masks[idx].float())
    return result
