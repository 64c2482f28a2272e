"""What every attack call does around `perturb`: it counts the examples sent forward and backward (attacks.base.
PassCounter), and the model's weights stop requiring gradients while it runs (attacks.base.no_weight_gradients)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import attacks
from attacks.base import Attack, PassCounter, no_weight_gradients


def test_counter_counts_examples_forward_and_every_backward_through_the_output():
    torch.manual_seed(0)
    counter = PassCounter(nn.Linear(6, 3))
    x = torch.rand(5, 6, requires_grad=True)
    logits = counter(x)
    with torch.no_grad():
        counter(x[:2])
    assert (counter.forward_examples, counter.backward_examples) == (7, 0)
    for klass in range(3):  # one backward per class through the same output, as a Jacobian does
        torch.autograd.grad(logits[:, klass].sum(), x, retain_graph=True)
    assert counter.backward_examples == 15


def test_counter_counts_a_model_whose_output_is_its_input():
    """An output without an autograd node (a leaf that requires grad) is counted by a hook on the tensor."""
    counter = PassCounter(nn.Identity())
    x = torch.rand(4, 3, requires_grad=True)
    out = counter(x)
    assert out.grad_fn is None
    (out * 2).sum().backward()
    assert (counter.forward_examples, counter.backward_examples) == (4, 4)


@dataclass
class _BackwardInPerturb(Attack):
    """Calls .backward() as pyautoattack's FAB does, records what it saw, optionally fails."""

    fail: bool = False

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.__dict__["saw"] = [p.requires_grad for p in model.parameters()]
        leaf = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(leaf), y).backward()
        self.__dict__["input_grad"] = leaf.grad.clone()
        if self.fail:
            raise RuntimeError("attack failed")
        return x


@pytest.mark.determinism
def test_attack_runs_without_weight_gradients_and_restores_the_flags():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    model[1].bias.requires_grad_(False)  # a parameter frozen by its owner stays frozen after the attack
    flags = [p.requires_grad for p in model.parameters()]
    x, y = torch.rand(4, 1, 3, 4), torch.tensor([0, 1, 2, 0])
    attack = _BackwardInPerturb(eps=0.1)
    attack(model, x, y)
    assert attack.saw == [False] * 4
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # nothing left in .grad for a training step to add
    leaf = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(leaf), y).backward()
    assert torch.equal(attack.input_grad, leaf.grad)  # the input gradient is the same with weight gradients on
    with pytest.raises(RuntimeError, match="attack failed"):
        _BackwardInPerturb(eps=0.1, fail=True)(model, x, y)
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.determinism
def test_real_attack_gives_the_same_point_with_or_without_weight_gradients():
    """PGD through the public entry point (weights frozen) equals PGD's perturb on a model whose weights require
    gradients: skipping the weight gradients changes no input gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5)).eval()
    x, y = torch.rand(6, 1, 6, 6), torch.randint(0, 5, (6,))
    attack = attacks.build("pgd", eps=0.1, steps=5)
    torch.manual_seed(1)
    frozen = attack(model, x, y)
    torch.manual_seed(1)
    live = attack.perturb(PassCounter(model), x, y)
    assert torch.equal(frozen, live)
    with no_weight_gradients(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
