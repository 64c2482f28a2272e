"""AToP: random transforms, GAN / AE purifiers and adversarial fine-tuning of the purifier."""

from defences.atop.model import AToP
from defences.atop.params import AToPParams

__all__ = ["AToP", "AToPParams"]
