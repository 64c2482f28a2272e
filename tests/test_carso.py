"""CARSO (defences/carso): aggregation, purifier, hooks, balanced batches, training, persistence, grids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import defences
from bench.data import load_dataset
from bench.zoo import PreActResNet18, SmallCNN, WideResNet
from defences.base import FitContext, Task
from defences.carso import Carso, aggregate
from defences.carso.aggregation import log_prob_floor
from defences.carso.lookahead import Lookahead
from defences.carso.purifier import Purifier
from defences.carso.representation import capture, default_layers
from defences.carso.training import balanced_batch, balanced_counts, batch_slices, kl_beta, learning_rate

# the CARSO paper Table 5, in the paper's order
TABLE5_LAYERS = [
    *(f"layer.0.block.{b}.conv_{c}" for b in range(4) for c in (0, 1)),
    "layer.1.block.0.conv_0", "layer.1.block.0.conv_1", "layer.1.block.0.shortcut",
    *(f"layer.1.block.{b}.conv_{c}" for b in range(1, 4) for c in (0, 1)),
    "layer.2.block.0.conv_0", "layer.2.block.0.conv_1", "layer.2.block.0.shortcut",
    *(f"layer.2.block.{b}.conv_{c}" for b in range(1, 4) for c in (0, 1)),
]
DIGITS_TASK = Task(dataset="digits", channels=1, height=32, width=32, num_classes=10, mean=(0.3,), std=(0.4,),
                   norm="Linf", eps=0.15)
# A purifier small enough for unit tests: the same code, scaled widths.
TINY = {"fcrepr": 32, "fjoint": 8, "decoder_channels": [16, 16, 8, 8, 4], "samples": 4, "check_examples": 16}


def tiny_carso(seed: int = 0, **params) -> Carso:
    torch.manual_seed(seed)
    classifier = SmallCNN(1, 10, 32, channels=(4, 8), hidden=16, mean=0.3, std=0.4).eval()
    return defences.build("carso", classifier=classifier, task=DIGITS_TASK, **{**TINY, **params})


# --- aggregation ----------------------------------------------------------------------------------------

def reference(logits: torch.Tensor, method: str) -> torch.Tensor:
    """The formulas written out directly in float64 (valid while exp(logit) fits in a double)."""
    work = logits.double()
    if method == "double_exp":
        return torch.log_softmax(work.exp().sum(0), dim=-1)
    if method == "logit_mean":
        return torch.log_softmax(work.mean(0), dim=-1)
    if method == "prob_mean":  # log of the mean probability; log space so that tiny probabilities stay exact
        return torch.logsumexp(torch.log_softmax(work, dim=-1), dim=0) - math.log(work.shape[0])
    votes = F.one_hot(work.argmax(-1), work.shape[-1]).double().mean(0)
    return votes.log()


@pytest.mark.parametrize("method", ["double_exp", "logit_mean", "prob_mean", "vote"])
def test_aggregation_matches_its_formula_on_random_logits(method):
    logits = torch.randn(8, 16, 10, generator=torch.Generator().manual_seed(1)) * 4
    out = aggregate(logits, method)
    assert out.shape == (16, 10) and out.dtype == logits.dtype
    expected = reference(logits, method).clamp_min(log_prob_floor(torch.float32)).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(16), atol=1e-5)


def test_double_exp_closed_form():
    # one reconstruction, S = (e^0, e^log2) = (1, 2): log P = (1, 2) - log(e + e^2)
    out = aggregate(torch.tensor([[[0.0, math.log(2.0)]]]), "double_exp")
    norm = math.log(math.e + math.e**2)
    torch.testing.assert_close(out, torch.tensor([[1.0 - norm, 2.0 - norm]]))
    # two reconstructions add inside the exponent: S = (e^1 + e^1, e^0 + e^2)
    two = torch.tensor([[[1.0, 0.0]], [[1.0, 2.0]]])
    s = torch.tensor([2 * math.e, 1 + math.e**2], dtype=torch.float64)
    torch.testing.assert_close(aggregate(two, "double_exp"), torch.log_softmax(s, 0).float().view(1, 2))


def test_double_exp_is_exact_where_float32_exp_overflows():
    # logits up to 300: exp(l) overflows float32 (and the naive formula gives nan), float64 still holds it
    logits = torch.rand(8, 32, 5, generator=torch.Generator().manual_seed(2)) * 300
    naive = torch.log_softmax(logits.exp().sum(0), dim=-1)
    assert not torch.isfinite(naive).all()
    out = aggregate(logits, "double_exp")
    expected = reference(logits, "double_exp").clamp_min(log_prob_floor(torch.float32)).float()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["double_exp", "logit_mean", "prob_mean", "vote"])
def test_aggregation_is_finite_for_logits_of_magnitude_1e4(method):
    logits = (torch.rand(8, 64, 10, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 1e4
    logits.requires_grad_(True)
    out = aggregate(logits, method)
    assert torch.isfinite(out).all()
    if method == "double_exp":  # the winner has the largest S_i, i.e. the largest logsumexp over samples
        assert torch.equal(out.argmax(-1), torch.logsumexp(logits.detach().double(), 0).argmax(-1))
    else:
        expected = reference(logits.detach(), method).clamp_min(log_prob_floor(torch.float32)).float()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-3)
    if method != "vote":  # the vote has no gradient
        grad, = torch.autograd.grad(out[:, 0].sum(), logits)
        assert torch.isfinite(grad).all()


def test_double_exp_at_1e4_picks_the_class_with_the_largest_sum_and_is_exact():
    # class 1 leads by one logit unit at 1e4 on every reconstruction: P_1 = 1 to double precision, the
    # others are exp(-(e^1e4)) and sit at the floor; a row of equal logits is exactly uniform.
    lead = torch.full((8, 1, 4), 1e4 - 1.0)
    lead[:, 0, 1] = 1e4
    tie = torch.full((8, 1, 4), -1e4)
    out = aggregate(torch.cat([lead, tie], dim=1))
    floor = log_prob_floor(torch.float32)
    assert out[0, 1].item() == 0.0
    assert torch.equal(out[0, [0, 2, 3]], torch.full((3,), floor))
    torch.testing.assert_close(out[1], torch.full((4,), -math.log(4)))


def test_aggregation_rejects_bad_input():
    with pytest.raises(ValueError, match="valid: double_exp, logit_mean, prob_mean, vote"):
        aggregate(torch.zeros(2, 3, 4), "median")
    with pytest.raises(ValueError, match=r"shape \(N, B, C\)"):
        aggregate(torch.zeros(3, 4))


# --- representation capture ---------------------------------------------------------------------------

def test_default_layers_follow_the_papers():
    assert default_layers(WideResNet(depth=28, width=1)) == TABLE5_LAYERS  # same names as WRN-28-10
    assert default_layers(SmallCNN(1, 10, 32)) == ["features.0", "features.3", "classifier.1", "classifier.3"]
    assert default_layers(PreActResNet18()) == [
        "layer1.1.conv2", "layer2.0.conv2", "layer2.0.shortcut.0", "layer3.0.conv2", "layer3.0.shortcut.0",
        "layer3.1.conv2", "layer4.0.conv2", "layer4.0.shortcut.0", "layer4.1.conv2", "linear"]


def test_capture_keeps_the_graph_and_removes_its_hooks():
    model = SmallCNN(1, 10, 32, channels=(4, 8), hidden=16).eval()
    x = torch.rand(3, 1, 32, 32, requires_grad=True)
    tensors, logits = capture(model, x, ["features.3", "classifier.3"])
    assert [tuple(t.shape) for t in tensors] == [(3, 8, 16, 16), (3, 10)]
    assert torch.equal(tensors[1], logits)
    grad, = torch.autograd.grad(tensors[0].sum(), x)
    assert grad.abs().sum() > 0
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no layer"):
        capture(model, x, ["features.9"])
    assert all(not m._forward_hooks for m in model.modules())


# --- purifier architecture ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32), (3, 64, 64)])
def test_purifier_shapes(shape):
    channels, side, _ = shape
    large = side == 64
    representation = [(160, side, side), (320, side // 2, side // 2), (16, 4, 4), (10,)]
    depth = 4 if large else 3
    purifier = Purifier(shape, [0.5] * channels, [0.25] * channels, representation, fcrepr=24, fjoint=8,
                        depth=depth, decoder_channels=[256, 256, 128, 64, 32])
    batch = 3
    tensors = [torch.rand(batch, *s) for s in representation]
    logits, mu, logvar = purifier.train()(torch.rand(batch, *shape), tensors)
    assert logits.shape == (batch, *shape) and mu.shape == logvar.shape == (batch, 8)
    purifier.eval()
    code = purifier.encode_representation(tensors)
    images = purifier.reconstruct(code)
    assert code.shape == (batch, 24) and images.shape == (batch, *shape)
    assert images.min() >= 0 and images.max() <= 1
    # Tables 10/11: Linear to 256x3x3 = 2304 features for 32x32 outputs, 256x4x4 = 4096 for 64x64
    assert purifier.decoder.project[0].out_features == (4096 if large else 2304)
    # Tables 6/7: ceil(c/2), ceil(c/4), ceil(c/8) (, ceil(c/16)) channels, 3x3 convs without padding
    convs = [m for m in purifier.layer_encoders[0] if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [80, 40, 20, 10][:depth]
    # a 4x4 map fits one unpadded 3x3 conv, a flat output is used as it is
    assert sum(isinstance(m, nn.Conv2d) for m in purifier.layer_encoders[2].modules()) == 1
    assert sum(isinstance(m, nn.Conv2d) for m in purifier.layer_encoders[3].modules()) == 0


def test_purifier_refuses_28x28_with_a_hint():
    with pytest.raises(ValueError, match="pad_to_32"):
        Purifier((1, 28, 28), [0.1], [0.3], [(4, 28, 28)], fcrepr=8, fjoint=4, depth=3,
                 decoder_channels=[256, 256, 128, 64, 32])


# --- the defence ----------------------------------------------------------------------------------------

def test_defence_gradient_wrt_input_is_finite_and_non_zero():
    carso = tiny_carso().eval()
    x = torch.rand(4, 1, 32, 32, requires_grad=True)
    loss = F.nll_loss(carso(x), torch.tensor([0, 1, 2, 3]))
    grad, = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_forward_is_stochastic_unless_seeded_and_independent_of_chunking():
    carso = tiny_carso().eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(7)
        first = carso(x)
        second = carso(x)
        torch.manual_seed(7)
        again = carso(x)
        carso.params.max_batch = 3
        torch.manual_seed(7)
        chunked = carso(x)
    assert first.shape == (5, 10)
    assert not torch.equal(first, second)
    assert torch.equal(first, again)
    torch.testing.assert_close(chunked, first)
    purified = carso.purify(x)
    assert purified.shape == x.shape and purified.min() >= 0 and purified.max() <= 1


def test_the_classifier_stays_frozen_in_eval_mode():
    carso = tiny_carso().train()
    assert carso.purifier.training and not carso.classifier.training


# --- training ---------------------------------------------------------------------------------------------

def test_balanced_counts_split_the_fraction_evenly():
    assert balanced_counts(5120, 0.5) == [640, 640, 640, 640]       # Table 14, CIFAR-10
    assert balanced_counts(2560, 0.15) == [96, 96, 96, 96]          # CIFAR-100
    assert balanced_counts(1024, 0.01) == [3, 3, 2, 2]              # TinyImageNet: 10 examples
    assert balanced_counts(64, 0.0) == [0, 0, 0, 0]
    assert balanced_counts(10, 1.0) == [3, 3, 2, 2]


@pytest.mark.parametrize("micro_batch", [None, 4])
def test_balanced_batch_composition_and_budgets_are_exact(micro_batch):
    # A two-class linear classifier: the cross-entropy gradient has the constant sign of +-(w_1 - w_0), so
    # FGSM and 40-step PGD both end on the corner x + eps_k * sign, exactly, from an interior image.
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
    x = torch.full((20, 3, 8, 8), 0.5)
    y = torch.arange(20) % 2
    counts = balanced_counts(20, 0.5)
    params = Carso.make_params({"pgd_steps": 40, "pgd_step_size": 0.01, "micro_batch": micro_batch})
    eps = 0.1
    inputs, kinds = balanced_batch(classifier, x, y, counts, eps, params, "Linf")
    assert counts == [3, 3, 2, 2]
    assert [int((kinds == k).sum()) for k in range(5)] == [10, 3, 3, 2, 2]
    direction = (classifier[1].weight[1] - classifier[1].weight[0]).sign().view(3, 8, 8).detach()
    for row in range(20):
        kind = int(kinds[row])
        scale = {0: 0.0, 1: 0.5, 2: 0.5, 3: 1.0, 4: 1.0}[kind]
        sign = 1.0 if y[row] == 0 else -1.0
        torch.testing.assert_close(inputs[row] - x[row], scale * eps * sign * direction, atol=1e-6, rtol=0)


def test_batches_never_leave_a_single_example_for_batchnorm():
    assert batch_slices(64, 32) == [slice(0, 32), slice(32, 64)]
    assert batch_slices(65, 32) == [slice(0, 32), slice(32, 65)]
    assert batch_slices(66, 32) == [slice(0, 32), slice(32, 64), slice(64, 66)]
    assert batch_slices(1, 32) == [slice(0, 1)]


def test_learning_rate_and_kl_schedules_follow_table_14():
    params = Carso.make_params({})  # Table 14, scenario (a)
    assert learning_rate(params, 0) == pytest.approx(5e-9)
    assert learning_rate(params, 25) == pytest.approx(0.064)
    assert learning_rate(params, 49) == pytest.approx(0.064)
    assert learning_rate(params, 200) == pytest.approx(4.346e-4)
    assert learning_rate(params, 125) == pytest.approx((0.064 + 4.346e-4) / 2)
    assert learning_rate(params, 12) == pytest.approx(5e-9 + (0.064 - 5e-9) * 12 / 25)
    assert [kl_beta(params, e) for e in (0, 25, 34, 199)] == [0.0, 0.0, 1.0, 1.0]
    assert kl_beta(params, 30) == pytest.approx(5 / 9)


def test_lookahead_pulls_the_slow_weights_towards_the_fast_ones():
    weight = nn.Parameter(torch.tensor([1.0]))
    optimiser = Lookahead(torch.optim.SGD([weight], lr=0.1), steps=2, alpha=0.8)
    for _ in range(2):  # on 0.5 w^2 each SGD step multiplies w by 0.9
        optimiser.zero_grad()
        (0.5 * weight**2).sum().backward()
        optimiser.step()
    # slow = 1 + 0.8 * (0.81 - 1) = 0.848, and the fast weights restart from it
    assert weight.item() == pytest.approx(0.848)


def small_training(workdir: Path, epochs: int) -> tuple[Carso, dict]:
    train = load_dataset("digits", "train").subset(range(64))
    carso = tiny_carso(batch_size=32, epochs=epochs, adversarial_fraction=0.5, pgd_steps=2,
                       pgd_step_size=0.05, warmup_epochs=0, plateau_epochs=10, anneal_epochs=0,
                       plateau_lr=3e-3, kl_start_epoch=0, kl_end_epoch=0, check_examples=8)
    ctx = FitContext(device=torch.device("cpu"), seed=0, workdir=workdir)
    return carso, carso.fit(train, ctx)


def test_short_training_on_digits_lowers_the_vae_loss_and_resumes_exactly(tmp_path):
    carso, summary = small_training(tmp_path / "straight", epochs=3)
    losses = [epoch["loss"] for epoch in summary["history"]]
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0]
    # the same run stopped after 2 epochs and resumed for the third ends with the same purifier
    small_training(tmp_path / "resumed", epochs=2)
    resumed, resumed_summary = small_training(tmp_path / "resumed", epochs=3)
    assert resumed_summary["resumed_from_epoch"] == 2
    for key, value in carso.purifier.state_dict().items():
        torch.testing.assert_close(resumed.purifier.state_dict()[key], value, msg=key)


def test_checkpoint_keeps_only_the_inference_parts_and_reloads(tmp_path):
    carso = tiny_carso().eval()
    for module in carso.purifier.modules():  # non-trivial BatchNorm statistics, to see them saved
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            module.running_mean.uniform_(-0.1, 0.1)
    carso.save(tmp_path, {"note": "test"})
    saved = carso.checkpoint_state()
    kept = ("purifier.layer_encoders.", "purifier.repr_encoder.", "purifier.decoder.")
    assert saved and all(k.startswith(kept) for k in saved)
    fresh = tiny_carso(seed=1)  # same classifier weights are not needed to compare purifiers
    fresh.classifier.load_state_dict(carso.classifier.state_dict())
    fresh.load(tmp_path)
    fresh.eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(3)
        expected = carso(x)
        torch.manual_seed(3)
        torch.testing.assert_close(fresh(x), expected)


# --- configuration ------------------------------------------------------------------------------------------

def test_paper_grids_carry_table_14_and_share_their_training_stages(tmp_path):
    from bench.config import compose
    from bench.grid import expand

    def carso_stages(grid: str) -> dict[str, dict]:
        plan = expand(compose([f"grid={grid}", f"artifacts_dir={tmp_path}"]))
        return {s.scenario: {"key": key, **s.params}
                for key, s in plan.stages.items() if s.defence_name == "carso"}

    table2, table3 = carso_stages("carso_table2"), carso_stages("carso_table3")
    assert {s: p["key"] for s, p in table3.items()} == {s: p["key"] for s, p in table2.items()}
    # scenario: (batch, fraction, epochs, warm-up, plateau, anneal, plateau LR, final LR, KL from, KL to)
    expected = {
        "cifar10_cui2023": (5120, 0.5, 200, 25, 25, 150, 0.064, 4.346e-4, 25, 34),
        "cifar100_cui2023": (2560, 0.15, 200, 25, 25, 250, 0.064, 4.346e-4, 25, 34),
        "tinyimagenet_wang2023": (1024, 0.01, 250, 31, 31, 188, 0.0128, 1.378e-4, 32, 43),
    }
    fields = ("batch_size", "adversarial_fraction", "epochs", "warmup_epochs", "plateau_epochs",
              "anneal_epochs", "plateau_lr", "final_lr", "kl_start_epoch", "kl_end_epoch")
    for scenario, values in expected.items():
        assert tuple(table2[scenario][f] for f in fields) == values, scenario
        assert (table2[scenario]["pgd_steps"], table2[scenario]["pgd_step_size"]) == (40, 0.01)
        assert table2[scenario]["initial_lr"] == 5e-9 and table2[scenario]["samples"] == 8
    tiny_imagenet = table2["tinyimagenet_wang2023"]
    sizes = (tiny_imagenet["fcrepr"], tiny_imagenet["fjoint"], tiny_imagenet["repr_encoder_depth"])
    assert sizes == (768, 192, 4)
    eps = {cell.attack_params["eps"] for cell in expand(compose(["grid=carso_table3"])).cells}
    assert eps == {0.95}
