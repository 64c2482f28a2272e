"""`standard`: the undefended classifier, trained on clean data (or used as-is when pre-trained): the control row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from defences.base import Defence, FitContext
from defences.training import TrainingSettings, train_classifier

TRAIN_CHOICES = ("auto", "yes", "no")


@dataclass
class StandardParams(TrainingSettings):
    # auto: train a `train:<arch>` classifier, use a pre-trained one (file:/robustbench:) as it is
    train: str = "auto"

    def should_train(self, pretrained: bool) -> bool:
        if self.train not in TRAIN_CHOICES:
            raise ValueError(f"train={self.train!r} is not valid; valid: {', '.join(TRAIN_CHOICES)}")
        return self.train == "yes" or (self.train == "auto" and not pretrained)


class StandardTraining(Defence):
    """The classifier itself, fitted with cross-entropy on clean images."""

    Params = StandardParams
    smoke_budget = {"epochs": 1, "batch_size": 4, "warmup_epochs": 0, "collapse_factor": 0.0}  # no collapse check
    cost_kind = "at"

    def fit(self, train: Any, ctx: FitContext) -> dict[str, Any]:
        if not self.params.should_train(ctx.classifier_pretrained):
            return {"trained": False, "note": "pre-trained classifier used as it is"}
        return {"trained": True, **train_classifier(self.classifier, train, self.params, ctx, label="standard")}
