"""The toy world's video codec: a fitted linear space-time patch codec with the Wan VAE's interface.

Why not a tiny `AutoencoderKLWan`: trained from scratch on 2 CPU cores it stays near 19 dB (measured
before this module was written), and the codec caps every quality number of the toy world. A linear
codec fitted in closed form reaches far more in seconds:

- encoder: PCA of space-time patches at exactly Wan's compression: frame 0 alone in s x s x 3 patches,
  later frames in groups of 4 (4 x s x s x 3), each patch to 16 numbers (Wan's 16 latent channels);
- decoder: a linear map from each latent voxel's 3x3 spatial neighbourhood (and the latent frame before
  it) back to its pixel patch, fitted by least squares, which removes most of the blocking a per-patch
  inverse leaves.

It presents what the Wan pipeline and the backend use of `AutoencoderKLWan`: `config.z_dim`,
`latents_mean` / `latents_std`, `scale_factor_spatial` / `scale_factor_temporal`,
`encode(x).latent_dist.mode()` and `decode(z).sample` on [B, 3, T, H, W] videos in [-1, 1], and
`save_pretrained` / `from_pretrained` through diffusers' `ModelMixin` (safetensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


@dataclass
class _Dist:
    """Stands in for the VAE's DiagonalGaussianDistribution: the codec is deterministic."""

    latents: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.latents

    def sample(self, generator=None) -> torch.Tensor:
        return self.latents


@dataclass
class _EncoderOutput:
    latent_dist: _Dist


@dataclass
class _DecoderOutput:
    sample: torch.Tensor


class PatchCodec(ModelMixin, ConfigMixin):
    """Linear space-time patch codec with Wan's latent layout (16 channels, 4x time, s x space)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, z_dim: int = 16, scale_factor_spatial: int = 8, scale_factor_temporal: int = 4,
                 context: int = 1, latents_mean: list[float] | None = None, latents_std: list[float] | None = None):
        super().__init__()
        s, tf = scale_factor_spatial, scale_factor_temporal
        self.register_to_config(latents_mean=latents_mean or [0.0] * z_dim, latents_std=latents_std or [1.0] * z_dim)
        k = 2 * context + 1
        # Encoders: patch (flattened c, t, y, x) -> z. Means are subtracted first.
        self.enc_first = torch.nn.Parameter(torch.zeros(z_dim, 3 * s * s), requires_grad=False)
        self.mean_first = torch.nn.Parameter(torch.zeros(3 * s * s), requires_grad=False)
        self.enc_later = torch.nn.Parameter(torch.zeros(z_dim, 3 * tf * s * s), requires_grad=False)
        self.mean_later = torch.nn.Parameter(torch.zeros(3 * tf * s * s), requires_grad=False)
        # Decoders: k x k neighbourhood of z (this latent frame) + centre z of the previous one -> patch.
        ctx = z_dim * (k * k + 1) + 1
        self.dec_first = torch.nn.Parameter(torch.zeros(3 * s * s, ctx), requires_grad=False)
        self.dec_later = torch.nn.Parameter(torch.zeros(3 * tf * s * s, ctx), requires_grad=False)

    # ---- patches --------------------------------------------------------------------------------------
    def _patches(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, T, H, W] -> frame-0 patches [B, h, w, 3ss] and later patches [B, T'-1, h, w, 3*4ss]."""
        s, tf = self.config.scale_factor_spatial, self.config.scale_factor_temporal
        b, c, t, hh, ww = video.shape
        if (t - 1) % tf or hh % s or ww % s:
            raise ValueError(f"video {tuple(video.shape)} is not (4k+1) frames of a multiple of {s} px")
        h, w = hh // s, ww // s
        first = video[:, :, 0].reshape(b, c, h, s, w, s).permute(0, 2, 4, 1, 3, 5).reshape(b, h, w, c * s * s)
        n = (t - 1) // tf
        later = video[:, :, 1:].reshape(b, c, n, tf, h, s, w, s).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return first, later.reshape(b, n, h, w, c * tf * s * s)

    def _unpatch(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        s, tf = self.config.scale_factor_spatial, self.config.scale_factor_temporal
        b, h, w, _ = first.shape
        n = later.shape[1]
        f = first.reshape(b, h, w, 3, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, 1, h * s, w * s)
        rest = later.reshape(b, n, h, w, 3, tf, s, s).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return torch.cat([f, rest.reshape(b, 3, n * tf, h * s, w * s)], dim=2)

    # ---- the VAE interface ----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        x = x.float()
        first, later = self._patches(x)
        z0 = (first - self.mean_first) @ self.enc_first.T  # [B, h, w, z]
        zl = (later - self.mean_later) @ self.enc_later.T  # [B, n, h, w, z]
        z = torch.cat([z0[:, None], zl], dim=1).permute(0, 4, 1, 2, 3).contiguous()  # [B, z, T', h, w]
        out = _EncoderOutput(_Dist(z))
        return out if return_dict else (out.latent_dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        features = self.context_features(z.float())  # [B, T', h, w, ctx]
        first = features[:, 0] @ self.dec_first.T
        later = features[:, 1:] @ self.dec_later.T
        video = self._unpatch(first, later).clamp(-1, 1)
        return _DecoderOutput(video) if return_dict else (video,)

    def context_features(self, z: torch.Tensor) -> torch.Tensor:
        """Per latent voxel: its k x k spatial neighbourhood, the previous latent frame's value, and 1."""
        b, c, t, h, w = z.shape
        k = 2 * self.config.context + 1
        frames = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        padded = F.pad(frames, [self.config.context] * 4, mode="replicate")
        neigh = F.unfold(padded, k).reshape(b, t, c * k * k, h, w)  # [B, T', c*k*k, h, w]
        previous = torch.cat([z[:, :, :1], z[:, :, :-1]], dim=2).permute(0, 2, 1, 3, 4)  # [B, T', c, h, w]
        ones = torch.ones(b, t, 1, h, w, dtype=z.dtype, device=z.device)
        return torch.cat([neigh, previous, ones], dim=2).permute(0, 1, 3, 4, 2)

    # Interfaces the pipeline may touch on a VAE; the codec has nothing to cache, tile or slice.
    def clear_cache(self) -> None:
        pass

    def enable_tiling(self, *args, **kwargs) -> None:
        pass

    def enable_slicing(self) -> None:
        pass


def fit_codec(videos: list[torch.Tensor], z_dim: int = 16, spatial: int = 8, temporal: int = 4, context: int = 1,
              ridge: float = 1e-3, balance_first_frame: bool = False) -> PatchCodec:
    """Fit encoder (PCA) and decoder (ridge least squares) on videos [T, 3, H, W] in [-1, 1].

    `balance_first_frame` scales each frame-0 latent channel to the spread of the same channel in the later
    latent frames. Unbalanced, a 4-frame group's PCA coefficients carry about 7x the energy of frame 0's
    after the one per-channel normalisation the pipeline applies, so the model's loss hardly weighs frame 0
    and its condition is a faint signal (docs/RESULTS.md, section 2: variant V1). The decoder is fitted
    after the scaling, so reconstruction is unchanged up to the ridge term.
    """
    codec = PatchCodec(z_dim, spatial, temporal, context)
    batch = torch.stack(videos).permute(0, 2, 1, 3, 4).float()  # [N, 3, T, H, W]
    first, later = codec._patches(batch)
    with torch.no_grad():
        for patches, enc, mean in ((first, codec.enc_first, codec.mean_first),
                                   (later, codec.enc_later, codec.mean_later)):
            flat = patches.reshape(-1, patches.shape[-1])
            mu = flat.mean(0)
            _, _, v = torch.linalg.svd(flat - mu, full_matrices=False)
            mean.copy_(mu)
            enc.copy_(v[:z_dim])
        if balance_first_frame:
            z = codec.encode(batch).latent_dist.mode()
            spread_first, spread_later = z[:, :, 0].std(dim=(0, 2, 3)), z[:, :, 1:].std(dim=(0, 2, 3, 4))
            codec.enc_first.mul_((spread_later / spread_first.clamp_min(1e-8))[:, None])
        z = codec.encode(batch).latent_dist.mode()
        features = codec.context_features(z)
        for feats, target, dec in ((features[:, 0], first, codec.dec_first), (features[:, 1:], later, codec.dec_later)):
            a = feats.reshape(-1, feats.shape[-1]).double()
            y = target.reshape(-1, target.shape[-1]).double()
            gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype)
            dec.copy_(torch.linalg.solve(gram, a.T @ y).T.float())
        z = codec.encode(batch).latent_dist.mode()
        mean = z.mean(dim=(0, 2, 3, 4))
        std = z.std(dim=(0, 2, 3, 4))
    codec.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    return codec


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two tensors in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.float() - b.float()) / 2).pow(2).mean())
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()
