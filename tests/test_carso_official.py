"""The authors' published CARSO files (names and shapes of emaballarin/CARSO's save_model output) load into `carso`."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bench.zoo import WideResNet
from defences.base import FitContext, Task
from defences.carso.official import (
    PublishedCarso,
    PublishedCarsoParams,
    PublishedLayoutError,
    load_published_purifier,
)

CIFAR = Task("cifar10", 3, 32, 32, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), "Linf", 8 / 255)
TINY = Task("tinyimagenet", 3, 64, 64, 200, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), "Linf", 8 / 255)


def _bn(prefix: str, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.rand(count, generator=generator),
            f"{prefix}.bias": torch.rand(count, generator=generator),
            f"{prefix}.running_mean": torch.rand(count, generator=generator),
            f"{prefix}.running_var": torch.rand(count, generator=generator) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def published_parts(repr_shapes, tiny: bool, fcrepr: int, fjoint: int, seed: int = 0) -> dict[str, dict]:
    """State dicts named and shaped as CARSOWrap's repr_compressors / repr_fcn_compressor / decoder (public code)."""
    g = torch.Generator().manual_seed(seed)
    compressors, features = {}, 0
    for i, (c, h, w) in enumerate(repr_shapes):
        widths = [c] + [math.ceil(c / 2**k) for k in range(1, 5 if tiny else 4)]
        for j in range(len(widths) - 1):
            compressors[f"{i}.{j}.0.weight"] = torch.randn(widths[j + 1], widths[j], 3, 3, generator=g)
            compressors.update(_bn(f"{i}.{j}.1", widths[j + 1], g))
        shrink = 2 * (len(widths) - 1)
        features += widths[-1] * (h - shrink) * (w - shrink)
    fcn = {"1.0.weight": torch.randn(fcrepr, features, generator=g) * 1e-3, **_bn("1.1", fcrepr, g)}
    side = 4 if tiny else 3
    decoder = {"0.1.weight": torch.randn(256 * side * side, fjoint + fcrepr, generator=g) * 1e-2,
               "0.1.bias": torch.randn(256 * side * side, generator=g)}
    for b, (c_in, c_out) in enumerate([(256, 256), (256, 128), (128, 64), (64, 32)], start=1):
        decoder[f"{b}.0.weight"] = torch.randn(c_in, c_out, 3, 3, generator=g) * 1e-2
        decoder.update(_bn(f"{b}.1", c_out, g))
    kernel = 3 if tiny else 2
    decoder["5.weight"] = torch.randn(32, 3, kernel, kernel, generator=g) * 1e-2
    decoder["5.bias"] = torch.randn(3, generator=g)
    return {"repr_compressors": compressors, "repr_fcn_compressor": fcn, "decoder": decoder}


def build(task: Task, depth: int = 28, width: int = 10) -> PublishedCarso:
    classifier = WideResNet(depth, width, task.num_classes, activation="silu", mean=task.mean, std=task.std).eval()
    return PublishedCarso(classifier, task, PublishedCarsoParams(samples=2)).eval()


def test_the_published_wrn_28_10_cifar_layout_loads_tensor_for_tensor():
    carso = build(CIFAR)
    assert len(carso.layers) == 26
    parts = published_parts(carso.representation_shapes, tiny=False, fcrepr=512, fjoint=128)
    load_published_purifier(carso, parts)
    state = carso.purifier.state_dict()
    assert torch.equal(state["layer_encoders.25.6.weight"], parts["repr_compressors"]["25.2.0.weight"])
    assert torch.equal(state["layer_encoders.10.4.running_var"], parts["repr_compressors"]["10.1.1.running_var"])
    assert torch.equal(state["repr_encoder.0.weight"], parts["repr_fcn_compressor"]["1.0.weight"])
    assert torch.equal(state["decoder.project.0.bias"], parts["decoder"]["0.1.bias"])
    assert torch.equal(state["decoder.deconv.9.weight"], parts["decoder"]["4.0.weight"])
    assert torch.equal(state["decoder.deconv.12.weight"], parts["decoder"]["5.weight"])
    with torch.no_grad():
        assert carso(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_the_64x64_layout_with_four_compressor_blocks_loads():
    carso = build(TINY, depth=16, width=2)
    load_published_purifier(carso, published_parts(carso.representation_shapes, tiny=True, fcrepr=768, fjoint=192))
    with torch.no_grad():
        assert carso(torch.rand(1, 3, 64, 64)).shape == (1, 200)


def test_a_file_that_differs_names_the_missing_unexpected_and_misshaped_tensors():
    carso = build(TINY, depth=16, width=2)
    parts = published_parts(carso.representation_shapes, tiny=True, fcrepr=768, fjoint=192)
    del parts["decoder"]["3.0.weight"]
    parts["decoder"]["9.weight"] = torch.zeros(1)
    parts["repr_fcn_compressor"]["1.0.weight"] = torch.zeros(768, 5)
    with pytest.raises(PublishedLayoutError) as caught:
        load_published_purifier(carso, parts)
    message = str(caught.value)
    assert "missing 1" in message and "decoder.deconv.6.weight" in message
    assert "unexpected 1" in message and "decoder:9.weight" in message
    assert "repr_fcn_compressor:1.0.weight has shape (768, 5)" in message


def test_fit_loads_the_three_files_from_the_checkpoint_folder(tmp_path: Path):
    carso = build(TINY, depth=16, width=2)
    release = "wrn_28_10_tinyimagenet_200_wang_2023"
    ctx = FitContext(device=torch.device("cpu"), seed=0, workdir=tmp_path / "work", log=logging.getLogger("test"))
    carso.params.checkpoint_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="get_models_test.sh"):
        carso.fit(None, ctx)
    for part, state in published_parts(carso.representation_shapes, tiny=True, fcrepr=768, fjoint=192).items():
        save_file(state, str(tmp_path / f"{release}_{part}.safetensors"))
    summary = carso.fit(None, ctx)
    assert summary["published"] is True and summary["release"] == release
