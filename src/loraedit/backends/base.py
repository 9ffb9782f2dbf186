"""What loraedit needs from a model family: the backend protocol every family implements.

The method (`conditioning`) speaks pixels: a condition video, a keep mask, a first frame, prompts. A
backend turns those into its model's own inputs and back: it encodes a clip, packs the method's
condition and keep mask into its channels, names its LoRA targets, predicts the flow velocity in a
training step and samples a video. Trainer, sampler, api, the quality bench (`tools.quality`) and the UI
see only this protocol (and `ModelFolder`, the facts read from a folder before any weight loads), so a
new family is a new module under `backends/` and one line in the registry (`backends/__init__.py`).

A family also owns how its LoRA files name their weights (`LoraKeyMap`): each family's ComfyUI layout
differs (Wan renames modules one to one; HunyuanVideo fuses q, k and v into one layer), and `lora_io` only
ever sees peft names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..conditioning import Sample
from ..step_cache import StepCache


#: Weight files that can run code when opened: never opened, a folder holding only these is refused.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def model_fingerprint(model_dir: Path) -> str:
    """Identifies a model for cache keys and LoRA files: its configs and its weight files' names and sizes.

    Hidden files and folders are left out, so a folder's download bookkeeping never changes its identity.
    """
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).rglob("*")):
        # Hidden files are not the model: `hf download --local-dir` keeps its download state in .cache/.
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts):
            h.update(p.relative_to(model_dir).as_posix().encode())
            h.update(p.read_bytes() if p.suffix == ".json" else str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


#: Samplers every backend offers, both at the run's flow shift: "unipc" (diffusers' multistep solver, the
#: Wan folders' own and their model card's choice) and "euler" (flow-matching Euler: the authors' DiffSynth
#: inference, and HunyuanVideo's own). A run that names none uses the folder's own (`sampler_name`).
SAMPLERS = ("unipc", "euler")


def sampler_name(scheduler) -> str:
    """"euler" for a flow-matching Euler scheduler, else "unipc" (the two kinds model folders ship)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return "euler" if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) else "unipc"


def flow_scheduler(sampler: str, shift: float, folder_scheduler):
    """A scheduler of kind `sampler` at flow shift `shift`: the folder's own (`folder_scheduler`, rebuilt from
    its config) when it is of that kind, else the other kind with diffusers' flow-matching settings."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose {', '.join(SAMPLERS)}")
    if sampler == sampler_name(folder_scheduler):
        config = dict(folder_scheduler.config)
        config["flow_shift" if "flow_shift" in config else "shift"] = shift
        return type(folder_scheduler).from_config(config)
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                                   flow_shift=shift)


def release_encoders(pipe, encoders: tuple[str, ...]) -> None:
    """Drop the pipeline's `encoders` (only needed before training), park its VAE on the CPU and return the
    freed memory, so the transformers get the device to themselves."""
    import gc

    for name in encoders:
        setattr(pipe, name, None)
    pipe.vae.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def use_sampler(pipe, folder_scheduler, sampler: str, shift: float) -> None:
    """Give `pipe` the scheduler of `sampler` at `shift`, rebuilt only when either changed (a sampler run
    after another gives what it gives alone)."""
    wanted = flow_scheduler(sampler, shift, folder_scheduler)
    current = pipe.scheduler
    if type(current) is not type(wanted) or dict(current.config) != dict(wanted.config):
        pipe.scheduler = wanted
#: How an image encoder sees a frame that is not square: "squash" resizes the whole frame to the encoder's
#: square (Wan's own code and DiffSynth, the authors' inference), "crop" resizes the short side and
#: centre-crops (diffusers' image processor: at 832x480 the outer fifths of the frame are never seen).
CLIP_VIEWS = ("squash", "crop")


@dataclass(frozen=True)
class Expert:
    """One transformer of the model and the noise levels (sigma in [0, 1]) it handles."""

    name: str  # the backend's name for it ("transformer", "transformer_2")
    sigma_low: float
    sigma_high: float


@dataclass
class EncodedSample:
    """A `Sample` in the model's input space, ready for training (cacheable, no encoder needed)."""

    name: str
    condition: torch.Tensor  # the model's condition channels (Wan: [4 + C, T', h, w], mask then latents)
    text: torch.Tensor  # the prompt's embedding ([tokens, text_dim]; a family may append rows, see its layout)
    image: torch.Tensor | None  # image-encoder tokens (Wan2.1's CLIP) or None
    target: torch.Tensor | None  # [C, T', h, w] normalised latents of the target


@runtime_checkable
class LoraKeyMap(Protocol):
    """How one family's LoRA files name the weights: peft names (what training holds) <-> file keys.

    `to_file` and `from_file` are exact inverses on what training writes; `peft_shapes` maps a file's
    header (names and shapes, no tensor data) to peft names and shapes, so a LoRA can be checked against a
    model before anything is read.
    """

    family: str  # how messages name the layout ("Wan", "HunyuanVideo")

    def to_file(self, state: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
        """peft-named lora_A / lora_B weights -> the file's tensors."""
        ...

    def from_file(self, tensors: dict[str, torch.Tensor], path: Path, rank: int,
                  alpha: float) -> dict[str, torch.Tensor]:
        """The file's tensors -> peft-named weights; InputError naming `path` for a key it cannot place."""
        ...

    def peft_shapes(self, shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, tuple[int, ...]]:
        """The file's header (key -> shape) -> peft name -> shape; InputError naming `path` as above."""
        ...


@runtime_checkable
class ModelFolder(Protocol):
    """A model folder as read from its configs, before any weight loads (what validation needs)."""

    path: Path
    kind: str  # e.g. "wan2.1-i2v"
    experts: tuple[str, ...]  # transformers with a LoRA of their own
    working_size: tuple[int, int]  # (width, height)
    default_frames: int
    window_frames: int  # frames sampled at once; a longer clip is edited window by window (long_video)
    spatial_factor: int  # pixels per latent cell
    temporal_factor: int  # frames per latent frame (after frame 0)
    latent_channels: int
    fingerprint: str
    default_lora_targets: str  # peft regex of the Linear layers a LoRA adapts by default

    @property
    def text_dim(self) -> int:
        """Width of the text embeddings (for the cache's size estimate)."""
        ...

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this."""
        ...

    def lora_shapes(self, expert: str, rank: int, targets: str) -> dict[str, tuple[int, int]]:
        """peft-named LoRA weights -> shapes, for a LoRA on `expert` (checked against a file's header)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A loaded model and everything the method does with it."""

    model_dir: Path  # the folder it was loaded from (its `ModelFolder` constraints: `read_model_folder`)
    device: torch.device
    dtype: torch.dtype
    perf: object  # performance.PerformanceConfig
    last_block_counter: object  # what the step cache skipped in the last `generate` (`step_cache.BlockCounter`)

    # ---- identity and defaults
    @property
    def kind(self) -> str: ...
    @property
    def uses_clip(self) -> bool: ...
    @property
    def prompt_sees_image(self) -> bool:
        """True when the prompt's embedding depends on the first frame (HunyuanVideo's Llava text encoder reads
        the image with the prompt), so `encode_prompt` needs the image and caches key on it."""
        ...
    @property
    def working_size(self) -> tuple[int, int]: ...
    @property
    def default_frames(self) -> int: ...
    @property
    def default_negative_prompt(self) -> str: ...
    @property
    def default_guidance(self) -> float: ...
    @property
    def default_lora_targets(self) -> str: ...
    @property
    def experts(self) -> list[Expert]: ...
    def fingerprint(self) -> str: ...
    def transformer(self, name: str) -> torch.nn.Module: ...
    def transformers(self) -> list[torch.nn.Module]: ...
    def place_transformers(self) -> None: ...

    # ---- encoders (pixels -> the model's inputs); freed before training
    def encode_video(self, video: torch.Tensor) -> torch.Tensor: ...
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...
    def encode_prompt(self, text: str, image: torch.Tensor | None = None) -> torch.Tensor: ...
    def encode_image(self, image: torch.Tensor, view: str = "squash") -> torch.Tensor | None: ...
    def condition_tensor(self, sample: Sample, mask_mode: str = "maxpool") -> torch.Tensor: ...
    def free_encoders(self) -> None: ...

    # ---- the denoiser and the sampler
    def predict(self, transformer: torch.nn.Module, noisy: torch.Tensor, condition: torch.Tensor,
                timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor: ...
    def set_progress(self, enabled: bool) -> None: ...
    def generate(self, condition: torch.Tensor, first_frame: torch.Tensor, text: torch.Tensor,
                 negative_text: torch.Tensor, image: torch.Tensor | None, *, steps: int, guidance: float,
                 shift: float, seed: int, guidance_2: float | None = None,
                 step_cache: StepCache | None = None, sampler: str | None = None) -> torch.Tensor: ...
    @property
    def default_sampler(self) -> str: ...
