"""CARSO's settings with the paper's defaults (the CARSO paper Tables 12-14, scenario (a) CIFAR-10), validated.

Architecture sizes left at None follow the image size: below 64x64 the CIFAR values of Table 13
(fcrepr 512, fjoint 128) and the 3-convolution representation encoder of Table 6; from 64x64 on the
TinyImageNet values (768, 192) and the 4-convolution encoder of Table 7.

`training_budget`:
- `paper`: training attacks at eps/2 and eps in pixel space (the scenario's eps, or `train_eps`).
- `public_code`: the authors' public code divides both budgets by the mean of the dataset's std, because
  it states them in the normalised space while its models normalise internally; in pixel space that is
  ~16/255 and ~32/255 on CIFAR instead of 4/255 and 8/255 (../shared/REFERENCE.md §1). Only the budgets
  are scaled; the PGD step size stays `pgd_step_size`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from defences.carso.aggregation import METHODS as AGGREGATIONS
from defences.carso.purifier import DECODER_STYLES

TRAINING_BUDGETS = ("paper", "public_code")
LARGE_IMAGE_SIDE = 64


@dataclass
class CarsoParams:
    # --- representation: classifier layers hooked; None = the architecture's default (representation.py)
    layers: list[str] | None = None
    # --- purifier architecture (Tables 4-11, 13)
    fcrepr: int | None = None
    fjoint: int | None = None
    repr_encoder_depth: int | None = None
    decoder_channels: list[int] = field(default_factory=lambda: [256, 256, 128, 64, 32])
    decoder_style: str = "auto"
    input_encoder_channels: list[int] = field(default_factory=lambda: [6, 12])
    # --- inference (§4.5, §5.1)
    samples: int = 8
    aggregation: str = "double_exp"
    max_batch: int = 512  # reconstructions decoded and classified per chunk
    # --- purifier training (§4.4, Tables 12 and 14)
    epochs: int = 200
    batch_size: int = 5120
    micro_batch: int | None = None  # examples per forward/backward (gradients accumulated); None: whole batch
    # recompute each decoder block in the backward pass instead of keeping its activations (training and attacks
    # that differentiate through the decoder): less memory, about one more decoder forward per backward
    gradient_checkpointing: bool = False
    adversarial_fraction: float = 0.5
    training_budget: str = "paper"
    train_eps: float | None = None  # None: the scenario's eps
    pgd_steps: int = 40
    pgd_step_size: float = 0.01
    pgd_random_start: bool = True  # not stated in the paper; Madry et al.'s PGD starts at a random point
    initial_lr: float = 5e-9
    plateau_lr: float = 0.064
    final_lr: float = 4.346e-4
    warmup_epochs: int = 25
    plateau_epochs: int = 25
    anneal_epochs: int = 150
    kl_start_epoch: int = 25
    kl_end_epoch: int = 34
    kl_weight: float = 1.0
    radam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    radam_eps: float = 1e-8
    lookahead_steps: int = 6
    lookahead_alpha: float = 0.8
    check_examples: int = 256  # training examples whose purified clean accuracy is reported after fitting

    def __post_init__(self) -> None:
        choices = (("aggregation", self.aggregation, AGGREGATIONS), ("decoder_style", self.decoder_style,
                   DECODER_STYLES), ("training_budget", self.training_budget, TRAINING_BUDGETS))
        for name, value, valid in choices:
            if value not in valid:
                raise ValueError(f"carso: {name}={value!r} is not valid; valid: {', '.join(valid)}")
        positive = {"samples": self.samples, "max_batch": self.max_batch, "epochs": self.epochs,
                    "batch_size": self.batch_size, "pgd_steps": self.pgd_steps,
                    "lookahead_steps": self.lookahead_steps}
        for name, optional in (("fcrepr", self.fcrepr), ("fjoint", self.fjoint), ("micro_batch", self.micro_batch),
                               ("repr_encoder_depth", self.repr_encoder_depth)):
            if optional is not None:
                positive[name] = optional
        bad = {k: v for k, v in positive.items() if not (isinstance(v, int) and v >= 1)}
        if bad:
            raise ValueError(f"carso: these settings must be integers >= 1: {bad}")
        if not 0.0 <= self.adversarial_fraction <= 1.0:
            raise ValueError(f"carso: adversarial_fraction must be in [0, 1], got {self.adversarial_fraction}")
        if min(self.warmup_epochs, self.plateau_epochs, self.anneal_epochs, self.kl_start_epoch) < 0:
            raise ValueError("carso: warmup/plateau/anneal epochs and kl_start_epoch must be >= 0")
        if self.kl_end_epoch < self.kl_start_epoch:
            raise ValueError(f"carso: kl_end_epoch ({self.kl_end_epoch}) is before kl_start_epoch "
                             f"({self.kl_start_epoch})")
        if len(self.input_encoder_channels) != 2 or len(self.radam_betas) != 2:
            raise ValueError("carso: input_encoder_channels and radam_betas need exactly 2 values each")
        if self.layers is not None and (not self.layers or not all(isinstance(n, str) for n in self.layers)):
            raise ValueError(f"carso: layers must be null or a non-empty list of layer names, got {self.layers}")

    def architecture(self, image_side: int) -> dict[str, int]:
        """fcrepr, fjoint and encoder depth, with the image-size defaults filled in."""
        large = image_side >= LARGE_IMAGE_SIDE
        return {"fcrepr": self.fcrepr or (768 if large else 512), "fjoint": self.fjoint or (192 if large else 128),
                "depth": self.repr_encoder_depth or (4 if large else 3)}
