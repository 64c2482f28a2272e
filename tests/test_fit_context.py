"""The fitting context carries progress, resumption and checkpoints to every training loop; one registry lookup."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import attacks
import defences
from bench.data.base import ImageSplit
from defences.base import FitContext, ImageData, Task
from defences.training import TrainingSettings, train_classifier


class RecordingMeter:
    """A progress meter that keeps what it was told instead of logging it."""

    def __init__(self, label: str, total: int, logger: logging.Logger, every_s: float, unit: str):
        self.label, self.total, self.unit, self.done, self.updates = label, total, unit, 0, []

    def update(self, n: int = 1, **extra: object) -> None:
        self.done += n
        self.updates.append(extra)


def brightness_split(n: int = 64) -> ImageSplit:
    """Two classes told apart by brightness: dark images (label 0) and bright ones (label 1)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = 0.3 * torch.rand(n, 1, 4, 4, generator=generator) + 0.6 * labels.float()[:, None, None, None]
    return ImageSplit(images=images, labels=labels)


def fit(tmp_path, epochs: int, meters: list[RecordingMeter]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))

    def make_meter(*args, **kwargs) -> RecordingMeter:
        meters.append(RecordingMeter(*args, **kwargs))
        return meters[-1]

    ctx = FitContext(device=torch.device("cpu"), seed=3, workdir=tmp_path, make_progress=make_meter)
    settings = TrainingSettings(epochs=epochs, batch_size=16, lr=0.5, schedule="constant", augment="none")
    train_classifier(model, brightness_split(), settings, ctx)
    return model


@pytest.mark.determinism
def test_the_loop_reports_to_the_context_meter_and_resumes_where_it_stopped(tmp_path):
    meters: list[RecordingMeter] = []
    fit(tmp_path / "a", 2, meters)
    resumed = fit(tmp_path / "a", 3, meters)  # same work folder: epochs 0 and 1 come from the checkpoint
    uninterrupted = fit(tmp_path / "b", 3, meters)
    first, second, third = meters
    assert (first.label, first.total, first.unit, first.done) == ("train", 2, "epochs", 2)
    assert (second.total, len(second.updates), second.done) == (3, 1, 3)
    assert set(first.updates[0]) == {"loss", "acc"}
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, uninterrupted.state_dict()[name]), name
    assert (third.done, len(third.updates)) == (3, 3)


def test_registry_get_class_checks_the_registry_base_class():
    assert attacks.REGISTRY.get_class("pgd").__name__ == "PGD"
    assert defences.REGISTRY.get_class("standard").__name__ == "StandardTraining"
    with pytest.raises(TypeError, match="not a subclass of attacks.base.Attack"):
        attacks.REGISTRY.get_class("defences.standard:StandardTraining")
    with pytest.raises(TypeError, match="not a subclass of defences.base.Defence"):
        defences.REGISTRY.get_class("attacks.gradient:PGD")


def test_a_task_is_its_dataset_images_under_a_threat_model():
    data = ImageData("toy", 1, 8, 8, 10, (0.5,), (0.25,))
    task = Task.of(data, "L2", 0.5, image_size=32)
    assert task == Task("toy", 1, 32, 32, 10, (0.5,), (0.25,), "L2", 0.5)
    assert Task.of(data, "Linf", 0.1).image_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="one value per channel"):
        Task("toy", 3, 8, 8, 10, (0.5,), (0.25,), "Linf", 0.1)
