"""AToP: random transforms, GAN / AE purifiers and adversarial fine-tuning of the purifier."""

from defences.atop.model import AToP, AToPParams

__all__ = ["AToP", "AToPParams"]
