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
from typing import Any

import torch
from torch import nn

from defences.atop.params import AToPParams
from defences.atop.purifiers import InpaintingGenerator, MaskedAutoencoder, PatchDiscriminator, set_checkpointing
from defences.atop.training import train_purifier
from defences.atop.transforms import PatchGrid, RandomTransform, compose
from defences.base import Defence, FitContext, Task
from defences.fitting import accuracy

DIAGNOSTIC_EXAMPLES = 512


def build_purifier(params: AToPParams, task: Task) -> nn.Module:
    purifier = _purifier(params, task)
    set_checkpointing(purifier, params.gradient_checkpointing)
    return purifier


def _purifier(params: AToPParams, task: Task) -> nn.Module:
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
    smoke_budget = {"pretrain_epochs": 1, "pretrain_batch_size": 4, "finetune_epochs": 1, "finetune_batch_size": 4}
    cost_kind = "atop"

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
        # f(g(t(x))) with one random transform per image: a quick fitting diagnostic
        summary["purified_train_accuracy"] = accuracy(self, train.float_images(slice(0, count)), train.labels[:count],
                                                      ctx.device, batch_size=256)
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
