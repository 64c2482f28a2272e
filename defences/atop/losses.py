"""AToP's losses: L_org of each purifier (GAN: adversarial + L1 = L_df; AE: MAE reconstruction) and L_cls.

the AToP paper Eq. 9: L = E[D(x')] - E[D(g(t(x')))] + E||x' - g(t(x'))||_1 + lambda * CE(y, f(g(t(x')))).
The first two terms are the GAN game; here the discriminator and the generator take alternating steps
with either the hinge loss (SN-PatchGAN's, whose generator term is -E[D(g)] exactly as in Eq. 9) or the
non-saturating loss. Discriminator outputs are patch maps, averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_LOSSES = ("hinge", "non_saturating")


def _check_kind(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"gan_loss={kind!r} is not valid; valid: {', '.join(GAN_LOSSES)}")


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The discriminator's loss: real images should score high, purified ones low."""
    _check_kind(kind)
    if kind == "hinge":
        return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def generator_adversarial_loss(fake_scores: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The generator's GAN term: -E[D(g)] (hinge / Eq. 9) or -E[log sigmoid(D(g))] (non-saturating)."""
    _check_kind(kind)
    if kind == "hinge":
        return -fake_scores.mean()
    return F.softplus(-fake_scores).mean()


def l1_loss(purified: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """E||target - g(t(x))||_1, averaged over pixels (DeepFill's per-pixel L1)."""
    return (purified - target).abs().mean()


def mae_loss(purified: torch.Tensor, target: torch.Tensor, regenerated: torch.Tensor,
             visible_weight: float = 1.0) -> torch.Tensor:
    """Weighted per-pixel squared error: weight 1 on regenerated (masked) pixels, `visible_weight` elsewhere.

    visible_weight = 0 is MAE's loss on the masked patches only; 1 (DMAE's choice, since visible pixels are
    noisy too and must be denoised) is the mean squared error over all pixels.
    """
    if visible_weight < 0:
        raise ValueError(f"mae_visible_weight must be >= 0, got {visible_weight}")
    weights = (regenerated + visible_weight * (1.0 - regenerated)).expand_as(purified)
    return (weights * (purified - target) ** 2).sum() / weights.sum().clamp_min(1e-12)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_cls: cross-entropy of the frozen classifier on the purified adversarial examples."""
    return F.cross_entropy(logits, labels)
