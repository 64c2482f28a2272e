"""Scenarios: a dataset, a threat model (norm, eps) and the source of the classifier, read from conf/scenario/."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

from attacks.base import NORMS
from defences.base import Task

CLASSIFIER_SOURCES = ("train:<arch>", "file:<path>", "robustbench:<name>")


@dataclass(frozen=True)
class Scenario:
    name: str
    dataset: str
    norm: str
    eps: float
    classifier: str
    description: str = ""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    classifier_arch: str | None = None
    classifier_params: dict[str, Any] = field(default_factory=dict)
    robustbench_dataset: str | None = None
    defence_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    test_subset_seed: int = 0
    source: str = ""  # paper / table this scenario comes from

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"scenario {self.name}: norm={self.norm!r} is not valid; valid: {', '.join(NORMS)}")
        if not self.eps > 0:
            raise ValueError(f"scenario {self.name}: eps must be > 0, got {self.eps}")
        prefix = self.classifier.split(":", 1)[0]
        if prefix not in ("train", "file", "robustbench") or ":" not in self.classifier:
            raise ValueError(f"scenario {self.name}: classifier={self.classifier!r} is not valid; valid forms: "
                             f"{', '.join(CLASSIFIER_SOURCES)}")
        if prefix == "file" and not self.classifier_arch:
            raise ValueError(f"scenario {self.name}: a file: classifier needs classifier_arch (e.g. wide_resnet_28_10)")

    @property
    def classifier_is_pretrained(self) -> bool:
        return not self.classifier.startswith("train:")

    @property
    def arch(self) -> str | None:
        return self.classifier.split(":", 1)[1] if self.classifier.startswith("train:") else self.classifier_arch

    def identity(self) -> dict[str, Any]:
        """Everything about the scenario that changes a result (used in stage and cell keys)."""
        return {"dataset": self.dataset, "dataset_options": self.dataset_options, "norm": self.norm,
                "eps": self.eps, "classifier": self.classifier, "classifier_arch": self.classifier_arch,
                "classifier_params": self.classifier_params, "test_subset_seed": self.test_subset_seed}

    def task(self) -> Task:
        from bench.data import dataset_info

        image_size = 32 if self.dataset_options.get("pad_to_32") else self.dataset_options.get("image_size")
        return Task.of(dataset_info(self.dataset), self.norm, self.eps, image_size)


def scenario_from_dict(name: str, raw: dict[str, Any]) -> Scenario:
    valid = {f.name for f in fields(Scenario)} - {"name"}
    unknown = sorted(set(raw) - valid)
    if unknown:
        from attacks.registry import closest_hint

        raise ValueError(f"scenario {name}: unknown key(s) {unknown}. {closest_hint(unknown[0], valid)}")
    return Scenario(name=name, **copy.deepcopy(raw))
