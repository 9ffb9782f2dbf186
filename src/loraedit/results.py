"""What `api.edit` and `api.sample` hand back: the edited video and what was written with it, typed.

Before this, a caller that wanted more than the video tensor (the web app: the prompts a run used, the LoRA
files it sampled with) read them back from the JSON files written beside the video. `EditResult` carries
them from the run itself; the files stay (they are for people and for later runs), but no caller in the
package has to parse them to learn what it just did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .report import result_paths


@dataclass(frozen=True)
class EditResult:
    """One generated video: the frames, where they were written, the settings written beside them (the
    `settings` of `<out>.metrics.json`: prompts, sampler, seed...) and the LoRA files sampled with."""

    video: torch.Tensor  # [T, 3, H, W] in [-1, 1]
    out: Path  # the mp4
    settings: dict = field(default_factory=dict)
    loras: tuple[Path, ...] = ()

    @property
    def files(self) -> dict[str, Path]:
        """The files written beside the video (`report.result_paths`): contact sheet, side by side, metrics, report."""
        return result_paths(self.out)

    @property
    def prompts(self) -> dict[str, str]:
        """The prompts the run used, captions included: `prompt` always, `train_prompt` when it trained."""
        return {k: self.settings[k] for k in ("train_prompt", "prompt") if k in self.settings}
