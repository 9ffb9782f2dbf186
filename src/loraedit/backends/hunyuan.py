"""HunyuanVideo-I2V (latent_concat) on diffusers: how this model family encodes, packs and predicts.

The method lives in `conditioning`; this module only says how HunyuanVideo-I2V wants it:
- VAE latents scaled by the VAE config's `scaling_factor` (no mean/std). Its VAE normalises over all
  frames at once (GroupNorm), so a first frame encoded alone differs from the first latent frame of the
  whole clip: the condition's latent frame 0 is the first frame encoded alone, as the stock pipeline
  does, and the later latent frames come from the whole condition video.
- The condition channels `[condition latents (C), mask (1)]` after the noisy latents (`hunyuan_layout`).
- Prompts through two text encoders: Llava-Llama-3 reads the prompt *with the first frame* (its image
  tokens lead the embedding) and CLIP-L gives a pooled vector; both travel in one tensor.
- Guidance: the latent_concat release is not guidance-distilled (`guidance_embeds` false) and the official
  sampler runs it without CFG (scale 1). A scale > 1 is true CFG with a negative prompt encoded against a
  black image, as diffusers does; a guidance-distilled transformer gets the scale as embedded guidance.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import PIL.Image
import torch
from diffusers import HunyuanVideoImageToVideoPipeline

from .. import media
from ..conditioning import Sample
from ..performance import PerformanceConfig, configure_transformer, set_attention
from ..step_cache import StepCache, step_cache as installed_step_cache
from . import hunyuan_layout
from .base import Expert, model_fingerprint, release_encoders, sampler_name, use_sampler
from .hunyuan_folder import DEFAULT_FRAMES, DEFAULT_LORA_TARGETS, DEFAULT_WORKING_SIZE, KIND, read_hunyuan_folder

__all__ = ["HUNYUAN_I2V_NEGATIVE_PROMPT", "HunyuanBackend", "MaskAwareHunyuanVideoImageToVideoPipeline",
           "load_hunyuan"]

#: HunyuanVideo-I2V's own negative prompt (its `NEGATIVE_PROMPT_I2V`); used only with CFG (guidance > 1).
HUNYUAN_I2V_NEGATIVE_PROMPT = "deformation, a poor composition and deformed video, bad teeth, bad eyes, bad limbs"
#: The official sampler's CFG scale for this model (`--cfg-scale` 1.0: no guidance).
HUNYUAN_GUIDANCE = 1.0


class MaskAwareHunyuanVideoImageToVideoPipeline(HunyuanVideoImageToVideoPipeline):
    """diffusers' HunyuanVideo I2V pipeline, unchanged except that the condition can be given instead of built.

    The stock `__call__` builds its condition inline, after `prepare_latents` (image latents zeroed after
    latent frame 0, a mask of ones on latent frame 0), so no method of its own can be overridden to swap
    it. When `condition` ([C + 1, T', h, w]: latents then mask) is passed, a forward pre-hook on the
    transformer replaces the condition channels of each input `[noisy (C), condition (C), mask (1)]` with it,
    for this call only. Noise, its 0.1 % blend with the first frame's latents, the scheduler and the
    guidance all stay the stock pipeline's.
    """

    def __call__(self, *args, condition: torch.Tensor | None = None, **kwargs):
        if condition is None:
            return super().__call__(*args, **kwargs)
        # prepend: the swap comes before any other hook, so whatever watches the input sees the given condition
        handle = self.transformer.register_forward_pre_hook(_condition_swap(condition), with_kwargs=True, prepend=True)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            handle.remove()


def _condition_swap(condition: torch.Tensor):
    given = condition if condition.dim() == 5 else condition[None]  # [1, C + 1, T', h, w]

    def swap(module, args, kwargs):
        hidden = kwargs["hidden_states"]  # [B, C + C + 1, T', h, w]
        channels = hidden.shape[1] - given.shape[1]
        if channels != given.shape[1] - 1 or hidden.shape[2:] != given.shape[2:]:
            raise ValueError(f"given condition {tuple(given.shape)} does not fit the transformer input "
                             f"{tuple(hidden.shape)}")
        cond = given.to(hidden.device, hidden.dtype).expand(hidden.shape[0], *given.shape[1:])
        return args, {**kwargs, "hidden_states": torch.cat([hidden[:, :channels], cond], dim=1)}

    return swap


class HunyuanBackend:
    """A loaded HunyuanVideo-I2V folder (diffusers layout, latent_concat) and everything the method needs."""

    def __init__(self, pipe: MaskAwareHunyuanVideoImageToVideoPipeline, model_dir: Path, device: torch.device,
                 dtype: torch.dtype, info: dict, perf: PerformanceConfig | None = None):
        self.pipe = pipe
        self._folder_scheduler = pipe.scheduler  # the folder's own: every sampler is built from it
        self.model_dir = model_dir
        self.device = device
        self.dtype = dtype
        self.perf = perf or PerformanceConfig()
        self._placed = False
        self.last_block_counter = None
        self.info = info
        vae_cfg = pipe.vae.config
        self.spatial_factor = int(vae_cfg.spatial_compression_ratio)
        self.temporal_factor = int(vae_cfg.temporal_compression_ratio)
        self.latent_channels = int(vae_cfg.latent_channels)
        self.scaling_factor = float(vae_cfg.scaling_factor)
        self.pooled_dim = int(pipe.transformer.config.pooled_projection_dim)

    # ---- identity -----------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return KIND

    @property
    def uses_clip(self) -> bool:
        """No image-encoder tokens of its own: the first frame reaches the model through the Llava prompt."""
        return False

    @property
    def prompt_sees_image(self) -> bool:
        return True

    @property
    def working_size(self) -> tuple[int, int]:
        return tuple(self.info.get("working_size") or DEFAULT_WORKING_SIZE)

    @property
    def default_frames(self) -> int:
        return int(self.info.get("frames") or DEFAULT_FRAMES)

    @property
    def default_negative_prompt(self) -> str:
        negative = self.info.get("negative_prompt")
        return HUNYUAN_I2V_NEGATIVE_PROMPT if negative is None else negative

    @property
    def default_guidance(self) -> float:
        guidance = self.info.get("guidance")
        return HUNYUAN_GUIDANCE if guidance is None else float(guidance)

    @property
    def experts(self) -> list[Expert]:
        return [Expert("transformer", 0.0, 1.0)]

    @property
    def default_lora_targets(self) -> str:
        return DEFAULT_LORA_TARGETS

    def transformer(self, name: str) -> torch.nn.Module:
        return getattr(self.pipe, name)

    def transformers(self) -> list[torch.nn.Module]:
        return [self.pipe.transformer]

    def set_progress(self, enabled: bool) -> None:
        self.pipe.set_progress_bar_config(disable=not enabled, leave=False, desc="sampling")

    def place_transformers(self) -> None:
        """Memory mode, attention and compile for the transformer, once the encoders are done (as for Wan)."""
        if self._placed:
            return
        configure_transformer(self.pipe.transformer, self.perf, self.device, self.dtype)
        if self.perf.vae_tiling:
            self.pipe.vae.enable_tiling()
        self._placed = True

    def fingerprint(self) -> str:
        return model_fingerprint(self.model_dir)

    # ---- encoders -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[T, 3, H, W] in [-1, 1] -> scaled latents [C, T', H/s, W/s] (the VAE's mode, no sampling)."""
        vae = self.pipe.vae
        x = video.permute(1, 0, 2, 3)[None].to(self._vae_device(), vae.dtype)  # [1, 3, T, H, W]
        return vae.encode(x).latent_dist.mode()[0].float().cpu() * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [C, T', h, w] -> video [T, 3, H, W] in [-1, 1]."""
        vae = self.pipe.vae
        z = (latents.float() / self.scaling_factor)[None].to(self._vae_device(), vae.dtype)
        video = vae.decode(z).sample[0]  # [3, T, H, W]
        return video.float().cpu().clamp(-1, 1).permute(1, 0, 2, 3)

    @torch.no_grad()
    def encode_prompt(self, text: str, image: torch.Tensor | None = None) -> torch.Tensor:
        """Text read with `image` ([3, H, W] in [-1, 1]; None: a black frame, the stock unconditional image)
        -> `hunyuan_layout.pack_text` of the Llava tokens the attention mask keeps and the CLIP pooled vector.

        The stock `encode_prompt` does the work (template, image tokens, crops), from the image as 8-bit
        RGB, exactly what the stock pipeline gets from a user's PIL image.
        """
        if self.pipe.text_encoder is None or self.pipe.text_encoder_2 is None:
            raise RuntimeError("the text encoders were freed; encode prompts before training")
        pixels = media.to_uint8(image) if image is not None else torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()
        tokens, pooled, mask = self.pipe.encode_prompt(image=PIL.Image.fromarray(pixels), prompt=text,
                                                       device=self.pipe.text_encoder.device)
        kept = int(mask[0].sum())
        if not (bool(mask[0, :kept].all()) and not bool(mask[0, kept:].any())):
            raise RuntimeError("the prompt's attention mask is not ones then zeros, as the transformer assumes")
        return hunyuan_layout.pack_text(tokens[0, :kept].float().cpu(), pooled[0].float().cpu())

    def encode_image(self, image: torch.Tensor, view: str = "squash") -> torch.Tensor | None:
        return None  # the first frame reaches the model through the prompt's image tokens (encode_prompt)

    def condition_tensor(self, sample: Sample, mask_mode: str = "maxpool") -> torch.Tensor:
        """The condition channels: V_cond's latents (frame 0 encoded alone, as the stock pipeline encodes its
        first frame), zero where the keep mask generates, then the mask channel."""
        video = sample.condition_video
        latents = self.encode_video(video[:1])  # [C, 1, h, w]
        if video.shape[0] > 1:
            latents = torch.cat([latents, self.encode_video(video)[:, 1:]], dim=1)  # [C, T', h, w]
        mask = hunyuan_layout.latent_keep_mask(sample.keep_mask, self.spatial_factor, self.temporal_factor, mask_mode)
        return hunyuan_layout.pack_condition(latents, mask)

    def free_encoders(self) -> None:
        """Drop both text encoders, park the VAE on the CPU, bring the transformer to the device."""
        release_encoders(self.pipe, ("text_encoder", "text_encoder_2"))
        self.place_transformers()

    def _vae_device(self) -> torch.device:
        return next(self.pipe.vae.parameters()).device

    # ---- the denoiser -------------------------------------------------------------------------------
    def predict(self, transformer: torch.nn.Module, noisy: torch.Tensor, condition: torch.Tensor,
                timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Velocity prediction: inputs [B, C, T', h, w], [B, C + 1, T', h, w], [B] (sigma x 1000), packed text."""
        tokens, mask, pooled = hunyuan_layout.unpack_text(text, self.pooled_dim)
        hidden = torch.cat([noisy, condition], dim=1)  # [B, C + C + 1, T', h, w]: HunyuanVideo's channel order
        return transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=tokens,
                           encoder_attention_mask=mask, pooled_projections=pooled,
                           guidance=self._embedded_guidance(transformer, noisy.shape[0], noisy.device),
                           return_dict=False)[0]

    def _embedded_guidance(self, transformer, batch: int, device) -> torch.Tensor | None:
        """A guidance-distilled transformer trains at its default scale (x 1000, as the pipeline passes it)."""
        if not transformer.config.guidance_embeds:
            return None
        return torch.full((batch,), self.default_guidance * 1000.0, device=device)

    # ---- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, condition: torch.Tensor, first_frame: torch.Tensor, text: torch.Tensor,
                 negative_text: torch.Tensor, image: torch.Tensor | None, *, steps: int, guidance: float,
                 shift: float, seed: int, guidance_2: float | None = None,
                 step_cache: StepCache | None = None, sampler: str | None = None) -> torch.Tensor:
        """Run the stock HunyuanVideo I2V sampler with the given condition. Returns [T, 3, H, W] in [-1, 1].

        The stock pipeline drops latent frame 0 from its output (the input image); the edit keeps every
        frame, so the latents are taken from the last step's callback and decoded here. Classifier-free
        guidance runs as the pipeline runs it, two forwards a step (`perf.batched_cfg` batches Wan's only).
        """
        self.place_transformers()
        self._set_scheduler(sampler, shift)
        t_lat, h_lat, w_lat = condition.shape[-3:]
        transformer = self.pipe.transformer
        set_attention(transformer, self.perf, self.device, training=False)
        self.pipe.vae.to(self.device)  # the pipeline takes its execution device from its modules
        tokens, mask, pooled = hunyuan_layout.unpack_text(text[None].to(self.device, self.dtype), self.pooled_dim)
        embedded = bool(transformer.config.guidance_embeds)
        cfg = not embedded and guidance > 1
        negative = {}
        if cfg:
            n_tokens, n_mask, n_pooled = hunyuan_layout.unpack_text(negative_text[None].to(self.device, self.dtype),
                                                                    self.pooled_dim)
            negative = {"negative_prompt_embeds": n_tokens, "negative_prompt_attention_mask": n_mask,
                        "negative_pooled_prompt_embeds": n_pooled}
        final = {}

        def keep_latents(pipe, step, timestep, tensors):
            final["latents"] = tensors["latents"]
            return {}

        with installed_step_cache([transformer], step_cache) as counter, \
                _cache_contexts(transformer, ("cond", "uncond") if cfg else ("cond",), step_cache is not None):
            self.pipe(
                image=((first_frame + 1) / 2).clamp(0, 1)[None].to(self.device),
                prompt_embeds=tokens, prompt_attention_mask=mask, pooled_prompt_embeds=pooled, **negative,
                height=h_lat * self.spatial_factor, width=w_lat * self.spatial_factor,
                num_frames=(t_lat - 1) * self.temporal_factor + 1, num_inference_steps=steps,
                true_cfg_scale=guidance if cfg else 1.0, guidance_scale=guidance if embedded else 1.0,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", condition=condition,
                callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"])
        self.last_block_counter = counter
        return self.decode_latents(final["latents"][0].float().cpu())

    @property
    def default_sampler(self) -> str:
        """The folder's own solver (flow-matching Euler in the HunyuanVideo folders)."""
        return sampler_name(self._folder_scheduler)

    def _set_scheduler(self, sampler: str | None, shift: float) -> None:
        use_sampler(self.pipe, self._folder_scheduler, sampler or self.default_sampler, shift)


@contextmanager
def _cache_contexts(transformer: torch.nn.Module, names: tuple[str, ...], enabled: bool):
    """Name each denoiser call's cache context in turn ("cond", then "uncond" with CFG), for the first-block cache.

    diffusers' Wan pipeline wraps its transformer calls in `cache_context(name)` itself (the block cache
    keeps one state per name, so cond and uncond never share a residual); the HunyuanVideo I2V pipeline
    does not, so the same public context manager is entered before each call and left after it here.
    """
    if not enabled:
        yield
        return
    calls, open_contexts = [0], []

    def enter(module, args, kwargs):
        context = transformer.cache_context(names[calls[0] % len(names)])
        context.__enter__()
        open_contexts.append(context)
        calls[0] += 1

    def leave(module, args, kwargs, output):
        open_contexts.pop().__exit__(None, None, None)

    handles = [transformer.register_forward_pre_hook(enter, with_kwargs=True),
               transformer.register_forward_hook(leave, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        while open_contexts:  # a call that raised never reached `leave`
            open_contexts.pop().__exit__(None, None, None)


def load_hunyuan(model_dir: Path, device: torch.device | None = None, dtype: torch.dtype | None = None,
                 perf: PerformanceConfig | None = None) -> HunyuanBackend:
    """Load a local HunyuanVideo-I2V diffusers folder. Never touches a hub, never runs remote code, never
    unpickles (`use_safetensors=True`; `read_hunyuan_folder` has refused pickle-only and token_replace folders).

    The encoders go to `device` at once; the transformer stays on the CPU until `place_transformers`.
    """
    folder = read_hunyuan_folder(Path(model_dir))
    if device is None or dtype is None:
        cuda = torch.cuda.is_available()
        device = device or torch.device("cuda" if cuda else "cpu")
        dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    # The VAE stays fp32: its latents feed every cache entry and every metric (as for Wan).
    pipe = MaskAwareHunyuanVideoImageToVideoPipeline.from_pretrained(
        folder.path, local_files_only=True, use_safetensors=True, torch_dtype={"default": dtype, "vae": torch.float32})
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name)
        module.requires_grad_(False)
        if name != "transformer":
            module.to(device)
    pipe.set_progress_bar_config(leave=False, desc="sampling")
    info = {"working_size": folder.working_size, "frames": folder.default_frames,
            "negative_prompt": folder.negative_prompt, "guidance": folder.guidance}
    return HunyuanBackend(pipe, folder.path, device, dtype, info, perf)
