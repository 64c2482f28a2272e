"""`atop`: Adversarial Training on Purification (the AToP paper): y = f(g(t(x))) with a frozen classifier f.

t is a random transform (RT1, RT2 or RT3), g a purifier (GAN inpainting generator or masked denoising
AE) pre-trained with L_org and, with `finetune: true`, fine-tuned with L_org(x') + lambda * CE(f(g(t(x'))), y)
on FGSM examples x' (Algorithm 1). `purify` (t then g, the stochastic part) and `classify` (f) are exposed
for BPDA and for classifier-only attacks.

The classifier must already be trained: it comes from the `base` stage (`base: standard` in a grid: the
scenario's clean classifier; AToP normally sits in front of a classifier that is NOT adversarially trained),
or from a pre-trained `file:`/`robustbench:` scenario classifier. AToP never changes it, so it is never
saved with the defence. When `base` is itself an AToP stage (e.g. `atop_ft` with `base: atop_noft`), its
purifier and discriminator are copied and pre-training is skipped: the fine-tuned row starts from exactly the
pre-trained purifier of the no-FT row, and the classifier is the base's (that is, the `standard` one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from defences.atop.losses import GAN_LOSSES
from defences.atop.purifiers import LAYOUTS, InpaintingGenerator, MaskedAutoencoder, PatchDiscriminator
from defences.atop.training import purified_accuracy, train_purifier
from defences.atop.transforms import MASK_MODES, TRANSFORMS, PatchGrid, RandomTransform, compose
from defences.base import Defence, FitContext, Task

PURIFIERS = ("gan", "ae")
FINETUNE_TARGETS = ("adversarial", "clean")
DIAGNOSTIC_EXAMPLES = 512


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


def build_purifier(params: AToPParams, task: Task) -> nn.Module:
    c, h, w = task.image_shape
    if params.purifier == "gan":
        return InpaintingGenerator(c, h, w, params.generator_width, params.generator_stages,
                                   params.generator_layout)
    patch = params.ae_patch_size or PatchGrid.for_image(h, w, params.patches_per_side).patch_h
    if h % patch or w % patch:
        raise ValueError(f"atop: the AE's patch side {patch} must divide the image size {h}x{w}; "
                         f"set ae_patch_size to a divisor (e.g. {math.gcd(h, w)})")
    return MaskedAutoencoder(c, h, w, patch, params.ae_dim, params.ae_depth, params.ae_heads, params.ae_decoder_dim,
                             params.ae_decoder_depth, params.ae_decoder_heads)


class AToP(Defence):
    """Random transform -> purifier -> frozen classifier, the purifier optionally adversarially fine-tuned."""

    Params = AToPParams
    code_version = "1"
    stochastic = True
    has_purifier = True
    saves_classifier = False  # never changed here: rebuilt from the base stage or the scenario's source

    def __init__(self, classifier: nn.Module, task: Task, params: AToPParams, base: Defence | None = None):
        super().__init__(classifier, task, params, base)
        self.transform = RandomTransform(params.transform, params.sigma, params.missing_rate, params.num_masks,
                                         params.patches_per_side, params.mask_mode)
        self.purifier = build_purifier(params, task)
        self.discriminator = (PatchDiscriminator(task.channels, task.height, task.width, params.discriminator_width)
                              if params.purifier == "gan" else None)

    # --- inference -------------------------------------------------------------------------------
    def purify_with_mask(self, x: torch.Tensor,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_hat = g(t(x)) and the mask of pixels the purifier regenerated (1 - m; all ones for RT3)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.task.image_shape:
            raise ValueError(f"atop expects images of shape (B, {', '.join(map(str, self.task.image_shape))}), "
                             f"got {tuple(x.shape)}")
        copies, masks = self.transform.apply(x, generator)
        purified = self.purifier(copies.flatten(0, 1), masks.flatten(0, 1)).view_as(copies)
        if self.transform.kind == "rt3":
            return compose(purified, masks), torch.ones_like(masks[0])
        return purified[0], 1.0 - masks[0]

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.purify_with_mask(x)[0]

    # --- fitting ---------------------------------------------------------------------------------
    def fit(self, train: Any, ctx: FitContext) -> dict[str, Any]:
        if self.base is None and not ctx.classifier_pretrained:
            raise ValueError(
                "atop purifies in front of a trained classifier, but this scenario's classifier is an untrained "
                "'train:<arch>' model. Give the grid entry `base: standard` (or another stage whose classifier is "
                "trained), or use a scenario with a file:/robustbench: classifier.")
        self.to(ctx.device)
        summary: dict[str, Any] = {"transform": self.params.transform, "purifier": self.params.purifier}
        if isinstance(self.base, AToP):
            self.copy_purifier_from(self.base)
            summary["pretrain"] = {"from_base_stage": True, "epochs": 0}
        else:
            summary["pretrain"] = train_purifier(self, train, ctx, "pretrain")
        if self.params.finetune:
            summary["finetune"] = train_purifier(self, train, ctx, "finetune")
        count = min(DIAGNOSTIC_EXAMPLES, len(train))
        summary["purified_train_accuracy"] = purified_accuracy(self, train.float_images(slice(0, count)),
                                                               train.labels[:count], ctx.device)
        ctx.log.info("atop (%s, %s, finetune=%s): f(g(t(x))) accuracy on %d training images %.3f",
                     self.params.transform, self.params.purifier, self.params.finetune, count,
                     summary["purified_train_accuracy"])
        return summary

    def copy_purifier_from(self, base: AToP) -> None:
        """Start from the base stage's purifier (and discriminator): the same architecture is required."""
        parts = [("purifier", self.purifier, base.purifier)]
        if self.discriminator is not None:
            parts.append(("discriminator", self.discriminator, base.discriminator))
        for name, mine, theirs in parts:
            if theirs is None:
                raise ValueError(f"atop: the base stage has no {name} (purifier={base.params.purifier!r}); "
                                 f"this stage needs purifier={self.params.purifier!r}")
            try:
                mine.load_state_dict(theirs.state_dict())
            except RuntimeError as error:
                raise ValueError(f"atop: cannot start from the base stage's {name}: its architecture settings "
                                 f"differ from this stage's (purifier, widths, stages, AE sizes must match): "
                                 f"{str(error).splitlines()[0]}") from error
