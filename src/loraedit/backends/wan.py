"""Wan2.1-I2V and Wan2.2-I2V-A14B on diffusers: how this model family encodes, packs and predicts.

The method (which pixels are kept, what the LoRA learns from) lives in `conditioning`; this module only
says how Wan wants it: VAE latents normalised by the VAE config's mean/std, the 4 mask channels then
16 condition channels, text embeddings padded to exactly 512 tokens, CLIP hidden states (Wan2.1 only),
and for Wan2.2 two experts switched at a timestep boundary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import WanImageToVideoPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..conditioning import Sample
from ..performance import PerformanceConfig, batched_cfg, configure_transformer, set_attention
from ..step_cache import StepCache, step_cache as installed_step_cache
from . import wan_layout
from .base import CLIP_VIEWS, EncodedSample, Expert, release_encoders, sampler_name, use_sampler
from .wan_folder import DEFAULT_FRAMES, DEFAULT_LORA_TARGETS, DEFAULT_WORKING_SIZE, model_fingerprint, read_wan_folder

__all__ = ["DEFAULT_LORA_TARGETS", "EncodedSample", "Expert", "MaskAwareWanImageToVideoPipeline", "TEXT_TOKENS",
           "WanBackend", "load_wan"]

#: Wan's cross-attention splits its context as [image tokens, 512 text tokens] (hard-coded in
#: diffusers' attention processor): any other text length silently routes image tokens to the text
#: branch. Every text embedding in this project is exactly this long.
TEXT_TOKENS = 512

#: Wan's standard negative prompt (English rendering of the one shipped with Wan2.1).
WAN_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
    "picture, messy background, three legs, many people in the background, walking backwards"
)

#: The authors' CFG scale for Wan (METHOD.md); a model folder may declare its own in loraedit_model.json.
WAN_GUIDANCE = 5.0

class MaskAwareWanImageToVideoPipeline(WanImageToVideoPipeline):
    """diffusers' Wan I2V pipeline, unchanged except that the condition can be given instead of built.

    `prepare_latents` is the one place where the stock pipeline builds its condition (first frame +
    zeros, mask 1 on frame 0). When `condition` is passed to `__call__`, that condition (mask channels
    + latents, built by `conditioning` and the backend) replaces it; noise is drawn as usual.
    `clip_embeds` likewise replaces `encode_image` with embeddings computed (and cached) beforehand:
    the stock pipeline refuses `image_embeds` together with `image`, and crashes without `image`.
    """

    _given_condition: torch.Tensor | None = None
    _given_clip_embeds: torch.Tensor | None = None

    def __call__(self, *args, condition: torch.Tensor | None = None, clip_embeds: torch.Tensor | None = None,
                 **kwargs):
        self._given_condition, self._given_clip_embeds = condition, clip_embeds
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._given_condition = self._given_clip_embeds = None

    def encode_image(self, image, device=None):
        if self._given_clip_embeds is None:
            return super().encode_image(image, device)
        embeds = self._given_clip_embeds
        return (embeds[None] if embeds.dim() == 2 else embeds).to(device or self._execution_device)

    def prepare_latents(self, image, batch_size, num_channels_latents=16, height=480, width=832, num_frames=81,
                        dtype=None, device=None, generator=None, latents=None, last_image=None):
        if self._given_condition is None:
            return super().prepare_latents(image, batch_size, num_channels_latents, height, width, num_frames,
                                           dtype, device, generator, latents, last_image)
        condition = self._given_condition.to(device=device, dtype=dtype)
        if condition.dim() == 4:
            condition = condition[None]
        t_lat, h_lat, w_lat = condition.shape[-3:]
        shape = (batch_size, num_channels_latents, t_lat, h_lat, w_lat)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return latents.to(device=device, dtype=dtype), condition.expand(batch_size, *condition.shape[1:])


class WanBackend:
    """A loaded Wan I2V model folder (diffusers layout) and everything the method needs from it."""

    def __init__(self, pipe: MaskAwareWanImageToVideoPipeline, model_dir: Path, device: torch.device,
                 dtype: torch.dtype, info: dict, perf: PerformanceConfig | None = None):
        self.pipe = pipe
        self.model_dir = model_dir
        self.device = device
        self.dtype = dtype
        self.perf = perf or PerformanceConfig()
        self._placed = False  # transformers still on the CPU as loaded (see place_transformers)
        self.last_block_counter = None  # what the first-block cache skipped in the last `generate`
        self.info = info  # working_size / frames, as `read_wan_folder` found them in loraedit_model.json
        vae_cfg = pipe.vae.config
        self.spatial_factor = int(getattr(vae_cfg, "scale_factor_spatial", 8))
        self.temporal_factor = int(getattr(vae_cfg, "scale_factor_temporal", 4))
        self.latent_channels = int(vae_cfg.z_dim)
        self._latents_mean = torch.tensor(vae_cfg.latents_mean).view(-1, 1, 1, 1)
        self._latents_std = torch.tensor(vae_cfg.latents_std).view(-1, 1, 1, 1)
        self._folder_scheduler = pipe.scheduler  # the folder's own: every sampler is built from it

    # ---- identity -----------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "wan2.2-i2v" if self.pipe.transformer_2 is not None else "wan2.1-i2v"

    @property
    def uses_clip(self) -> bool:
        """Wan2.1 feeds CLIP image tokens to every cross-attention; Wan2.2-A14B has no image input."""
        t = self.pipe.transformer
        return t is not None and t.config.image_dim is not None

    @property
    def prompt_sees_image(self) -> bool:
        """UMT5 reads the prompt alone (the first frame reaches Wan2.1 through CLIP, `encode_image`)."""
        return False

    @property
    def working_size(self) -> tuple[int, int]:
        """(width, height) the model was trained at: the folder's `loraedit_model.json`, else 832x480."""
        return tuple(self.info.get("working_size", DEFAULT_WORKING_SIZE))

    @property
    def default_frames(self) -> int:
        return int(self.info.get("frames", DEFAULT_FRAMES))

    @property
    def default_negative_prompt(self) -> str:
        """The folder's own negative prompt (`loraedit_model.json`), else Wan's standard one."""
        negative = self.info.get("negative_prompt")
        return WAN_NEGATIVE_PROMPT if negative is None else negative

    @property
    def default_guidance(self) -> float:
        """The folder's own CFG scale (`loraedit_model.json`), else the authors' 5 for Wan."""
        guidance = self.info.get("guidance")
        return WAN_GUIDANCE if guidance is None else float(guidance)

    @property
    def experts(self) -> list[Expert]:
        """Wan2.1: one transformer for all noise levels. Wan2.2: high-noise above the boundary."""
        boundary = self.pipe.config.boundary_ratio
        if self.pipe.transformer_2 is None or boundary is None:
            return [Expert("transformer", 0.0, 1.0)]
        return [Expert("transformer", float(boundary), 1.0), Expert("transformer_2", 0.0, float(boundary))]

    @property
    def default_lora_targets(self) -> str:
        return DEFAULT_LORA_TARGETS

    def transformer(self, name: str) -> torch.nn.Module:
        return getattr(self.pipe, name)

    def transformers(self) -> list[torch.nn.Module]:
        """Every transformer the pipeline holds (Wan2.2: both experts)."""
        return [t for t in (self.pipe.transformer, getattr(self.pipe, "transformer_2", None)) if t is not None]

    def set_progress(self, enabled: bool) -> None:
        """Show or hide the sampler's progress bar (one line, cleared when done)."""
        self.pipe.set_progress_bar_config(disable=not enabled, leave=False, desc="sampling")

    def place_transformers(self) -> None:
        """Give the transformers the memory mode's storage and put them where they compute (once).

        Deferred until the encoders are done (or a first training or sampling step), so the text encoder
        and a 14B transformer never need the GPU at the same time; an fp8 base is cast on the CPU first.
        """
        if self._placed:
            return
        for name in ("transformer", "transformer_2"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                configure_transformer(module, self.perf, self.device, self.dtype)
        if self.perf.vae_tiling and hasattr(self.pipe.vae, "enable_tiling"):
            self.pipe.vae.enable_tiling()
        self._placed = True

    def fingerprint(self) -> str:
        """Identifies the model for cache keys: its configs and the names and sizes of its weight files."""
        return model_fingerprint(self.model_dir)

    # ---- encoders -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[T, 3, H, W] in [-1, 1] -> normalised latents [C, T', H/s, W/s] (the VAE's mode, no sampling)."""
        vae = self.pipe.vae
        x = video.permute(1, 0, 2, 3)[None].to(self._vae_device(), vae.dtype)  # [1, 3, T, H, W]
        latents = vae.encode(x).latent_dist.mode()[0].float().cpu()
        return (latents - self._latents_mean) / self._latents_std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [C, T', h, w] -> video [T, 3, H, W] in [-1, 1]."""
        vae = self.pipe.vae
        z = latents.float() * self._latents_std + self._latents_mean
        video = vae.decode(z[None].to(self._vae_device(), vae.dtype)).sample[0]  # [3, T, H, W]
        return video.float().cpu().clamp(-1, 1).permute(1, 0, 2, 3)

    @torch.no_grad()
    def encode_prompt(self, text: str, image: torch.Tensor | None = None) -> torch.Tensor:
        """Text -> UMT5 embedding [512, text_dim], zero-padded past the prompt's tokens (`image` is not read)."""
        if self.pipe.text_encoder is None:
            raise RuntimeError("the text encoder was freed; encode prompts before training")
        emb = self.pipe._get_t5_prompt_embeds(text, max_sequence_length=TEXT_TOKENS, device=torch.device("cpu"),
                                              dtype=torch.float32)[0]
        if emb.shape[0] != TEXT_TOKENS:
            raise RuntimeError(f"text embedding has {emb.shape[0]} tokens, Wan needs exactly {TEXT_TOKENS}")
        return emb

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, view: str = "squash") -> torch.Tensor | None:
        """[3, H, W] in [-1, 1] -> CLIP penultimate hidden states [N, D] (None for models without CLIP).

        `view` "squash" (Wan's own code) resizes a non-square frame to CLIP's square first, so an edit near
        the left or right edge is seen; "crop" leaves it to diffusers' processor (short side, centre crop).
        A square frame is the same in both views.
        """
        if not self.uses_clip:
            return None
        if view not in CLIP_VIEWS:
            raise ValueError(f"unknown CLIP view {view!r}: choose {', '.join(CLIP_VIEWS)}")
        if self.pipe.image_encoder is None:
            raise RuntimeError("the image encoder was freed; encode images before training")
        processor, encoder = self.pipe.image_processor, self.pipe.image_encoder
        image = ((image + 1) / 2).clamp(0, 1)
        if view == "squash" and image.shape[-1] != image.shape[-2]:
            crop = processor.crop_size
            image = torch.nn.functional.interpolate(image[None], size=(crop["height"], crop["width"]),
                                                    mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)
        pixels = processor(images=image[None], do_rescale=False, return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(encoder.device, encoder.dtype)
        out = encoder(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[-2][0].float().cpu()

    def condition_tensor(self, sample: Sample, mask_mode: str = "maxpool") -> torch.Tensor:
        """The model's condition channels for a sample: packed keep mask, then latents of V_cond."""
        mask = wan_layout.latent_keep_mask(sample.keep_mask, self.spatial_factor, self.temporal_factor, mask_mode)
        return wan_layout.pack_condition(mask, self.encode_video(sample.condition_video))

    def free_encoders(self) -> None:
        """Drop the text and image encoders (they are only needed before training), park the VAE on CPU,
        then bring the transformers to the device."""
        release_encoders(self.pipe, ("text_encoder", "image_encoder"))
        self.place_transformers()

    def _vae_device(self) -> torch.device:
        return next(self.pipe.vae.parameters()).device

    # ---- the denoiser -------------------------------------------------------------------------------
    def predict(self, transformer: torch.nn.Module, noisy: torch.Tensor, condition: torch.Tensor,
                timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Velocity prediction for a batch: inputs [B, C, T', h, w], [B, 4+C, T', h, w], [B], [B, 512, D]."""
        hidden = torch.cat([noisy, condition], dim=1)  # [B, 16 + 4 + 16, T', h, w]: Wan's channel order
        return transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text,
                           encoder_hidden_states_image=image, return_dict=False)[0]

    # ---- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, condition: torch.Tensor, first_frame: torch.Tensor, text: torch.Tensor,
                 negative_text: torch.Tensor, image: torch.Tensor | None, *, steps: int, guidance: float,
                 shift: float, seed: int, guidance_2: float | None = None,
                 step_cache: StepCache | None = None, sampler: str | None = None) -> torch.Tensor:
        """Run the stock Wan sampler with the given condition. Returns [T, 3, H, W] in [-1, 1].

        `step_cache` reuses block outputs across steps (`step_cache`: First Block Cache or TaylorSeer;
        approximate). What it skipped is left in `self.last_block_counter`.

        With `perf.batched_cfg` (and guidance > 1) each step's conditional and unconditional predictions
        come from one batched forward (`performance.BatchedCFG`); the pipeline itself is unchanged.
        """
        self.place_transformers()
        self._set_scheduler(sampler, shift)
        t_lat, h_lat, w_lat = condition.shape[-3:]
        num_frames = (t_lat - 1) * self.temporal_factor + 1
        height, width = h_lat * self.spatial_factor, w_lat * self.spatial_factor
        self.pipe.vae.to(self.device)  # the pipeline takes its execution device from its modules
        negative = negative_text[None].to(self.device, self.dtype)
        transformers = [t for t in (self.pipe.transformer, self.pipe.transformer_2) if t is not None]
        for transformer in transformers:
            set_attention(transformer, self.perf, self.device, training=False)
        batch_cfg = self.perf.batched_cfg and guidance > 1  # the pipeline's own test for running uncond
        with batched_cfg(transformers if batch_cfg else [], negative), \
                installed_step_cache(transformers, step_cache) as counter:
            out = self.pipe(
                image=((first_frame + 1) / 2).clamp(0, 1)[None].to(self.device),
                prompt_embeds=text[None].to(self.device, self.dtype),
                negative_prompt_embeds=negative,
                clip_embeds=image,
                height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                guidance_scale=guidance, guidance_scale_2=guidance_2 if self.pipe.transformer_2 is not None else None,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", condition=condition,
            ).frames
        self.last_block_counter = counter
        latents = out[0].float().cpu()  # normalised latents [C, T', h, w]
        return self.decode_latents(latents)

    @property
    def default_sampler(self) -> str:
        """The folder's own solver (UniPC in the Wan folders)."""
        return sampler_name(self._folder_scheduler)

    def _set_scheduler(self, sampler: str | None, shift: float) -> None:
        use_sampler(self.pipe, self._folder_scheduler, sampler or self.default_sampler, shift)


def default_device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """bf16 on a GPU, fp32 on CPU (CPU bf16 is slow and lossy)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def load_wan(model_dir: Path, device: torch.device | None = None, dtype: torch.dtype | None = None,
             perf: PerformanceConfig | None = None) -> WanBackend:
    """Load a local Wan I2V diffusers folder. Never touches a hub, never runs remote code, never unpickles.

    The encoders go to `device` at once; the transformers stay on the CPU until `place_transformers`
    (after encoding) applies `perf`'s memory mode, attention backend and compile.

    `use_safetensors=True` makes diffusers and transformers refuse pickle (.bin) weights outright;
    `read_wan_folder` has already told the user which files those were.
    """
    folder = read_wan_folder(Path(model_dir))
    default_device, default_dtype = default_device_and_dtype()
    device, dtype = device or default_device, dtype or default_dtype
    # The toy world's codec is a component of this package; diffusers resolves a non-diffusers component
    # class only from modules already imported (it never imports what a model folder names).
    import loraedit.toyworld.codec  # noqa: F401

    # The VAE stays fp32: its latents feed every cache entry and every metric (Wan's own recipe too).
    pipe = MaskAwareWanImageToVideoPipeline.from_pretrained(
        folder.path, local_files_only=True, use_safetensors=True, torch_dtype={"default": dtype, "vae": torch.float32})
    for name in ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
            if name in ("vae", "text_encoder", "image_encoder"):
                module.to(device)
    pipe.set_progress_bar_config(leave=False, desc="sampling")
    info = {"working_size": folder.working_size, "frames": folder.default_frames,
            "negative_prompt": folder.negative_prompt, "guidance": folder.guidance}
    return WanBackend(pipe, folder.path, device, dtype, info, perf)
