"""CARSO's faster inference path gives the plain composition of its modules' result, to float rounding.

The reference (`bench.benchmarks.speed.unoptimised_forward`) decodes every reconstruction with the modules as
declared (Linear on concat(z, code), transposed convolutions in their own layout) in chunks of `max_batch`; the
fast path computes the code's share of the first layer once per input, runs the stride-1 transposed convolution
as a plain one, uses channels-last on the CPU and chunks by the batch (at least 64 rows on a CPU). Same seed, same
z: same logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_carso import tiny_carso

from bench.benchmarks.speed import unoptimised_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("aggregation", ["double_exp", "logit_mean"])
@pytest.mark.parametrize("max_batch", [512, 3])
def test_fast_forward_equals_the_plain_modules(aggregation, max_batch):
    carso = tiny_carso(aggregation=aggregation, max_batch=max_batch).eval()
    for module in carso.purifier.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.rand(7, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(3)
        fast = carso(x)
        torch.manual_seed(3)
        plain = unoptimised_forward(carso, x)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert not torch.equal(fast[0], fast[1])  # a real output, not a constant


def test_fast_gradient_equals_the_plain_modules():
    carso = tiny_carso(aggregation="logit_mean").eval()
    x = torch.rand(5, 1, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 4])
    grads = []
    for forward in (carso, lambda v: unoptimised_forward(carso, v)):
        leaf = x.clone().requires_grad_(True)
        torch.manual_seed(3)
        grads.append(torch.autograd.grad(F.nll_loss(forward(leaf), labels), leaf)[0])
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-6)
