"""Gradient checkpointing of CARSO's decoder: outputs unchanged, gradients (of the training loss with respect to
the purifier's weights, of the defence's output with respect to its input) equal to those without it, BatchNorm's
running statistics updated once per forward as without it, and fewer activations kept for the backward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

import defences
from bench.zoo import SmallCNN
from defences.base import Task
from defences.carso.representation import capture
from defences.carso.training import vae_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASK = Task(dataset="digits", channels=1, height=32, width=32, num_classes=10, mean=(0.3,), std=(0.4,),
            norm="Linf", eps=0.15)
# The recomputation runs the same kernels on the same shapes as the first pass, so values agree to the bit but
# for the order in which autograd sums a tensor's gradient contributions: a few float32 ulps.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def carso(checkpointed: bool):
    torch.manual_seed(0)
    classifier = SmallCNN(1, 10, 32, channels=(4, 8), hidden=16, mean=0.3, std=0.4).eval()
    return defences.build("carso", classifier=classifier, task=TASK, fcrepr=32, fjoint=8, samples=3,
                          decoder_channels=[16, 16, 8, 8, 4], gradient_checkpointing=checkpointed)


def images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))


@contextmanager
def counting_saved_bytes() -> Iterator[list[int]]:
    """The sizes of the tensors autograd keeps for the backward pass inside the block."""
    kept: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield kept


def training_pass(model) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor], int]:
    """The training loss's outputs and weight gradients, and the bytes kept for the backward pass."""
    model.purifier.train()
    x = images()
    with torch.no_grad():
        representation, _ = capture(model.classifier, x, model.layers)
    torch.manual_seed(2)
    with counting_saved_bytes() as kept:
        logits, mu, logvar = model.purifier(x, representation)
        loss, _, _ = vae_loss(logits, x, mu, logvar, beta=1.0)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.purifier.named_parameters() if p.grad is not None}
    return (logits, mu, logvar), grads, sum(kept)


def test_training_gradients_and_outputs_are_unchanged_and_batchnorm_updates_once():
    plain, checkpointed = carso(False), carso(True)
    outputs, grads, plain_bytes = training_pass(plain)
    checkpointed_outputs, checkpointed_grads, checkpointed_bytes = training_pass(checkpointed)
    for ours, theirs in zip(checkpointed_outputs, outputs, strict=True):
        assert torch.equal(ours, theirs)  # the forward pass is the same computation
    assert grads.keys() == checkpointed_grads.keys() and any(k.startswith("decoder.deconv") for k in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, **TOLERANCE, msg=name)
    for (name, ours), theirs in zip(checkpointed.purifier.named_buffers(), plain.purifier.buffers(), strict=True):
        assert torch.equal(ours, theirs), name  # running statistics updated once, not again by the recomputation
    assert checkpointed_bytes < 0.8 * plain_bytes


def test_the_defences_input_gradient_and_output_are_unchanged():
    results = []
    for checkpointed in (False, True):
        model = carso(checkpointed).eval()
        x = images().requires_grad_(True)
        torch.manual_seed(3)
        out = model(x)
        out[:, 0].sum().backward()
        results.append((out.detach(), x.grad))
    (plain_out, plain_grad), (out, grad) = results
    assert torch.equal(out, plain_out)
    torch.testing.assert_close(grad, plain_grad, **TOLERANCE)
    assert plain_grad.abs().sum() > 0


def _purifier(kind: str, checkpointed: bool):
    from defences.atop.purifiers import InpaintingGenerator, MaskedAutoencoder, set_checkpointing

    torch.manual_seed(0)
    purifier = InpaintingGenerator(1, 16, 16, base_width=8, stages=2) if kind == "gan" else \
        MaskedAutoencoder(1, 16, 16, patch_size=4, dim=32, depth=2, heads=2, decoder_dim=16, decoder_depth=2,
                          decoder_heads=2)
    set_checkpointing(purifier, checkpointed)
    return purifier.train()


@pytest.mark.parametrize("kind", ["gan", "ae"])
def test_atop_purifier_gradients_and_outputs_are_unchanged(kind):
    generator = torch.Generator().manual_seed(4)
    x_t, mask = torch.rand(3, 1, 16, 16, generator=generator), (torch.rand(3, 1, 16, 16, generator=generator) > 0.3)
    weights = torch.randn(3, 1, 16, 16, generator=generator)
    results = []
    for checkpointed in (False, True):
        purifier, x = _purifier(kind, checkpointed), x_t.clone().requires_grad_(True)
        with counting_saved_bytes() as kept:
            out = purifier(x, mask.float())
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad, {n: p.grad for n, p in purifier.named_parameters()}, sum(kept)))
    (plain_out, plain_input, plain_weights, plain_bytes), (out, input_grad, weight_grads, kept_bytes) = results
    assert torch.equal(out, plain_out)
    torch.testing.assert_close(input_grad, plain_input, **TOLERANCE)
    for name, grad in plain_weights.items():
        torch.testing.assert_close(weight_grads[name], grad, **TOLERANCE, msg=name)
    assert kept_bytes < 0.8 * plain_bytes


def test_the_setting_switches_checkpointing_on_in_the_built_purifier():
    from defences.atop.model import build_purifier
    from defences.atop.params import AToPParams

    small = {"generator_width": 8, "generator_layout": "compact"}
    on = build_purifier(AToPParams(gradient_checkpointing=True, **small), TASK)
    off = build_purifier(AToPParams(**small), TASK)
    assert all(stage.checkpointed for stage in on.stages) and not any(stage.checkpointed for stage in off.stages)
    assert carso(True).purifier.decoder.checkpointed and not carso(False).purifier.decoder.checkpointed
