"""Videos longer than the model's window: which frames each window covers and what it is given.

A model samples a fixed window of frames (Wan: 81). A longer clip is edited with *one* LoRA trained on
overlapping windows of the whole clip (the low-cost recipe of Sec. 4.5 with the window as the clip
length, `conditioning.low_cost_samples`), then sampled window by window: the first window starts from the
user's edited first frame; every later window starts from the last frame(s) the window before it
generated, given whole through the model's own first-frame channel (keep mask 1), and keeps the input's
background outside the mask as every window does. This is the training condition exactly: each training
window's first frame is given whole too.

Drift: each window inherits the previous one's colour errors inside the mask. `match_colour` (*ours*)
pulls the carried frames' edit region back to the edited first frame's colour statistics before they
condition the next window.

Pure tensor functions, like `conditioning` (the same conventions): no models, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import conditioning


@dataclass(frozen=True)
class Window:
    """Frames [start, start + frames) of the clip; the first `given` of them come from the window before."""

    start: int
    frames: int
    given: int  # frames carried whole from the previous window's output (the first window: 1, the edited frame)

    @property
    def stop(self) -> int:
        return self.start + self.frames


def plan_windows(num_frames: int, window: int, overlap: int = 1) -> list[Window]:
    """Windows of `window` frames over `num_frames`, each sharing `overlap` frames with the one before.

    161 frames in 81-frame windows with overlap 1: frames 0-80 and 80-160. When the windows do not tile the
    clip exactly, the last one moves back to end on the last frame (it is given more of its predecessor).
    """
    if window < 5 or (window - 1) % 4:
        raise ValueError(f"window must be 4k+1 frames and at least 5, got {window}")
    if not 1 <= overlap <= window - 4:
        raise ValueError(f"window overlap must be 1..{window - 4} frames (at least one latent frame to generate), "
                         f"got {overlap}")
    if num_frames <= window:
        return [Window(0, num_frames, 1)]
    stride = window - overlap
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    windows = [Window(starts[0], window, 1)]
    for before, start in zip(starts, starts[1:]):
        windows.append(Window(start, window, before + window - start))
    return windows


def window_condition(mode: str, video: torch.Tensor, edit_masks: torch.Tensor, window: Window,
                     given: torch.Tensor, prompt: str) -> conditioning.Sample:
    """The mode's condition for one window (`conditioning.inference_condition`) with its first frames given.

    video, edit_masks: the whole clip [T, 3, H, W] / [T, H, W]; given: [window.given, 3, H, W], the edited
    first frame (first window) or the last frames generated so far. Mask-aware keeps the background of the
    other frames, as in a single window. CLIP sees the first given frame (the caller may keep the edited
    first frame's embedding instead, as an anchor).
    """
    if given.shape[0] != window.given or given.shape[1:] != video.shape[1:]:
        raise ValueError(f"window at frame {window.start} takes {window.given} given frame(s) of "
                         f"{tuple(video.shape[1:])}, got {tuple(given.shape)}")
    clip, masks = video[window.start:window.stop], edit_masks[window.start:window.stop]
    sample = conditioning.inference_condition(mode, clip, masks, given[0], prompt)
    keep, condition = sample.keep_mask.clone(), sample.condition_video.clone()
    keep[:window.given] = 1.0
    condition[:window.given] = given
    return conditioning.Sample(f"window{window.start}", condition, keep, given[0], prompt)


def match_colour(frames: torch.Tensor, masks: torch.Tensor, reference: torch.Tensor,
                 reference_mask: torch.Tensor) -> torch.Tensor:
    """Frames [N, 3, H, W] with their edit region's per-channel mean and spread set to the reference's (*ours*).

    The reference is the edited first frame inside its own edit mask: the appearance the user asked for.
    Pixels outside `masks` [N, H, W] are unchanged; an empty mask (on either side) changes nothing.
    """
    ref_mask = reference_mask.bool()
    if not ref_mask.any():
        return frames
    ref = reference[:, ref_mask]  # [3, n]
    ref_mean, ref_std = ref.mean(dim=1), ref.std(dim=1, unbiased=False)
    out = frames.clone()
    for i in range(frames.shape[0]):
        m = masks[i].bool()
        if not m.any():
            continue
        px = frames[i][:, m]
        mean, std = px.mean(dim=1, keepdim=True), px.std(dim=1, unbiased=False, keepdim=True)
        matched = (px - mean) / std.clamp_min(1e-3) * ref_std[:, None] + ref_mean[:, None]
        out[i][:, m] = matched.clamp(-1, 1)
    return out
