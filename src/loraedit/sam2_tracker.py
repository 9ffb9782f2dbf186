"""Track a clicked object through a video with SAM2 (or SAM3's tracker) from a local safetensors folder.

transformers ships the video trackers natively: `Sam2VideoModel` + `Sam2VideoProcessor` (SAM 2 / 2.1)
and `Sam3TrackerVideoModel` + `Sam3TrackerVideoProcessor` (SAM 3's tracker) share one API. The folder's
config.json `model_type` picks the pair. The original `.pt` checkpoints are pickles and are never opened;
use a transformers-format folder (`config.json`, `model.safetensors`, `processor_config.json`), e.g. one
written by `save_pretrained`.

Prompts are points (label 1 = on the object, 0 = not on it) and at most one box per frame, on any
frames; they all describe one object. Tracking runs forward from the first prompted frame to the end,
then backward from it to frame 0, so an object clicked mid-clip is masked in every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import hf_folder, media

#: config.json model_type -> (model class, processor class), all in transformers.
TRACKERS = {
    "sam2_video": ("Sam2VideoModel", "Sam2VideoProcessor"),
    "sam3_tracker_video": ("Sam3TrackerVideoModel", "Sam3TrackerVideoProcessor"),
}
PROCESSOR_FILES = ("processor_config.json|preprocessor_config.json",)
OBJECT_ID = 1


@dataclass(frozen=True)
class Prompt:
    """The user's clicks on one frame (source-video pixel coordinates)."""

    frame: int
    points: tuple[tuple[float, float, int], ...] = ()  # (x, y, label)
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1)


@dataclass
class TrackResult:
    outlines: torch.Tensor  # [T, H, W] {0, 1}
    seconds_per_frame: float
    frames_tracked: list[int] = field(default_factory=list)


def folder_problems(path: Path, option: str = "--sam") -> list[str]:
    return hf_folder.folder_problems(path, option, "SAM2 video tracker", tuple(TRACKERS), PROCESSOR_FILES)


class Sam2Tracker:
    """A loaded tracker; `track` masks one object through a video."""

    def __init__(self, folder: Path, device: str | None = None):
        import transformers

        hf_folder.check_folder(folder, "--sam", "SAM2 video tracker", tuple(TRACKERS), PROCESSOR_FILES)
        model_name, processor_name = TRACKERS[hf_folder.model_type(folder)]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # bf16 on a GPU as the SAM2 authors run it; float32 on the CPU (bf16 matmuls are slow there)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = hf_folder.load_model(getattr(transformers, model_name), folder).to(self.device, self.dtype)
        self.processor = hf_folder.load_processor(getattr(transformers, processor_name), folder)

    @torch.inference_mode()
    def track(self, video: torch.Tensor, prompts: Sequence[Prompt], progress: bool = True) -> TrackResult:
        """[T, 3, H, W] in [-1, 1] + prompts -> the object's outline in every frame, [T, H, W] {0, 1}."""
        import time

        frames, _, height, width = video.shape
        # 1. The session holds the preprocessed frames (on the CPU: a long clip at 1024 px is gigabytes).
        session = self.processor.init_video_session(
            video=media.to_uint8(video), inference_device=self.device, video_storage_device="cpu", dtype=self.dtype)
        # 2. The clicks, frame by frame, all for one object.
        for prompt in sorted(prompts, key=lambda p: p.frame):
            kwargs = {}
            if prompt.points:
                kwargs["input_points"] = [[[[x, y] for x, y, _ in prompt.points]]]  # [image, object, point, xy]
                kwargs["input_labels"] = [[[label for _, _, label in prompt.points]]]
            if prompt.box is not None:
                kwargs["input_boxes"] = [[list(prompt.box)]]  # [image, box, xyxy]
            self.processor.add_inputs_to_inference_session(
                inference_session=session, frame_idx=prompt.frame, obj_ids=OBJECT_ID, **kwargs)
        # 3. Forward from the first prompted frame to the end, then backward from it to frame 0.
        start = min(p.frame for p in prompts)
        outlines = torch.zeros(frames, height, width)
        done: list[int] = []
        began = time.perf_counter()
        bar = tqdm(total=frames, desc="tracking (SAM2)", disable=not progress, dynamic_ncols=True)
        for reverse in (False, True):
            if reverse and start == 0:
                break
            for out in self.model.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse):
                masks = self.processor.post_process_masks([out.pred_masks.float()], original_sizes=[[height, width]],
                                                          binarize=True)[0]  # [objects, 1, H, W] bool
                outlines[out.frame_idx] = masks.any(dim=0)[0].float().cpu()
                if out.frame_idx not in done:
                    done.append(out.frame_idx)
                    bar.update(1)
        bar.close()
        return TrackResult(outlines, (time.perf_counter() - began) / max(len(done), 1), sorted(done))
