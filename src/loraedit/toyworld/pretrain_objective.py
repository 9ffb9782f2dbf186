"""The pretraining objective: standard I2V flow matching, and the two measures of how far it got.

`train_step` is one step's loss (caption dropout, mirrored clips, logit-normal noise levels, optionally
shifted); `heldout_loss` is the same loss at fixed noise on held-out scenes (comparable across checkpoints);
`propagation_errors` says whether the model carries frame 0 forward, which the loss alone hides. Every
random number is drawn on the CPU from the generator passed in, so a step is the same on any device.
"""

from __future__ import annotations

import torch

from .pretrain_data import Encoded


def noise_levels(n: int, gen: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """`n` logit-normal noise levels (mean 0.3, std 1 in logit space), flow-shifted by `shift` (1 = none)."""
    sigma = torch.sigmoid(torch.randn(n, generator=gen) * 1.0 + 0.3)
    return shift * sigma / (1 + (shift - 1) * sigma)


def predict_velocity(transformer, noisy: torch.Tensor, condition: torch.Tensor, sigma: torch.Tensor,
                     text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The transformer's flow velocity for noisy latents at noise levels `sigma` [B], with the I2V condition."""
    return transformer(hidden_states=torch.cat([noisy, condition], 1), timestep=sigma * 1000,
                       encoder_hidden_states=text, encoder_hidden_states_image=image, return_dict=False)[0]


def train_step(transformer, enc: Encoded, idx: torch.Tensor, gen: torch.Generator, dropout: float,
               shift: float = 1.0) -> torch.Tensor:
    """One flow-matching step of the standard I2V objective on clips `idx` (flip augmentation).

    Noise levels are logit-normal, then optionally shifted towards high noise (`s' = k s / (1 + (k-1) s)`,
    the sampler's own flow shift): the sampler spends most of its steps above 0.8, where the model must
    carry frame 0 forward, and a 180-token proxy learnt that regime faster with k = 3 (docs/RESULTS.md).
    """
    device = enc.latents.device
    x0, cond, image = enc.latents[idx], enc.conditions[idx], enc.images[idx]
    text_index = idx.clone()
    text_index[torch.rand(len(idx), generator=gen) < dropout] = len(enc.texts) - 1  # caption dropout -> CFG
    text = enc.texts[text_index]
    flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)  # mirror whole clips: new motion, same physics
    x0 = torch.where(flip.view(-1, 1, 1, 1, 1), x0.flip(-1), x0)
    cond = torch.where(flip.view(-1, 1, 1, 1, 1), cond.flip(-1), cond)
    noise = torch.randn(x0.shape, generator=gen).to(device)  # drawn on the CPU: the same numbers on any device
    sigma = noise_levels(len(idx), gen, shift).view(-1, 1, 1, 1, 1).to(device)
    noisy = (1 - sigma) * x0 + sigma * noise
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pred = predict_velocity(transformer, noisy, cond, sigma.flatten(), text, image)
    return torch.nn.functional.mse_loss(pred.float(), noise - x0)


def heldout_loss(transformer, enc: Encoded) -> float:
    """Mean loss on held-out scenes at fixed noise (comparable across checkpoints)."""
    transformer.eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1234)
        total = [train_step(transformer, enc, torch.arange(i, min(i + 16, len(enc))), gen, 0.0).item()
                 for i in range(0, len(enc), 16)]
    transformer.train()
    return sum(total) / len(total)


def propagation_errors(transformer, enc: Encoded, sigmas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.0)) -> dict:
    """How far the model's clean-latent estimate is from the truth, per latent frame and noise level.

    Frame 0 is given by the condition (copying it is easy); frames 1+ must be propagated from it. Beside
    each error sits the error of predicting zeros (the latent's own energy): a model that has not learnt
    to carry frame 0 forward scores near that at high noise, whatever its overall loss says.
    """
    transformer.eval()
    x0 = enc.latents
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    report = {"zero_prediction": [round(float(x0[:, :, f].pow(2).mean()), 4) for f in range(x0.shape[2])]}
    with torch.no_grad():
        for s in sigmas:
            noisy = (1 - s) * x0 + s * noise
            v = predict_velocity(transformer, noisy, enc.conditions, torch.full((len(x0),), s), enc.texts[:len(x0)],
                                 enc.images)
            err = (noisy - s * v - x0).pow(2)
            report[f"sigma {s}"] = [round(float(err[:, :, f].mean()), 4) for f in range(x0.shape[2])]
    transformer.train()
    return report
