"""bench.zoo.pooling.MaxPool2d gives nn.MaxPool2d's outputs and gradients bit for bit, ties and NaN included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.benchmarks.speed import with_torch_pooling
from bench.zoo.pooling import MaxPool2d
from bench.zoo.small_cnn import SmallCNN

pytestmark = pytest.mark.determinism


def _hard_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """ReLU-like maps with many exact ties (zeros and a clamp value) and a few NaNs."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator).relu().clamp(max=1.0)
    x.view(-1)[torch.randint(0, x.numel(), (5,), generator=generator)] = float("nan")
    return x


def _grad(module: nn.Module, x: torch.Tensor, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    out = module(leaf)
    (grad,) = torch.autograd.grad(out, leaf, grad_output)
    return out, grad


@pytest.mark.parametrize("shape", [(6, 4, 8, 8), (3, 5, 9, 7), (2, 3, 2, 2)])
def test_outputs_and_gradients_equal_torch_max_pool_bit_for_bit(shape: tuple[int, ...]) -> None:
    x = _hard_input(shape, seed=sum(shape))
    reference, fast = nn.MaxPool2d(2), MaxPool2d(2)
    grad_output = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    ref_out, ref_grad = _grad(reference, x, grad_output)
    out, grad = _grad(fast, x, grad_output)
    assert torch.equal(out.isnan(), ref_out.isnan())
    assert torch.equal(out.nan_to_num(), ref_out.nan_to_num())
    assert torch.equal(grad, ref_grad)
    assert out.is_contiguous() and grad.is_contiguous()
    with torch.no_grad():
        assert torch.equal(fast(x).nan_to_num(), reference(x).nan_to_num())


def test_tie_goes_to_the_first_position_in_scan_order() -> None:
    x = torch.tensor([[[[2.0, 2.0], [2.0, 2.0]]]])
    _, grad = _grad(MaxPool2d(2), x, torch.ones(1, 1, 1, 1))
    assert grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("settings", [{"kernel_size": 3, "stride": 1}, {"kernel_size": 2, "padding": 1},
                                      {"kernel_size": 2, "ceil_mode": True}])
def test_other_settings_fall_back_to_torch(settings: dict) -> None:
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(MaxPool2d(**settings)(x), nn.MaxPool2d(**settings)(x))


def test_small_cnn_logits_and_gradients_unchanged() -> None:
    """Same state dict; bit for bit the same logits and input gradients (an attack's pass) and weight gradients
    (a training step)."""
    torch.manual_seed(0)
    fast = SmallCNN(1, 10, 32)
    reference = with_torch_pooling(fast)
    assert [type(m) for m in reference.features if isinstance(m, nn.MaxPool2d)] == [nn.MaxPool2d] * 2
    assert fast.state_dict().keys() == reference.state_dict().keys()
    x, y = torch.rand(16, 1, 32, 32), torch.arange(16) % 10
    attack_pass = []
    for model in (reference, fast):
        leaf = x.clone().requires_grad_(True)
        logits = model(leaf)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), leaf)
        attack_pass.append((logits.detach(), grad))
    assert torch.equal(attack_pass[1][0], attack_pass[0][0]) and torch.equal(attack_pass[1][1], attack_pass[0][1])
    weight_grads = []
    for model in (reference, fast):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        weight_grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weight_grads, strict=True))
