"""The method itself: which pixels the model keeps, which it generates, and what it learns from.

Everything the paper (LoRA-Edit, Gao et al. 2025, Sec. 3) adds to a stock image-to-video model lives
here, as pure tensor functions: no files, no models, no devices. A backend turns a `Sample` into the
model's own input layout; this module decides what goes into it.

Conventions (all tensors float32):
- video:      [T, 3, H, W] in [-1, 1]
- edit masks: [T, H, W] in {0, 1}, 1 = the edit may change this pixel (the user's mask, white)
- keep mask:  [T, H, W] in {0, 1}, 1 = known pixel the model must keep (the paper's M_cond)
- "blank" pixels of a condition video are 0, i.e. mid-grey in [-1, 1] (Wan's unknown value).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Sample:
    """One sample in pixel space: what the model sees (condition) and, for training, what it should make.

    `clip_image` is the frame whose CLIP embedding conditions Wan2.1's cross-attention (unused by models
    without an image encoder). `target` is None for an inference condition.
    """

    name: str
    condition_video: torch.Tensor  # [T, 3, H, W], 0 where keep_mask == 0
    keep_mask: torch.Tensor  # [T, H, W], 1 = keep
    clip_image: torch.Tensor  # [3, H, W]
    prompt: str
    target: torch.Tensor | None = None  # [T, 3, H, W]

    @property
    def num_frames(self) -> int:
        return self.condition_video.shape[0]


# ----------------------------------------------------------------------------------------------------
# Masks and condition videos (pixel space)
# ----------------------------------------------------------------------------------------------------


def keep_mask_from_edit_masks(edit_masks: torch.Tensor) -> torch.Tensor:
    """M_cond of the paper (Sec. 3.3): frame 0 fully known, later frames known outside the edit region.

    Frame 0 is all ones because at inference it is the user's edited first frame, given whole.
    """
    _check_masks(edit_masks)
    keep = 1.0 - edit_masks.float()
    keep[0] = 1.0
    return keep


def first_frame_keep_mask(num_frames: int, height: int, width: int) -> torch.Tensor:
    """The standard I2V mask: frame 0 known, every later frame generated."""
    keep = torch.zeros(num_frames, height, width)
    keep[0] = 1.0
    return keep


def blank_unknown(video: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """V_cond: the video with every pixel the model must generate set to 0 (mid-grey)."""
    if video.shape[0] != keep_mask.shape[0] or video.shape[-2:] != keep_mask.shape[-2:]:
        raise ValueError(f"video {tuple(video.shape)} and keep mask {tuple(keep_mask.shape)} do not match")
    return video * keep_mask[:, None]


# ----------------------------------------------------------------------------------------------------
# Training samples
# ----------------------------------------------------------------------------------------------------


def motion_sample(video: torch.Tensor, edit_masks: torch.Tensor, prompt: str, name: str = "motion") -> Sample:
    """Stage 1 (Sec. 3.3.1): learn the input video's motion, conditioned on its own unedited region.

    Target is the input video; the condition shows frame 0 whole and the background of every later
    frame, so the LoRA learns to generate the masked region from the first frame and the motion.
    """
    _check_video_and_masks(video, edit_masks)
    keep = keep_mask_from_edit_masks(edit_masks)
    return Sample(name, blank_unknown(video, keep), keep, video[0], prompt, target=video)


def appearance_sample(
    frame: torch.Tensor, edited_frame: torch.Tensor, edit_mask: torch.Tensor, prompt: str, name: str = "appearance"
) -> Sample:
    """Stage 2 (Sec. 3.3.2): one edited later frame as a single-frame sample (appearance, no motion).

    Unlike every video sample, this frame's own mask is *not* all ones: the condition is the unedited
    frame with its edit region blanked, the target the user's edited frame. CLIP sees the unedited
    frame, as in the authors' code.
    """
    if frame.shape != edited_frame.shape or frame.shape[-2:] != edit_mask.shape[-2:]:
        raise ValueError(
            f"frame {tuple(frame.shape)}, edited frame {tuple(edited_frame.shape)} and mask "
            f"{tuple(edit_mask.shape)} must share one size"
        )
    keep = (1.0 - edit_mask.float())[None]  # [1, H, W]
    return Sample(name, blank_unknown(frame[None], keep), keep, frame, prompt, target=edited_frame[None])


def naive_sample(video: torch.Tensor, prompt: str, name: str = "naive") -> Sample:
    """The naive-LoRA baseline (Sec. 3.1): the standard I2V condition, frame 0 then nothing."""
    t, _, h, w = video.shape
    keep = first_frame_keep_mask(t, h, w)
    return Sample(name, blank_unknown(video, keep), keep, video[0], prompt, target=video)


def clip_starts(num_frames: int, clip_frames: int) -> list[int]:
    """Start frames of overlapping clips that share their boundary frames (Sec. 4.5, low-cost).

    49 frames in 13-frame clips gives starts 0, 12, 24, 36 (frames 1-13, 13-25, 25-37, 37-49). When the
    clips do not tile the video exactly, the last clip is moved back to end on the last frame.
    """
    if clip_frames < 5 or (clip_frames - 1) % 4 != 0:
        raise ValueError(f"clip length must be 4k+1 frames and at least 5 (a 1-frame clip is all known and "
                         f"teaches no motion), got {clip_frames}")
    if clip_frames >= num_frames:
        return [0]
    stride = clip_frames - 1
    starts = list(range(0, num_frames - clip_frames + 1, stride))
    if starts[-1] + clip_frames < num_frames:
        starts.append(num_frames - clip_frames)
    return starts


def low_cost_samples(
    video: torch.Tensor, edit_masks: torch.Tensor, prompt: str, clip_frames: int = 13
) -> list[Sample]:
    """Low-cost training (Sec. 4.5): each overlapping clip is a stage-1 sample of its own.

    Each clip's first frame plays the role of frame 0 (kept whole), exactly as for the full video.
    """
    _check_video_and_masks(video, edit_masks)
    return [
        motion_sample(video[s : s + clip_frames], edit_masks[s : s + clip_frames], prompt, name=f"clip{s}")
        for s in clip_starts(video.shape[0], clip_frames)
    ]


def stage2_schedule(num_motion_samples: int, num_edited_frames: int, repeats: int = 9) -> list[int]:
    """One epoch of stage 2 as sample indices: each motion sample once, each edited frame `repeats` times.

    Indices 0..m-1 are the motion samples (the video, or its clips); m..m+n-1 the edited frames. The
    authors' dataset for one edited frame (the video once, the frame 9 times; ~10 epochs = ~100 steps).
    """
    edited = [num_motion_samples + i for i in range(num_edited_frames) for _ in range(repeats)]
    return list(range(num_motion_samples)) + edited


# ----------------------------------------------------------------------------------------------------
# Inference conditions
# ----------------------------------------------------------------------------------------------------


def mask_aware_condition(
    video: torch.Tensor, edit_masks: torch.Tensor, edited_first_frame: torch.Tensor, prompt: str
) -> Sample:
    """Inference (Sec. 3.3): the training condition with frame 0 replaced by the edited first frame.

    The background of every later frame stays given, so the model only generates inside the mask.
    """
    _check_video_and_masks(video, edit_masks)
    if edited_first_frame.shape != video.shape[1:]:
        raise ValueError(f"edited first frame {tuple(edited_first_frame.shape)} != frame {tuple(video.shape[1:])}")
    keep = keep_mask_from_edit_masks(edit_masks)
    condition = blank_unknown(video, keep).clone()
    condition[0] = edited_first_frame
    return Sample("mask-aware", condition, keep, edited_first_frame, prompt)


def first_frame_condition(edited_first_frame: torch.Tensor, num_frames: int, prompt: str) -> Sample:
    """The stock I2V condition from the edited first frame (no-LoRA and naive-LoRA inference)."""
    _, h, w = edited_first_frame.shape
    keep = first_frame_keep_mask(num_frames, h, w)
    condition = torch.zeros(num_frames, 3, h, w)
    condition[0] = edited_first_frame
    return Sample("first-frame", condition, keep, edited_first_frame, prompt)


# ----------------------------------------------------------------------------------------------------
# The keep mask on the latent grid (which cells count as known)
# ----------------------------------------------------------------------------------------------------


def downsample_keep_mask(keep_mask: torch.Tensor, factor: int, mode: str = "maxpool") -> torch.Tensor:
    """Pixel keep mask [T, H, W] -> latent-grid keep mask [T, H/f, W/f], per pixel frame.

    mode "maxpool" (ours): a latent cell is kept only if every pixel under it is kept, i.e. the edit
    mask is max-pooled, so no edited pixel is ever silently preserved (thin masks survive).
    mode "nearest" (the authors' code): nearest-neighbour resize thresholded at 0.5; it can drop thin
    edit regions entirely.
    """
    t, h, w = keep_mask.shape
    if h % factor or w % factor:
        raise ValueError(f"mask size {h}x{w} is not a multiple of the spatial factor {factor}")
    keep = keep_mask.float()[:, None]  # [T, 1, H, W]
    if mode == "maxpool":
        edit = F.max_pool2d(1.0 - keep, kernel_size=factor, stride=factor)
        out = 1.0 - edit
    elif mode == "nearest":
        out = (F.interpolate(keep, size=(h // factor, w // factor), mode="nearest") > 0.5).float()
    else:
        raise ValueError(f"unknown mask downsampling mode {mode!r}: choose 'maxpool' or 'nearest'")
    return out[:, 0]


# ----------------------------------------------------------------------------------------------------
# The modes: one recipe each (training samples + inference condition), for the jobs and the bench alike
# ----------------------------------------------------------------------------------------------------

#: mask-aware: the method; naive: a LoRA on the standard I2V condition (Sec. 3.1); no-lora: stock I2V;
#: mask-no-lora: the mask-aware condition on the base model (Fig. 2, case 3).
MODES = ("mask-aware", "naive", "no-lora", "mask-no-lora")
TRAINING_MODES = ("mask-aware", "naive")


@dataclass(frozen=True)
class EditedFrameSample:
    """An edited later frame in pixels: its index, the source frame, the user's edit and its edit mask, and
    the prompt its stage-2 sample trains on (the authors use each edited frame's own caption; None: the
    motion samples' prompt)."""

    index: int
    frame: torch.Tensor  # [3, H, W]
    edited: torch.Tensor  # [3, H, W]
    mask: torch.Tensor  # [H, W]
    prompt: str | None = None


def training_samples(mode: str, video: torch.Tensor, edit_masks: torch.Tensor, prompt: str, *,
                     edited_frames: tuple[EditedFrameSample, ...] = (), low_cost_clip_frames: int | None = None,
                     ) -> tuple[list[Sample], list[Sample]]:
    """(motion samples, edited-frame samples) a mode trains on; `low_cost_clip_frames` trains the motion on
    overlapping clips of that length (Sec. 4.5). Naive ignores the mask and the edited frames."""
    if mode not in TRAINING_MODES:
        raise ValueError(f"mode {mode!r} trains nothing: training modes are {', '.join(TRAINING_MODES)}")
    if mode == "naive":
        return [naive_sample(video, prompt)], []
    if low_cost_clip_frames:
        motion = low_cost_samples(video, edit_masks, prompt, low_cost_clip_frames)
    else:
        motion = [motion_sample(video, edit_masks, prompt)]
    edited = [appearance_sample(f.frame, f.edited, f.mask, f.prompt or prompt, name=f"frame{f.index}")
              for f in edited_frames]
    return motion, edited


def inference_condition(mode: str, video: torch.Tensor, edit_masks: torch.Tensor, edited_first_frame: torch.Tensor,
                        prompt: str) -> Sample:
    """The condition a mode samples from: the mask-aware one (V_cond with the edited frame 0) or stock I2V's."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose {', '.join(MODES)}")
    if mode in ("mask-aware", "mask-no-lora"):
        return mask_aware_condition(video, edit_masks, edited_first_frame, prompt)
    return first_frame_condition(edited_first_frame, video.shape[0], prompt)


# ----------------------------------------------------------------------------------------------------
# Optional post-processing
# ----------------------------------------------------------------------------------------------------


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow {0, 1} masks [T, H, W] by `radius` pixels (a (2r+1)-square), frame by frame."""
    if radius <= 0:
        return masks.float()
    return F.max_pool2d(masks.float()[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]


def paste_background(output: torch.Tensor, video: torch.Tensor, edit_masks: torch.Tensor,
                     feather: int = 0) -> torch.Tensor:
    """Copy the input's pixels back outside the edit mask in frames after the first (off by default).

    With `feather` > 0 the generated pixels fade into the input over `feather` pixels *outside* the mask
    (a linear ramp), so the seam is soft and every pixel farther than that from the mask is bit-exact.
    Off by default so that what is measured is the method itself, not this paste (*ours*, issue 13).
    """
    _check_video_and_masks(video, edit_masks)
    generated = sum(dilate(edit_masks, r) for r in range(feather + 1)) / (feather + 1)  # 1 inside, ramp outside
    generated[0] = 1.0  # frame 0 is the user's edited frame as generated
    weight = generated[:, None]
    return output * weight + video * (1 - weight)


# ----------------------------------------------------------------------------------------------------


def _check_masks(edit_masks: torch.Tensor) -> None:
    if edit_masks.dim() != 3:
        raise ValueError(f"edit masks must be [T, H, W], got {tuple(edit_masks.shape)}")


def _check_video_and_masks(video: torch.Tensor, edit_masks: torch.Tensor) -> None:
    _check_masks(edit_masks)
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [T, 3, H, W], got {tuple(video.shape)}")
    if video.shape[0] != edit_masks.shape[0] or video.shape[-2:] != edit_masks.shape[-2:]:
        raise ValueError(f"video {tuple(video.shape)} and edit masks {tuple(edit_masks.shape)} do not match")
