"""The pretraining objective: standard I2V flow matching, and the two measures of how far it got.

`train_step` is one step's loss (caption dropout, mirrored clips, logit-normal noise levels, optionally
shifted); `heldout_loss` is the same loss at fixed noise on held-out scenes (comparable across checkpoints; also
over the moving cells alone);
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


def flow_errors(transformer, enc: Encoded, idx: torch.Tensor, gen: torch.Generator, dropout: float,
                shift: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared flow-matching errors [B, C, T', H', W'] of the standard I2V objective on clips `idx`, and which
    latent cells moved since frame 0 [B, 1, T', H', W'] (both mirrored with the clip).

    Noise levels are logit-normal, then optionally shifted towards high noise (`s' = k s / (1 + (k-1) s)`,
    the sampler's own flow shift): the sampler spends most of its steps above 0.8, where the model must
    carry frame 0 forward, and a 180-token proxy learnt that regime faster with k = 3 (docs/RESULTS.md).
    """
    device = enc.latents.device
    x0, cond, moving = enc.latents[idx], enc.conditions[idx], enc.moving[idx]
    text_index = idx.clone()
    text_index[torch.rand(len(idx), generator=gen) < dropout] = len(enc.texts) - 1  # caption dropout -> CFG
    flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device).view(-1, 1, 1, 1, 1)
    x0 = torch.where(flip, x0.flip(-1), x0)  # mirror whole clips: new motion, same physics ...
    cond = torch.where(flip, cond.flip(-1), cond)
    moving = torch.where(flip, moving.flip(-1), moving)
    # ... and the caption and CLIP image with them: a mirrored clip "moving left" moves right
    text = torch.where(flip.view(-1, 1, 1), enc.texts_mirrored[text_index], enc.texts[text_index])
    image = torch.where(flip.view(-1, 1, 1), enc.images_mirrored[idx], enc.images[idx])
    noise = torch.randn(x0.shape, generator=gen).to(device)  # drawn on the CPU: the same numbers on any device
    sigma = noise_levels(len(idx), gen, shift).view(-1, 1, 1, 1, 1).to(device)
    noisy = (1 - sigma) * x0 + sigma * noise
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pred = predict_velocity(transformer, noisy, cond, sigma.flatten(), text, image)
    return (pred.float() - (noise - x0)).pow(2), moving


def train_step(transformer, enc: Encoded, idx: torch.Tensor, gen: torch.Generator, dropout: float,
               shift: float = 1.0, motion_weight: float = 0.0) -> torch.Tensor:
    """One step's loss: the mean squared flow error, with cells that moved weighted `1 + motion_weight`.

    Most of a clip is background that frame 0 already shows; the moving objects, the part a base model
    must learn to draw, are a few percent of the latents and of the plain loss. `motion_weight` > 0 gives
    them more of the gradient (*ours*; docs/RESULTS.md section 8 measures it); 0 is the plain mean.
    """
    errors, moving = flow_errors(transformer, enc, idx, gen, dropout, shift)
    if not motion_weight:
        return errors.mean()
    weights = (1 + motion_weight * moving.float()).expand_as(errors)
    return (errors * weights).sum() / weights.sum()


def heldout_loss(transformer, enc: Encoded) -> dict[str, float]:
    """Mean loss on held-out scenes at fixed noise (comparable across checkpoints), over every latent
    ("all") and over the cells that moved since frame 0 ("moving": how well the objects are drawn)."""
    transformer.eval()
    total, moved, moved_cells, batches = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1234)
        for i in range(0, len(enc), 16):
            errors, moving = flow_errors(transformer, enc, torch.arange(i, min(i + 16, len(enc))), gen, 0.0)
            total, batches = total + errors.mean().item(), batches + 1
            moved += (errors * moving).sum().item()
            moved_cells += moving.float().sum().item() * errors.shape[1]
    transformer.train()
    return {"all": total / batches, "moving": moved / max(moved_cells, 1.0)}


def propagation_errors(transformer, enc: Encoded, sigmas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.0)) -> dict:
    """How far the model's clean-latent estimate is from the truth, per latent frame and noise level.

    Frame 0 is given by the condition (copying it is easy); frames 1+ must be propagated from it. Beside
    each error sits the error of predicting zeros (the latent's own energy): a model that has not learnt
    to carry frame 0 forward scores near that at high noise, whatever its overall loss says. The same
    over the moving cells alone ("moving ..."): the background is carried forward long before the objects
    are, and an average over every cell hides that.
    """
    transformer.eval()
    x0, moving = enc.latents, enc.moving.float()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))

    def per_frame(err: torch.Tensor, weight: torch.Tensor | None = None) -> list[float]:
        if weight is None:
            return [round(float(err[:, :, f].mean()), 4) for f in range(x0.shape[2])]
        cells = weight.expand_as(err)
        return [round(float((err[:, :, f] * cells[:, :, f]).sum() / cells[:, :, f].sum().clamp(min=1)), 4)
                for f in range(x0.shape[2])]

    report = {"zero_prediction": per_frame(x0.pow(2)), "moving zero_prediction": per_frame(x0.pow(2), moving)}
    with torch.no_grad():
        for s in sigmas:
            noisy = (1 - s) * x0 + s * noise
            v = predict_velocity(transformer, noisy, enc.conditions, torch.full((len(x0),), s), enc.texts[:len(x0)],
                                 enc.images)
            err = (noisy - s * v - x0).pow(2)
            report[f"sigma {s}"] = per_frame(err)
            report[f"moving sigma {s}"] = per_frame(err, moving)
    transformer.train()
    return report
