"""The three jobs a user runs: train a LoRA on a clip, sample an edit with it, or both (edit).

Each function runs the steps in order and nothing else: read and fit the media, build the method's
samples (`conditioning`), encode them once (`cache`), free the encoders, train (`train`), sample
(the backend's Wan pipeline with our condition), write the outputs (`media`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import conditioning, media
from .backends.wan import WAN_NEGATIVE_PROMPT, EncodedSample, WanBackend, load_wan
from .cache import TensorCache, content_key
from .errors import InputError
from .lora_io import load_lora, remove_lora
from .train import TrainConfig, train_lora

MODES = ("mask-aware", "naive", "no-lora", "mask-no-lora")
CONCEPT_TOKEN = "p3rs0n,"


@dataclass(frozen=True)
class EditedFrame:
    """A user-edited later frame: its index in the source video, the image, and optionally its own mask."""

    index: int
    image: Path
    mask: Path | None = None


@dataclass(frozen=True)
class ClipInputs:
    """The user's files and how to fit them to the model."""

    video: Path
    mask: Path
    frames: int | None = None  # 4k+1; None = the model's default
    size: tuple[int, int] | None = None  # (width, height); None = the model's working size
    edited_frames: tuple[EditedFrame, ...] = ()


@dataclass(frozen=True)
class SampleConfig:
    """Sampling settings; defaults are the authors' (30 steps, CFG 5, shift 5, Wan's negative prompt)."""

    steps: int = 30
    guidance: float = 5.0
    guidance_2: float | None = None  # Wan2.2's low-noise expert; None = same as guidance
    shift: float = 5.0
    seed: int = 0
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    paste_background: bool = False


@dataclass(frozen=True)
class RunOptions:
    """Where things go and how the method is run."""

    mode: str = "mask-aware"
    low_cost: bool = False
    low_cost_clip_frames: int = 13
    mask_mode: str = "maxpool"  # or "nearest" (the authors')
    prompt: str = ""  # caption of the edited first frame (inference)
    train_prompt: str | None = None  # caption of the input's first frame; None = prompt
    concept_token: str = CONCEPT_TOKEN
    cache_dir: Path | None = None
    progress: bool = True
    resume: bool = False
    device: str | None = None


@dataclass
class Clip:
    """The fitted clip: frames, edit masks, and the source arrays for edited-frame lookups."""

    video: torch.Tensor  # [T, 3, H, W]
    masks: torch.Tensor  # [T, H, W]
    fps: float
    source_video: torch.Tensor = field(repr=False)
    source_masks: torch.Tensor = field(repr=False)


# ---- model and media ------------------------------------------------------------------------------------


def resolve_model_dir(model: str) -> Path:
    """`toy` / `toy-wan2.2` -> the embedded toy model folder; anything else is a local folder path."""
    from .toyworld.models import toy_model_folder

    if model in ("toy", "toy-wan2.1"):
        return toy_model_folder("wan2.1")
    if model == "toy-wan2.2":
        return toy_model_folder("wan2.2")
    return Path(model).expanduser()


def load_backend(model: str, device: str | None = None) -> WanBackend:
    return load_wan(resolve_model_dir(model), torch.device(device) if device else None)


def fit_geometry(backend: WanBackend, inputs: ClipInputs) -> tuple[int, tuple[int, int]]:
    """The frame count and (width, height) to work at, validated against the model's constraints."""
    frames = inputs.frames or backend.default_frames
    size = inputs.size or backend.working_size
    multiple = backend.spatial_factor * 2  # VAE factor times the transformer's 2x2 patch
    if frames < 1 or (frames - 1) % backend.temporal_factor:
        raise InputError(f"--frames {frames} is not {backend.temporal_factor}k+1: use e.g. "
                         f"{(frames - 1) // backend.temporal_factor * backend.temporal_factor + 1}")
    if size[0] % multiple or size[1] % multiple or min(size) <= 0:
        raise InputError(f"--size {size[0]}x{size[1]} is not a multiple of {multiple} on both sides: use e.g. "
                         f"{size[0] // multiple * multiple}x{size[1] // multiple * multiple}")
    return frames, size


def load_clip(inputs: ClipInputs, frames: int, size: tuple[int, int]) -> Clip:
    """Read the video and masks, check they belong together, resample to `frames`, cover-crop to `size`."""
    source, fps = media.read_video(inputs.video)
    source_masks = media.read_masks(inputs.mask)
    media.check_masks_match(source_masks, source, inputs.mask)
    video = media.prepare_video(source, frames, size)
    masks = media.prepare_masks(source_masks, frames, size)
    empty = [i for i in range(1, frames) if masks[i].sum() == 0]
    if len(empty) == frames - 1:
        raise InputError(f"mask {inputs.mask} marks no pixel to edit in any frame: white (or opaque alpha) marks "
                         "the region the edit may change")
    return Clip(video, masks, fps * (frames - 1) / max(source.shape[0] - 1, 1), source, source_masks)


def load_edited_frame(path: Path, size: tuple[int, int], reference: torch.Tensor, what: str) -> torch.Tensor:
    """An edited image fitted like the video's frames (cover-crop)."""
    image = media.read_image(path)
    _, h, w = image.shape
    _, rh, rw = reference.shape
    if abs((w / h) / (rw / rh) - 1) > 0.01:
        print(f"note: {what} {path} is {w}x{h}, the video {rw}x{rh}: it is resized to cover and centre-cropped")
    return media.cover_crop(image, size)


def compose_prompt(token: str, caption: str) -> str:
    """The paper's prompt: the fixed concept token, then the caption."""
    return " ".join(part for part in (token.strip(), caption.strip()) if part)


# ---- encoding with a cache ------------------------------------------------------------------------------


class Encoder:
    """Encodes samples, prompts and images once per content; later runs read them from the cache."""

    def __init__(self, backend: WanBackend, cache_dir: Path | None, mask_mode: str):
        self.backend = backend
        self.cache = TensorCache(cache_dir)
        self.model_key = backend.fingerprint()
        self.mask_mode = mask_mode

    def prompt(self, text: str) -> torch.Tensor:
        return self.cache.get_or_compute("text", content_key(self.model_key, text),
                                         lambda: self.backend.encode_prompt(text))

    def image(self, image: torch.Tensor) -> torch.Tensor | None:
        if not self.backend.uses_clip:
            return None
        return self.cache.get_or_compute("clip", content_key(self.model_key, image),
                                         lambda: self.backend.encode_image(image))

    def latents(self, video: torch.Tensor) -> torch.Tensor:
        return self.cache.get_or_compute("latents", content_key(self.model_key, video),
                                         lambda: self.backend.encode_video(video))

    def condition(self, sample: conditioning.Sample) -> torch.Tensor:
        key = content_key(self.model_key, self.mask_mode, sample.condition_video, sample.keep_mask)
        return self.cache.get_or_compute("condition", key,
                                         lambda: self.backend.condition_tensor(sample, self.mask_mode))

    def sample(self, sample: conditioning.Sample) -> EncodedSample:
        return EncodedSample(
            name=sample.name, condition=self.condition(sample), text=self.prompt(sample.prompt),
            image=self.image(sample.clip_image),
            target=None if sample.target is None else self.latents(sample.target))


# ---- the jobs -------------------------------------------------------------------------------------------


def training_samples(clip: Clip, inputs: ClipInputs, opts: RunOptions, size: tuple[int, int]):
    """The method's training samples for the chosen mode: (motion samples, edited-frame samples)."""
    prompt = compose_prompt(opts.concept_token, opts.train_prompt if opts.train_prompt is not None else opts.prompt)
    if opts.mode == "naive":
        return [conditioning.naive_sample(clip.video, prompt)], []
    if opts.low_cost:
        motion = conditioning.low_cost_samples(clip.video, clip.masks, prompt, opts.low_cost_clip_frames)
    else:
        motion = [conditioning.motion_sample(clip.video, clip.masks, prompt)]
    edited = []
    for ef in inputs.edited_frames:
        if not 0 <= ef.index < clip.source_video.shape[0]:
            raise InputError(f"--edited-frame index {ef.index} is outside the video ({clip.source_video.shape[0]} "
                             f"frames, 0-{clip.source_video.shape[0] - 1}): give a frame index of the input video")
        frame = media.cover_crop(clip.source_video[ef.index], size)
        image = load_edited_frame(ef.image, size, clip.source_video[ef.index], "edited frame")
        mask = (media.prepare_masks(media.read_mask_image(ef.mask)[None], 1, size)[0] if ef.mask
                else media.cover_crop(clip.source_masks[ef.index], size, mode="nearest"))
        edited.append(conditioning.appearance_sample(frame, image, mask, prompt, name=f"frame{ef.index}"))
    return motion, edited


def train(model: str, inputs: ClipInputs, out_dir: Path, opts: RunOptions = RunOptions(),
          cfg: TrainConfig = TrainConfig(), backend: WanBackend | None = None) -> dict[str, Path]:
    """Train the LoRA for a clip (stage 1, then stage 2 if edited frames are given). Returns LoRA paths."""
    if opts.mode not in ("mask-aware", "naive"):
        raise InputError(f"--mode {opts.mode} trains no LoRA: train with mask-aware or naive")
    backend = backend or load_backend(model, opts.device)
    frames, size = fit_geometry(backend, inputs)
    clip = load_clip(inputs, frames, size)
    motion, edited = training_samples(clip, inputs, opts, size)
    encoder = Encoder(backend, opts.cache_dir, opts.mask_mode)
    encoded_motion = [encoder.sample(s) for s in motion]
    encoded_edited = [encoder.sample(s) for s in edited]
    backend.free_encoders()  # training needs none of them: text/CLIP dropped, VAE parked on CPU
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = train_lora(backend, encoded_motion, encoded_edited, cfg, out_dir, resume=opts.resume,
                       progress=opts.progress)
    _write_json(out_dir / "train_info.json", {
        "model": str(resolve_model_dir(model)), "kind": backend.kind, "mode": opts.mode, "frames": frames,
        "size": list(size), "low_cost": opts.low_cost, "edited_frames": [ef.index for ef in inputs.edited_frames],
        "seconds": round(time.perf_counter() - started, 2), "cache_hits": encoder.cache.hits,
        "cache_misses": encoder.cache.misses, "train_config": asdict(cfg)})
    return paths


@dataclass
class PreparedSampling:
    """Everything sampling needs, encoded, so that the encoders can be freed before training or sampling."""

    clip: Clip
    first_frame: torch.Tensor  # [3, H, W]
    condition: EncodedSample
    negative: torch.Tensor  # [512, D]


def prepare_sampling(backend: WanBackend, inputs: ClipInputs, edited_first_frame: Path, opts: RunOptions,
                     scfg: SampleConfig) -> PreparedSampling:
    """Read the clip and edited first frame, build the mode's inference condition and encode it."""
    if opts.mode not in MODES:
        raise InputError(f"--mode {opts.mode!r} is unknown: choose one of {', '.join(MODES)}")
    frames, size = fit_geometry(backend, inputs)
    clip = load_clip(inputs, frames, size)
    first = load_edited_frame(edited_first_frame, size, clip.source_video[0], "edited first frame")
    prompt = compose_prompt(opts.concept_token, opts.prompt)
    if opts.mode in ("mask-aware", "mask-no-lora"):
        condition = conditioning.mask_aware_condition(clip.video, clip.masks, first, prompt)
    else:
        condition = conditioning.first_frame_condition(first, frames, prompt)
    encoder = Encoder(backend, opts.cache_dir, opts.mask_mode)
    return PreparedSampling(clip, first, encoder.sample(condition), encoder.prompt(scfg.negative_prompt))


def generate(backend: WanBackend, prepared: PreparedSampling, out: Path, loras: list[Path], opts: RunOptions,
             scfg: SampleConfig) -> torch.Tensor:
    """Attach the LoRA file(s), sample, optionally paste the background back, write the outputs."""
    if opts.mode in ("mask-aware", "naive"):
        if len(loras) != len(backend.experts):
            raise InputError(f"this {backend.kind} model has {len(backend.experts)} expert(s) and needs as many "
                             f"LoRA files, got {len(loras)}: pass each with --lora")
        for path, expert in zip(loras, backend.experts):
            load_lora(Path(path), backend.transformer(expert.name), backend.fingerprint())
    backend.pipe.set_progress_bar_config(disable=not opts.progress, leave=False, desc="sampling")
    cond = prepared.condition
    video = backend.generate(cond.condition, prepared.first_frame, cond.text, prepared.negative, cond.image,
                             steps=scfg.steps, guidance=scfg.guidance, guidance_2=scfg.guidance_2, shift=scfg.shift,
                             seed=scfg.seed)
    if scfg.paste_background:
        video = conditioning.paste_background(video, prepared.clip.video, prepared.clip.masks)
    write_outputs(Path(out), video, prepared.clip)
    return video


def sample(model: str, inputs: ClipInputs, edited_first_frame: Path, out: Path, loras: list[Path] = (),
           opts: RunOptions = RunOptions(), scfg: SampleConfig = SampleConfig()) -> torch.Tensor:
    """Generate the edited video from the edited first frame (with trained LoRA(s) unless no-lora modes)."""
    if opts.mode in ("mask-aware", "naive") and not loras:
        raise InputError(f"--mode {opts.mode} needs a trained LoRA: pass --lora (from `loraedit train`)")
    backend = load_backend(model, opts.device)
    prepared = prepare_sampling(backend, inputs, edited_first_frame, opts, scfg)
    backend.free_encoders()
    return generate(backend, prepared, out, list(loras), opts, scfg)


def edit(model: str, inputs: ClipInputs, edited_first_frame: Path, out: Path, opts: RunOptions = RunOptions(),
         cfg: TrainConfig = TrainConfig(), scfg: SampleConfig = SampleConfig()) -> torch.Tensor:
    """The whole method: encode everything once, free the encoders, train the LoRA, sample the edit."""
    out = Path(out)
    backend = load_backend(model, opts.device)
    prepared = prepare_sampling(backend, inputs, edited_first_frame, opts, scfg)
    loras: list[Path] = []
    if opts.mode in ("mask-aware", "naive"):
        paths = train(model, inputs, work_dir_for(out), opts, cfg, backend=backend)
        loras = list(paths.values())
        for expert in backend.experts:  # sample through the saved files, exactly what the user keeps
            remove_lora(backend.transformer(expert.name))
    backend.free_encoders()
    return generate(backend, prepared, out, loras, opts, scfg)


def work_dir_for(out: Path) -> Path:
    """Where `edit` keeps its LoRA, checkpoints and logs: `<out stem>.work/` beside the output video."""
    return out.with_name(out.stem + ".work")


def write_outputs(out: Path, video: torch.Tensor, clip: Clip) -> None:
    """The edited mp4 and, beside it, a contact sheet (input | mask | output)."""
    media.write_video(out, video, fps=clip.fps)
    media.write_contact_sheet(out.with_suffix(".contact.png"),
                              {"input": clip.video, "mask": clip.masks, "output": video})


def _write_json(path: Path, data: dict) -> None:
    with media.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
