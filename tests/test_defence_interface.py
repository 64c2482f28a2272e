"""The Defence interface: save/load round trips, what a checkpoint holds, and defences built on a base stage."""

from __future__ import annotations

import pytest
import torch

import defences
from bench.zoo import build_architecture
from defences.base import Task

TASK = Task("digits", 1, 32, 32, 10, (0.3,), (0.3,), "Linf", 0.1)


def _classifier() -> torch.nn.Module:
    return build_architecture("small_cnn", in_channels=1, num_classes=10, image_size=32).eval()


@pytest.mark.determinism
def test_save_load_round_trip_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    trained = defences.build("at", classifier=_classifier(), task=TASK)
    trained.save(tmp_path, {"note": "test"})
    assert (tmp_path / "defence.json").exists() and (tmp_path / "defence.safetensors").exists()
    fresh = defences.build("at", classifier=_classifier(), task=TASK)
    fresh.load(tmp_path)
    x = torch.rand(4, 1, 32, 32)
    assert torch.equal(trained(x), fresh(x))


def test_a_defence_on_a_base_stage_does_not_save_the_base(tmp_path):
    base = defences.build("at", classifier=_classifier(), task=TASK)
    on_top = defences.build("at", classifier=base.classifier, task=TASK, base=base)
    keys = set(on_top.checkpoint_state())
    assert keys and not any(k.startswith("base.") for k in keys)
    on_top.save(tmp_path, {})  # shared tensors used to make safetensors refuse this
    reloaded = defences.build("at", classifier=_classifier(), task=TASK, base=base)
    reloaded.load(tmp_path)
    assert reloaded.base is base and "base" not in dict(reloaded.named_children())


def test_loading_a_mismatched_checkpoint_is_an_error(tmp_path):
    defences.build("standard", classifier=_classifier(), task=TASK).save(tmp_path, {})
    other = build_architecture("small_cnn", in_channels=1, num_classes=10, image_size=32, hidden=64)
    try:
        defences.build("standard", classifier=other, task=TASK).load(tmp_path)
    except RuntimeError as error:
        assert "size mismatch" in str(error) or "does not match" in str(error)
    else:
        raise AssertionError("a checkpoint of another architecture loaded silently")
