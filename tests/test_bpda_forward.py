"""BPDA attacks the defence's own output (attacks/bpda.py through `Defence.bpda_forward`): on CARSO that is the
aggregate of all N decoded samples, not one reconstruction. With the forward's randomness seeded the BPDA
forward equals the normal forward, and its input gradient is exactly the classifier + aggregation gradient at
the decoded samples, passed to x by the identity (summed over the samples)."""

from __future__ import annotations

import pytest
import torch

import attacks
import defences
from attacks.bpda import IdentityGradientPurifier
from attacks.losses import attack_loss
from bench.benchmarks.toys import NoisyDefence, TinyCNN, toy_task
from bench.zoo import SmallCNN
from defences.base import Task
from defences.carso import aggregate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = Task(dataset="digits", channels=1, height=32, width=32, num_classes=10, mean=(0.3,), std=(0.4,),
            norm="Linf", eps=0.15)
TINY = {"fcrepr": 32, "fjoint": 8, "decoder_channels": [16, 16, 8, 8, 4], "samples": 4, "check_examples": 16}


def tiny_carso(**params) -> defences.Defence:
    torch.manual_seed(0)
    classifier = SmallCNN(1, 10, 32, channels=(4, 8), hidden=16, mean=0.3, std=0.4).eval()
    return defences.build("carso", classifier=classifier, task=TASK, **{**TINY, **params}).eval()


@pytest.mark.parametrize("aggregation", ["double_exp", "logit_mean"])
def test_carso_bpda_forward_is_the_seeded_forward(aggregation):
    carso = tiny_carso(aggregation=aggregation, max_batch=3)  # chunks that split the samples
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(7)
        normal = carso(x)
        torch.manual_seed(7)
        bpda = carso.bpda_forward(x)
        torch.manual_seed(7)
        through_attack = IdentityGradientPurifier(carso)(x)
        one_reconstruction = carso.classify(carso.purify(x))
    torch.testing.assert_close(bpda, normal)
    torch.testing.assert_close(through_attack, normal)
    assert not torch.allclose(one_reconstruction.log_softmax(1), normal)  # what BPDA attacked before


def test_carso_bpda_gradient_is_the_classifier_and_aggregation_gradient_with_an_identity_purifier():
    carso = tiny_carso()
    x, y = torch.rand(3, 1, 32, 32), torch.tensor([0, 1, 2])
    n = carso.params.samples
    torch.manual_seed(11)
    leaf = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(attack_loss(carso.bpda_forward(leaf), y, "margin").sum(), leaf)
    # the reference: decode the same samples, differentiate w.r.t. them, add the N sample gradients up
    torch.manual_seed(11)
    with torch.no_grad():
        code = carso.representation_code(x)
        z = torch.randn(n * 3, carso.purifier.latent_size)
        decoded = carso.purifier.reconstruct(code.repeat(n, 1), z).requires_grad_(True)
    out = aggregate(carso.classifier(decoded).view(n, 3, -1), carso.params.aggregation)
    sample_grads, = torch.autograd.grad(attack_loss(out, y, "margin").sum(), decoded)
    torch.testing.assert_close(grad, sample_grads.view(n, *x.shape).sum(0))
    assert grad.abs().sum() > 0


def test_default_bpda_forward_is_classify_of_purify_with_the_identity_gradient():
    torch.manual_seed(0)
    defence = NoisyDefence(TinyCNN(), toy_task(), NoisyDefence.Params(sigma=0.3)).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(3)
    with torch.no_grad():
        normal = defence(x)
    torch.manual_seed(3)
    leaf = x.clone().requires_grad_(True)
    bpda = defence.bpda_forward(leaf)
    torch.testing.assert_close(bpda.detach(), normal)
    grad, = torch.autograd.grad(attack_loss(bpda, y, "ce").sum(), leaf)
    torch.manual_seed(3)
    purified = defence.purify(x).requires_grad_(True)
    expected, = torch.autograd.grad(attack_loss(defence.classify(purified), y, "ce").sum(), purified)
    torch.testing.assert_close(grad, expected)


def test_bpda_eot_runs_on_carso_within_the_threat_model():
    carso = tiny_carso()
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    attack = attacks.build("bpda_eot", eps=0.1, steps=2, eot=2, loss="margin")
    x_adv = attack(carso, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
    # every EOT pass decodes all N samples of every input: one pass = B inputs through the aggregate
    assert attack.counts["backward_examples"] == 2 * 2 * 4
