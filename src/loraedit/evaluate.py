"""`loraedit eval`: the paper's metrics on real footage, with every choice that moves the numbers made explicit.

Metrics of one edited video (Table 1 of the paper, plus what a pixel-exact background allows):

* `clip_score`: mean over the scored frames of cos(CLIP(output_t), CLIP(edited first frame)). The paper's
  "CLIP score" (generated frames vs the edited first frame); 0.9172 for LoRA-Edit on the I2VEdit set.
* `input_similarity`: mean over the scored frames of cos(CLIP(output_t), CLIP(input_t)), frame by frame
  (the paper's "input similarity", 0.7608): the edit should keep the input's content and motion.
* `temporal_consistency`: mean of cos(CLIP(output_t), CLIP(output_t+1)) over consecutive scored frames.
* `bg_psnr` / `bg_ssim`: the output against the input outside the edit mask (`metrics.masked_psnr/ssim`),
  the scored frames only: what the method was told to keep.
* `ref_psnr` / `ref_ssim` (whole frame) and `ref_edit_psnr` (inside the mask) against a ground-truth edit.
* `deqa`: DeQA-Score (image quality, 1-5; the paper's 3.8013), merged from `tools/deqa_score.py`'s JSON,
  which runs in its own environment (it needs transformers 4.36; see the script).

Choices (recorded in every result's `settings`):
* CLIP model: a local folder in transformers' `CLIPModel` layout; the default the paper's numbers assume
  is openai/clip-vit-large-patch14 (ViT-L/14, 224 px). Embeddings are `get_image_features` (the projected
  image embedding), L2-normalised. Frames go through the folder's own `CLIPImageProcessor` (resize the
  short side, centre crop: a 832x480 frame loses its left and right sides, as in every CLIP score).
* Frames scored: `after-first` (default; frame 0 of a first-frame-guided edit *is* the given edit and
  would score a perfect 1.0) or `all`.
* Averaging: per video, the plain mean over scored frames (or frame pairs); over a suite, the plain mean
  over videos (every edit weighs the same, whatever its length); a metric a row lacks is left out of
  that mean, and the table says how many rows each mean covers.
* Alignment: the input, mask and reference are brought to the output's frames and size exactly as
  `loraedit edit` fits them (uniform 4k+1 frame choice, cover-crop; masks nearest).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import hf_folder, media
from .metrics import pixel_metrics, scored_frames
from .errors import InputError
from .report import write_json

__all__ = ["EvalConfig", "EvalInputs", "ClipEmbedder", "evaluate", "run_suite", "pixel_metrics", "clip_metrics",
           "format_table", "write_json"]

FRAME_SETS = ("after-first", "all")
METRIC_ORDER = ("clip_score", "input_similarity", "temporal_consistency", "bg_psnr", "bg_ssim", "ref_psnr",
                "ref_ssim", "ref_edit_psnr", "deqa")


@dataclass(frozen=True)
class EvalConfig:
    clip: Path | None = None  # local CLIP folder; None = no CLIP metrics
    frame_set: str = "after-first"
    device: str | None = None
    progress: bool = True
    deqa_json: Path | None = None
    batch_size: int = 16


@dataclass(frozen=True)
class EvalInputs:
    input: Path
    output: Path
    mask: Path | None = None
    edited_first_frame: Path | None = None  # None = the output's frame 0
    reference: Path | None = None


# ---- CLIP ---------------------------------------------------------------------------------------------


class ClipEmbedder:
    """Unit-length CLIP image embeddings from a local folder (transformers `CLIPModel` + its image processor)."""

    def __init__(self, folder: Path, device: str | None = None, batch_size: int = 16):
        from transformers import CLIPImageProcessor, CLIPModel

        hf_folder.check_folder(folder, "--clip", "CLIP", ("clip",), ("preprocessor_config.json",))
        self.folder = Path(folder)
        self.fingerprint = hf_folder.fingerprint(self.folder)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = hf_folder.load_model(CLIPModel, self.folder).to(self.device)
        self.processor = hf_folder.load_processor(CLIPImageProcessor, self.folder)
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed(self, frames: torch.Tensor, progress: bool = False, desc: str = "CLIP") -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, D], each row of length 1."""
        out = []
        for start in tqdm(range(0, frames.shape[0], self.batch_size), desc=desc, disable=not progress, leave=False,
                          dynamic_ncols=True):
            images = list(media.to_uint8(frames[start:start + self.batch_size]))
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
            features = self.model.get_image_features(pixel_values=pixels)
            # transformers 5 returns the projected embedding as pooler_output; 4.x returned the tensor itself
            features = features if isinstance(features, torch.Tensor) else features.pooler_output
            out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out)

    def settings(self) -> dict:
        return {"clip_model": str(self.folder), "clip_fingerprint": self.fingerprint,
                "clip_embedding": "CLIPModel.get_image_features (projected), L2-normalised",
                "clip_preprocessing": "the folder's CLIPImageProcessor (resize short side, centre crop)"}


def clip_metrics(output: torch.Tensor, source: torch.Tensor, edited: torch.Tensor, frames: list[int]) -> dict:
    """Means over `frames` of the cosines (embeddings [T, D] unit length; `edited` [D]), see the module."""
    idx = torch.tensor(frames)
    pairs = [t for t in frames if t + 1 in frames]
    return {
        "clip_score": float((output[idx] @ edited).mean()),
        "input_similarity": float((output[idx] * source[idx]).sum(-1).mean()),
        "temporal_consistency": (float((output[pairs] * output[[t + 1 for t in pairs]]).sum(-1).mean())
                                 if pairs else float("nan")),
    }


# ---- pixels -------------------------------------------------------------------------------------------


def fit_to(video: torch.Tensor, frames: int, size: tuple[int, int], what: str, mode: str = "bilinear") -> torch.Tensor:
    """`video` ([T, 3, H, W] or masks [T, H, W]) at the output's frame count and (width, height), as edit fits it."""
    n = video.shape[0]
    if n < frames:
        raise InputError(f"{what} has {n} frames, fewer than the output's {frames}: give the video the output was "
                         "made from")
    if n != frames and (frames - 1) % 4:
        raise InputError(f"{what} has {n} frames and the output {frames} (not 4k+1, so not loraedit's uniform choice): "
                         f"give {what} with exactly the output's {frames} frames")
    picked = video if n == frames else video[media.uniform_frame_indices(n, frames)]
    return media.cover_crop(picked, size, mode=mode)


# ---- one video ----------------------------------------------------------------------------------------


def _read(found: list[str], fn, path: Path, option: str):
    try:
        return fn(path)
    except InputError as exc:
        found.extend(f"{option}: {p}" for p in exc.problems)
        return None


def evaluate(inputs: EvalInputs, cfg: EvalConfig, embedder: ClipEmbedder | None = None) -> dict:
    """Score one edited video; returns {"metrics", "settings", "inputs"} (see the module for each choice)."""
    # 1. Every input read and checked before a model loads; all problems at once.
    found = config_problems(cfg) if embedder is None else []
    output = _read(found, media.read_video, inputs.output, "--output")
    source = _read(found, media.read_video, inputs.input, "--input")
    masks = _read(found, media.read_masks, inputs.mask, "--mask") if inputs.mask is not None else None
    edited = (_read(found, media.read_image, inputs.edited_first_frame, "--edited-first-frame")
              if inputs.edited_first_frame is not None else None)
    reference = _read(found, media.read_video, inputs.reference, "--reference") if inputs.reference else None
    if source is not None and masks is not None:
        try:
            media.check_masks_match(masks, source[0], inputs.mask)
        except InputError as exc:
            found.extend(exc.problems)
    if found:
        raise InputError(*found)
    # 2. Everything at the output's frames and size.
    out, fps = output
    frames, size = out.shape[0], (out.shape[-1], out.shape[-2])
    src = fit_to(source[0], frames, size, f"--input {inputs.input}")
    ref = fit_to(reference[0], frames, size, f"--reference {inputs.reference}") if reference is not None else None
    m = fit_to(masks, frames, size, f"--mask {inputs.mask}", mode="nearest") if masks is not None else None
    first = media.cover_crop(edited, size) if edited is not None else out[0]
    # 3. Pixel metrics, CLIP metrics, DeQA.
    result = pixel_metrics(out, src, m, ref, cfg.frame_set)
    settings = {"frame_set": cfg.frame_set, "frames_scored": scored_frames(cfg.frame_set, frames),
                "averaging": "plain mean over the scored frames (frame pairs for temporal_consistency)",
                "edited_first_frame": str(inputs.edited_first_frame or "the output's frame 0"),
                "alignment": f"input, mask and reference fitted to the output's {frames} frames at "
                             f"{size[0]}x{size[1]} (uniform 4k+1 choice, cover-crop)", "fps": fps}
    if cfg.clip is not None or embedder is not None:
        embedder = embedder or ClipEmbedder(cfg.clip, cfg.device, cfg.batch_size)
        embedded = embedder.embed(torch.cat([out, src, first[None]]), progress=cfg.progress)
        result |= clip_metrics(embedded[:frames], embedded[frames:2 * frames], embedded[-1],
                               scored_frames(cfg.frame_set, frames))
        settings |= embedder.settings()
    if cfg.deqa_json is not None:
        result["deqa"] = deqa_score(cfg.deqa_json, inputs.output)
    return {"metrics": {k: result[k] for k in METRIC_ORDER if k in result}, "settings": settings,
            "inputs": {k: (str(v) if v is not None else None) for k, v in vars(inputs).items()}}


def config_problems(cfg: EvalConfig) -> list[str]:
    problems = []
    if cfg.frame_set not in FRAME_SETS:
        problems.append(f"--frame-set {cfg.frame_set!r} is unknown: choose {' or '.join(FRAME_SETS)}")
    if cfg.clip is not None:
        problems += hf_folder.folder_problems(cfg.clip, "--clip", "CLIP", ("clip",), ("preprocessor_config.json",))
    if cfg.deqa_json is not None:
        try:
            _deqa_entries(cfg.deqa_json)
        except InputError as exc:
            problems += list(exc.problems)
    return problems


# ---- DeQA-Score (computed elsewhere) ------------------------------------------------------------------


def _deqa_entries(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
        entries = data["videos"]
        assert isinstance(entries, list) and all("path" in e and "score" in e for e in entries)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise InputError(f"--deqa-json {path} is not the JSON tools/deqa_score.py writes ({{'videos': [{{'path', "
                         "'score'}}, ...]}}): run the script on the outputs") from None
    return entries


def deqa_score(path: Path, video: Path) -> float | None:
    """The DeQA score of `video` from the script's JSON: by resolved path, else by a unique file name."""
    entries = _deqa_entries(path)
    target = Path(video).resolve()
    exact = [e for e in entries if Path(e["path"]).resolve() == target]
    named = [e for e in entries if Path(e["path"]).name == target.name]
    hit = exact or (named if len(named) == 1 else [])
    return float(hit[0]["score"]) if hit else None


# ---- a suite of cases ---------------------------------------------------------------------------------


def suite_cases(suite: Path, outputs: Path | None = None) -> list[dict]:
    """Every (case, edited first frame) of a suite folder with the files that belong to it (see `run_suite`)."""
    suite = Path(suite)
    if not suite.is_dir():
        raise InputError(f"--suite {suite} is not a folder: give a folder of case folders (CASE/source.mp4, ...)")
    cases = []
    for case in sorted(p for p in suite.iterdir() if p.is_dir() and not p.name.startswith(".")):
        source = next((p for p in sorted(case.iterdir()) if p.stem == "source" and not p.name.startswith(".")), None)
        if source is None:
            continue
        edited_dir = case / "edited"
        edits = sorted(p for p in (edited_dir.iterdir() if edited_dir.is_dir() else case.glob("edited*"))
                       if p.is_file() and p.suffix.lower() in media.IMAGE_EXTENSIONS and not p.name.startswith("."))
        mask = next((p for p in (case / "mask", case / "masks", *sorted(case.glob("mask.*"))) if p.exists()), None)
        out_dir = (Path(outputs) / case.name) if outputs is not None else case / "outputs"
        for edit in edits:
            reference = next(iter(sorted((case / "reference").glob(f"{edit.stem}.*"))), None) \
                if (case / "reference").is_dir() else None
            cases.append({"case": f"{case.name}/{edit.stem}", "inputs": EvalInputs(
                source, out_dir / f"{edit.stem}.mp4", mask, edit, reference)})
    if not cases:
        raise InputError(f"--suite {suite} holds no case: each case is a folder with source.mp4 (or a source/ folder "
                         "of frames) and edited first frames in edited/ (or edited*.png)")
    return cases


def run_suite(suite: Path, cfg: EvalConfig, outputs: Path | None = None) -> dict:
    """Score every case of a suite folder laid out like the I2VEdit test set.

    SUITE/CASE/source.mp4 (or source/ frames), SUITE/CASE/edited/NAME.png (one or more edited first
    frames; or SUITE/CASE/edited*.png), optional SUITE/CASE/mask/ (or mask.mp4) and
    SUITE/CASE/reference/NAME.mp4, and the output to score at SUITE/CASE/outputs/NAME.mp4 (or
    OUTPUTS/CASE/NAME.mp4). A missing output is listed, not an error: the table says how to make it.
    """
    cases = suite_cases(suite, outputs)
    problems = config_problems(cfg)
    if problems:
        raise InputError(*problems)
    embedder = ClipEmbedder(cfg.clip, cfg.device, cfg.batch_size) if cfg.clip is not None else None
    rows, settings = [], {}
    for item in tqdm(cases, desc="scoring cases", disable=not cfg.progress, dynamic_ncols=True):
        inputs: EvalInputs = item["inputs"]
        if not inputs.output.is_file():
            rows.append({"case": item["case"], "missing": f"no {inputs.output} (make it with `loraedit edit --video "
                         f"{inputs.input} --edited-first-frame {inputs.edited_first_frame} --out {inputs.output} ...`)"})
            continue
        result = evaluate(inputs, cfg, embedder)
        settings = result["settings"]
        rows.append({"case": item["case"], **result["metrics"]})
    scored = [r for r in rows if "missing" not in r]
    mean = {}
    for key in METRIC_ORDER:
        values = [r[key] for r in scored if r.get(key) is not None and math.isfinite(r[key])]
        if values:
            mean[key] = sum(values) / len(values)
            mean[f"{key}_n"] = len(values)
    settings = {k: v for k, v in settings.items() if k not in ("edited_first_frame", "frames_scored", "fps")}
    settings["suite_averaging"] = "plain mean over the scored videos (each edit weighs the same)"
    return {"rows": rows, "mean": mean, "settings": settings, "suite": str(suite)}


def format_table(rows: list[dict], mean: dict | None = None) -> str:
    """A markdown table: one row per video, the mean last (with how many videos each mean covers)."""
    keys = [k for k in METRIC_ORDER if any(k in r for r in rows)]
    lines = ["| case | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]

    def cell(value) -> str:
        return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"

    for r in rows:
        if "missing" in r:
            lines.append(f"| {r['case']} | missing: {r['missing']} |")
        else:
            lines.append(f"| {r['case']} | " + " | ".join(cell(r.get(k)) for k in keys) + " |")
    if mean:
        shown = (f"{cell(mean.get(k))} (n={mean.get(f'{k}_n', 0)})" for k in keys)
        lines.append("| **mean** | " + " | ".join(shown) + " |")
    return "\n".join(lines)
