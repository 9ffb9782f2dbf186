"""This session's edits ("my edits"): each result with its settings, and the command line that repeats it.

The command is built from the very configs the job ran with (`ClipInputs`, `RunOptions`, `TrainConfig`,
`SampleConfig`: everything the page sets; what it does not set is the command line's default too), naming
the session's stored files, so `loraedit edit ...` / `loraedit sample ...` on the
server makes the same video (tested: equal up to float rounding). `--out` is the result's bare name, so a
repeat never overwrites the session's file.
"""

from __future__ import annotations

import html
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..api import ClipInputs, RunOptions, SampleConfig
from ..config import TrainConfig


@dataclass(frozen=True)
class Edit:
    """One result of this session, as the "my edits" list shows it."""

    video: Path
    kind: str  # "train and edit" or "sample with a LoRA"
    settings: str  # a one-line summary of what was set
    metrics: dict[str, float]
    seconds: float
    command: str


def repeat_command(model: str, inputs: ClipInputs, edited_first: Path, out: Path, opts: RunOptions,
                   scfg: SampleConfig, tcfg: TrainConfig | None = None, loras: tuple[Path, ...] = ()) -> str:
    """`loraedit edit` (with `tcfg`) or `loraedit sample` (with `loras`) giving the same result, as a shell line."""
    args = ["loraedit", "edit" if tcfg is not None else "sample", "--model", str(model), "--video", str(inputs.video),
            "--mask", str(inputs.mask), "--edited-first-frame", str(edited_first), "--out", str(out)]
    if inputs.frames is not None:
        args += ["--frames", str(inputs.frames)]
    if inputs.size is not None:
        args += ["--size", f"{inputs.size[0]}x{inputs.size[1]}"]
    for frame in inputs.edited_frames if tcfg is not None else ():
        args += ["--edited-frame", f"{frame.index}:{frame.image}" + (f":{frame.mask}" if frame.mask else "")]
    args += ["--mode", opts.mode, "--prompt", opts.prompt]
    if tcfg is not None and opts.train_prompt is not None:
        args += ["--train-prompt", opts.train_prompt]
    if opts.cache_dir is not None:
        args += ["--cache-dir", str(opts.cache_dir)]
    if opts.device is not None:
        args += ["--device", opts.device]
    if tcfg is not None:
        args += ["--rank", str(tcfg.rank), "--lr", f"{tcfg.learning_rate:g}", "--stage1-steps", str(tcfg.stage1_steps)]
        if tcfg.stage2_steps is not None:
            args += ["--stage2-steps", str(tcfg.stage2_steps)]
    for path in loras:
        args += ["--lora", str(path)]
    args += ["--steps", str(scfg.steps), "--seed", str(scfg.seed)]
    if scfg.guidance is not None:
        args += ["--guidance", f"{scfg.guidance:g}"]
    if scfg.negative_prompt is not None:
        args += ["--negative-prompt", scfg.negative_prompt]
    if scfg.first_block_cache:
        args += ["--first-block-cache", f"{scfg.first_block_cache:g}"]
    return shlex.join(args)


def edits_markdown(edits: list[Edit]) -> str:
    """The "my edits" list, newest first: what each was, its settings, background PSNR and the command."""
    if not edits:
        return "no edits yet in this session"
    rows = []
    for edit in reversed(edits):
        psnr = edit.metrics.get("bg_psnr")
        score = f", bg_psnr {psnr:.2f} dB" if psnr is not None else ""
        rows.append(f"- **{edit.video.name}** ({edit.kind}, {edit.seconds} s{score}): {html.escape(edit.settings)}"
                    f"\n\n  ```\n  {edit.command}\n  ```")
    return "\n".join(rows)
