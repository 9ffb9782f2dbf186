"""Every setting of a run, typed, with its choices and defaults in one place.

The command line, the api, the web app and the bench build these frozen dataclasses; `validate` checks
them against the choices below before any model loads. Defaults are the authors' (METHOD.md) unless a
comment says otherwise; the toy world's bench overrides a few (`tools.quality.TOY_WORLD_TRAIN`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .backends.base import CLIP_VIEWS, SAMPLERS
from .appearance import APPEARANCE_REGIONS
from .conditioning import MODES, TRAINING_MODES
from .performance import PerformanceConfig

__all__ = ["APPEARANCE_REGIONS", "CLIP_VIEWS", "CONCEPT_TOKEN", "ClipInputs", "EditedFrame", "ExtraLora", "MASK_MODES",
           "MODES", "RunOptions", "SAMPLERS", "SampleConfig", "TIMESTEP_SAMPLING", "TRAINING_MODES", "TrainConfig"]

#: How training draws noise levels: uniform (the authors'), logit-normal, or uniform then flow-shifted.
TIMESTEP_SAMPLING = ("uniform", "logit-normal", "shifted")
#: Pixel keep mask -> latent grid: "maxpool" (no edited pixel is ever kept) or "nearest" (the authors').
MASK_MODES = ("maxpool", "nearest")

CONCEPT_TOKEN = "p3rs0n,"


@dataclass(frozen=True)
class EditedFrame:
    """A user-edited later frame: its index in the source video, the image, and optionally its own mask."""

    index: int
    image: Path
    mask: Path | None = None
    #: What the edited frame shows, in words. Stage 2 trains the frame on its own caption, as the authors'
    #: code does; None: a local Florence-2 writes it (--caption), else the training prompt is used.
    caption: str | None = None


@dataclass(frozen=True)
class ExtraLora:
    """A LoRA stacked beside the edit LoRA when sampling only (step distillation, a style): never trained on,
    so the edit LoRA always learns on the plain base. `weight` multiplies its own alpha / rank."""

    path: Path
    weight: float = 1.0


@dataclass(frozen=True)
class ClipInputs:
    """The user's files and how to fit them to the model."""

    video: Path
    mask: Path
    frames: int | None = None  # 4k+1; None = the model's default
    size: tuple[int, int] | None = None  # (width, height); None = the model's working size
    edited_frames: tuple[EditedFrame, ...] = ()
    strict: bool = False  # refuse edited images of another aspect ratio instead of cover-cropping them
    allow_empty_mask_frames: bool = False  # frames with nothing to edit are intended (see `validate`)
    allow_full_mask_frames: bool = False  # frames with nothing to keep are intended


@dataclass(frozen=True)
class SampleConfig:
    """Sampling settings; defaults are the authors' (30 steps, CFG 5, shift 5, Wan's negative prompt).

    CFG and the negative prompt default to the model's own (`loraedit_model.json`; Wan: the authors').
    """

    steps: int = 30
    guidance: float | None = None  # None: the model's own (5 for Wan)
    guidance_2: float | None = None  # Wan2.2's low-noise expert; None = same as guidance
    shift: float = 5.0
    sampler: str | None = None  # None: the folder's own solver (Wan: UniPC); "euler": the authors' inference
    seed: int = 0
    negative_prompt: str | None = None  # None: the model's own (Wan's standard list for Wan folders)
    paste_background: bool = False
    paste_feather: int = 3  # pixels outside the mask over which the pasted input fades in
    first_block_cache: float = 0.0  # > 0: reuse later blocks across steps (faster, approximate; 0 = exact)
    taylorseer: int = 0  # >= 2: run the blocks every N-th step, extrapolate between (approximate; 0 = exact)
    extra_loras: tuple[ExtraLora, ...] = ()  # attached beside the edit LoRA for sampling, each at its weight
    window_overlap: int = 1  # frames a window of a long clip is given from the one before (long_video)
    window_colour_match: bool = False  # match those frames' edit region to the edited first frame's colours

    @property
    def step_cache(self):
        """The sampling approximation asked for (`step_cache.StepCache`), or None: exact sampling."""
        from .step_cache import choose_step_cache

        return choose_step_cache(self.first_block_cache, self.taylorseer)


@dataclass(frozen=True)
class RunOptions:
    """Where things go and how the method is run."""

    mode: str = "mask-aware"
    low_cost: bool = False
    low_cost_clip_frames: int = 13
    window: int | None = None  # frames sampled at once; None = the model's window (Wan 81); longer clips chain
    mask_mode: str = "maxpool"  # or "nearest" (the authors')
    clip_view: str = "squash"  # how CLIP sees a non-square frame: "squash" (Wan's code, the authors') or "crop"
    prompt: str = ""  # caption of the edited first frame (inference)
    train_prompt: str | None = None  # caption of the input's first frame; None = prompt
    concept_token: str = CONCEPT_TOKEN
    cache_dir: Path | None = None
    progress: bool = True
    resume: bool = False
    device: str | None = None
    caption: Path | None = None  # local Florence-2 folder: captions where --prompt / --train-prompt are not given
    performance: PerformanceConfig = PerformanceConfig()  # memory mode, attention, compile, checkpointing, ...
    memory_check: bool = True  # on a GPU, refuse a run whose modelled peak will not fit (plan.py)


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of LoRA training; defaults are the authors' (METHOD.md)."""

    rank: int = 16
    alpha: float = 16.0
    targets: str | None = None  # peft regex of the layers to adapt; None = the model's default
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    stage1_steps: int = 100
    #: (width, height) smaller than the working size, same aspect, or a fraction of the working size (0.5:
    #: half each side, rounded to the model's size step): the motion samples train there and sampling stays at
    #: the working size (*ours*, a speed lever: at half size a step has 4x fewer tokens); None: the working
    #: size, as in the paper. Edited later frames (stage 2) keep the working size.
    train_size: tuple[int, int] | float | None = None
    stage2_steps: int | None = None  # None: stage2_epochs epochs of the stage-2 schedule (the authors')
    stage2_epochs: int = 10  # the authors' 10 epochs of (motion samples + 9 per edited frame): 100 steps for one
    stage2_repeats: int = 9
    timestep_sampling: str = "uniform"  # uniform (authors) | logit-normal | shifted
    timestep_shift: float = 3.0  # for "shifted"
    appearance_augment: int = 0  # recoloured variants of each motion sample, one drawn per step (0 = the paper's)
    appearance_region: str = "path"  # where the variants are recoloured: the edit region's path, or "frame"
    checkpoint_every: int = 25
    seed: int = 0
    draws_per_step: int = 1  # (sample, noise, sigma) draws whose gradients a step averages (the paper's: 1)

    def key_fields(self) -> dict:
        """The settings as run and cache keys hash them: `draws_per_step` only when not 1, so the keys of runs
        and cached stage-1 LoRAs made before it existed still match (their results are unchanged)."""
        fields = asdict(self)
        if fields["draws_per_step"] == 1:
            del fields["draws_per_step"]
        return fields
