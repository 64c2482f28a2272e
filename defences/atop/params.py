"""AToP's settings (`AToPParams`), with the AToP paper's values where it gives them, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass

from defences.atop.losses import GAN_LOSSES
from defences.atop.purifiers import LAYOUTS
from defences.atop.transforms import MASK_MODES, TRANSFORMS

PURIFIERS = ("gan", "ae")
FINETUNE_TARGETS = ("adversarial", "clean")


@dataclass
class AToPParams:
    """Settings with the AToP paper's values (§4.1) where it gives them; the rest documented per field."""

    # random transform (§3.1, §4.1): RT2 is the paper's main setting (§4.2)
    transform: str = "rt2"
    sigma: float = 0.25
    missing_rate: float = 0.25
    num_masks: int = 4           # RT3's N; each of its masks misses 1/N of the patches
    patches_per_side: int = 8    # patch side p = image side / 8
    mask_mode: str = "bernoulli"  # RT1/RT2: each patch missing with probability r; or "fixed_count"
    # purifier: DeepFill-v2 sizes for the GAN, ViT-Base MAE sizes for the AE
    purifier: str = "gan"
    generator_width: int = 48
    generator_stages: int = 2
    generator_layout: str = "deepfill"  # or "compact": one gated convolution per resolution
    discriminator_width: int = 64
    ae_patch_size: int | None = None  # None: the mask patch side, so tokens and mask patches coincide
    ae_dim: int = 768
    ae_depth: int = 12
    ae_heads: int = 12
    ae_decoder_dim: int = 512
    ae_decoder_depth: int = 8
    ae_decoder_heads: int = 16
    # recompute each purifier layer in the backward pass instead of keeping its activations (training, and attacks
    # that differentiate through the purifier): less memory, about one more purifier forward per backward
    gradient_checkpointing: bool = False
    # L_org (Eq. 9 / L_mae)
    gan_loss: str = "hinge"
    gan_weight: float = 1.0
    l1_weight: float = 1.0
    mae_visible_weight: float = 1.0
    # pre-training with L_org (the paper starts from published pre-trained purifiers; epochs not stated)
    pretrain_epochs: int = 100
    pretrain_batch_size: int = 64
    lr: float = 1e-4             # DeepFill v2's Adam(1e-4, betas 0.5/0.999)
    discriminator_lr: float = 1e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    # fine-tuning (Algorithm 1): FGSM eps 8/255 against the classifier, lambda 0.1 (epochs not stated)
    finetune: bool = True
    finetune_epochs: int = 10
    finetune_batch_size: int = 64
    finetune_lr: float = 1e-4
    cls_weight: float = 0.1      # lambda
    finetune_eps: float = 8 / 255
    finetune_norm: str = "Linf"
    finetune_target: str = "adversarial"  # Eq. 9 reconstructs x'; "clean" reconstructs x instead

    def __post_init__(self) -> None:
        choices = (("transform", self.transform, TRANSFORMS), ("mask_mode", self.mask_mode, MASK_MODES),
                   ("purifier", self.purifier, PURIFIERS),
                   ("gan_loss", self.gan_loss, GAN_LOSSES), ("generator_layout", self.generator_layout, LAYOUTS),
                   ("finetune_norm", self.finetune_norm, ("Linf", "L2")),
                   ("finetune_target", self.finetune_target, FINETUNE_TARGETS))
        for name, value, valid in choices:
            if value not in valid:
                raise ValueError(f"atop: {name}={value!r} is not valid; valid: {', '.join(valid)}")
        for name in ("pretrain_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"atop: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("pretrain_batch_size", "finetune_batch_size", "generator_width", "discriminator_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"atop: {name} must be >= 1, got {getattr(self, name)}")
        if self.finetune_eps < 0 or self.cls_weight < 0:
            raise ValueError(f"atop: finetune_eps and cls_weight must be >= 0, got {self.finetune_eps}, "
                             f"{self.cls_weight}")
