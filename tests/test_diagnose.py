"""`attacks.diagnose`: flags a model that hides its gradients (a quantising input layer), raises nothing on a
plain small CNN, and raises each other flag on a model built to trip it; BPDA breaks the quantising model that
plain PGD cannot. Also the `python -m bench.diagnose` cell lookup and output."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import attacks
from attacks.diagnostics import FLAGS, check_loss_masking, eps_grid, gradient_flag
from bench.benchmarks.diagnostic_toys import DoubleExpEnsemble, ScaledLogits, fit_adversarially
from bench.benchmarks.toys import NoisyDefence, QuantisingDefence, TinyCNN, fit_classifier, toy_task
from bench.conffiles import ConfigError
from bench.config import compose
from bench.diagnose import cell_budget, find_cell, main
from bench.grid import expand

N = 60
FAST = {"steps": 10, "square_queries": 300}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def data(digits8_data):
    train_x, train_y, test_x, test_y = digits8_data
    return train_x, train_y, test_x[:N], test_y[:N]


@pytest.fixture(scope="module")
def cnn(data, one_torch_thread):
    return fit_classifier(TinyCNN(), data[0], data[1], epochs=10, seed=0)


@pytest.fixture(scope="module")
def quantised(data, one_torch_thread):
    defence = QuantisingDefence(TinyCNN(), toy_task(), QuantisingDefence.Params(levels=5))
    fit_classifier(defence.classifier, data[0], data[1], epochs=10, seed=0, transform=defence.purify)
    return defence.eval()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_plain_cnn_raises_no_flag(cnn, data):
    _, _, x, y = data
    report = attacks.diagnose(cnn, x, y, eps=0.1, **FAST)
    assert report.raised == [], report.summary()
    assert list(report.flags) == list(FLAGS)
    assert report.curves["eps"]["x"][0] == 0.0 and report.curves["eps"]["x"][-1] == 0.95
    assert report.curves["eps"]["acc"][0] == pytest.approx(accuracy(cnn, x, y))
    assert report.curves["eps"]["acc"][-1] < 0.1
    assert report.curves["steps"]["x"] == [5.0, 10.0, 20.0]
    assert report.curves["eot"] == {"x": [], "acc": []}  # deterministic: no EOT curve
    json.dumps(report.to_json())  # JSON-able as it is


def test_quantising_input_layer_is_flagged(quantised, data):
    _, _, x, y = data
    report = attacks.diagnose(quantised, x, y, eps=0.15, **FAST)
    flags = report.flags
    assert flags["zero_or_nonfinite_gradients"].raised
    assert flags["zero_or_nonfinite_gradients"].evidence["counts"]["zero_margin_gradient"] == N
    assert flags["zero_or_nonfinite_gradients"].evidence["counts"]["zero_gradient_where_flat"] == 0
    assert flags["not_below_chance_at_large_eps"].raised
    assert flags["not_below_chance_at_large_eps"].evidence["accuracy"] == pytest.approx(accuracy(quantised, x, y))
    assert flags["black_box_beats_white_box"].raised
    assert flags["black_box_beats_white_box"].evidence["points_only_black_box_breaks"] > N // 2
    black_box = flags["black_box_beats_white_box"].evidence
    assert black_box["counts"]["white_box_only"] == 0 and black_box["p_value"] < black_box["alpha"] == 0.01


def test_bpda_breaks_the_quantising_model_where_plain_pgd_cannot(quantised, data):
    _, _, x, y = data
    clean = accuracy(quantised, x, y)
    assert clean > 0.85
    pgd = accuracy(quantised, attacks.build("pgd", eps=0.15, steps=20)(quantised, x, y), y)
    pgd_eot = accuracy(quantised, attacks.build("pgd_eot", eps=0.15, steps=20, eot=1)(quantised, x, y), y)
    bpda = accuracy(quantised, attacks.build("bpda_eot", eps=0.15, steps=20, eot=1)(quantised, x, y), y)
    assert pgd >= clean - 0.1 and pgd_eot == clean  # zero gradients: no random start, no movement
    assert bpda < 0.25


class ClaimsDeterministic(NoisyDefence):
    stochastic = False


class NoisePerBatch(NoisyDefence):
    """Draws one noise image per forward pass and adds it to every example: batched EOT copies are identical."""

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.params.sigma * torch.randn(1, *x.shape[1:], device=x.device)


def test_randomness_in_a_model_that_claims_determinism_is_flagged(cnn, data):
    _, _, x, y = data
    liar = ClaimsDeterministic(cnn, toy_task(), NoisyDefence.Params(sigma=0.3)).eval()
    report = attacks.diagnose(liar, x, y, eps=0.1, **FAST)
    assert not report.stochastic
    assert report.flags["unstable_deterministic_predictions"].raised
    assert report.flags["unstable_deterministic_predictions"].evidence["changed_predictions"] > 0
    assert report.flags["unstable_deterministic_predictions"].evidence["counts"]["changed_logits"] == N


def test_randomness_shared_across_a_batch_is_flagged_and_per_example_noise_is_not(cnn, data):
    _, _, x, y = data
    shared = NoisePerBatch(cnn, toy_task(), NoisyDefence.Params(sigma=0.3)).eval()
    per_example = NoisyDefence(cnn, toy_task(), NoisyDefence.Params(sigma=0.3)).eval()
    budget = {"steps": 4, "eot": 2, "draws": 2, "square_queries": 50, "eps_points": 2}
    shared_report = attacks.diagnose(shared, x[:20], y[:20], eps=0.1, **budget)
    assert shared_report.flags["identical_copies_in_batch"].raised
    per_example_report = attacks.diagnose(per_example, x[:20], y[:20], eps=0.1, **budget)
    assert not per_example_report.flags["identical_copies_in_batch"].raised
    assert per_example_report.curves["eot"]["x"] == [1.0, 2.0, 4.0]
    assert shared_report.flags["identical_copies_in_batch"].evidence["counts"] == {
        "identical_in_batch_only": 20, "identical_across_passes_only": 0}


class BandModel(nn.Module):
    """Three classes, true class 0, a function of the mean pixel s. Cross-entropy rises with s everywhere, but
    only a band of s (about 0.37-0.43) is misclassified: PGD walks through the band and out of it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).mean(1)
        total = (0.5 + 3 * (s - 0.2)).clamp(0.05, 1.9)        # e^l1 + e^l2, increasing in s
        share = 1 - 0.5 * torch.sigmoid(50 * (s - 0.45))        # of it on class 1
        return torch.stack([torch.zeros_like(s), torch.log(share * total), torch.log((1 - share) * total)], 1)


def test_silent_success_is_flagged_only_with_enough_points():
    model = BandModel()
    x, y = torch.full((10, 1, 5, 5), 0.3), torch.zeros(10, dtype=torch.long)
    report = attacks.diagnose(model, x, y, eps=0.3, steps=20, square_queries=20, eps_points=2)
    flag = report.flags["silent_success"]
    assert flag.raised and flag.evidence["points"] == 10 and flag.evidence["p_value"] == 0.5**10
    assert flag.evidence["final_accuracy"] == 1.0 and flag.evidence["accuracy_if_best_iterate_kept"] == 0.0
    # four such points are no evidence: 4 < min_count, and 0.5^4 is not below alpha
    few = attacks.diagnose(model, x[:4], y[:4], eps=0.3, steps=20, square_queries=20, eps_points=2)
    assert few.flags["silent_success"].evidence["points"] == 4 and not few.flags["silent_success"].raised


def test_bad_budgets_are_clear_errors(cnn, data):
    _, _, x, y = data
    with pytest.raises(TypeError, match="unexpected keyword"):
        attacks.diagnose(cnn, x, y, eps=0.1, stepz=3)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        attacks.diagnose(cnn, x, y, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="norm='L0' is not supported; valid: Linf, L2, L1"):
        attacks.diagnose(cnn, x, y, eps=0.1, norm="L0")
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 0"):
        attacks.diagnose(cnn, x, y, eps=0.1, alpha=0)
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        attacks.diagnose(cnn, x, y, eps=0.1, min_count=0)
    with pytest.raises(ValueError, match=r"square_queries \(3\) counts forward passes per example and must be >= the "
                       r"draws per query \(4\)"):
        attacks.diagnose(cnn, x, y, eps=0.1, square_queries=3, square_eot=4)


def test_eps_grid_spans_zero_eps_and_the_maximum():
    eps = 8 / 255
    grid = eps_grid(eps, 0.95, 6)
    assert grid[0] == 0.0 and grid[-1] == 0.95 and eps in grid and len(grid) == 8
    geometric = [v for v in grid if v not in (0.0, eps)]  # eps/2 ... 0.95, a constant ratio
    ratios = [b / a for a, b in zip(geometric, geometric[1:], strict=False)]
    assert geometric[0] == pytest.approx(eps / 2, abs=1e-6)
    assert all(math.isclose(r, ratios[0], rel_tol=1e-4) for r in ratios)


# --- python -m bench.diagnose ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    config = compose(["grid=demo", f"results_dir={root / 'results'}", f"artifacts_dir={root / 'artifacts'}"])
    return expand(config)


def test_find_cell_by_label_and_by_key(demo_plan):
    cell = find_cell(demo_plan, "digits/at/pgd", None)
    assert (cell.scenario, cell.defence_key, cell.attack_key) == ("digits", "at", "pgd")
    assert find_cell(demo_plan, cell.key[:10], None) is cell
    with pytest.raises(ConfigError, match="no cell"):
        find_cell(demo_plan, "digits/at/nothing", None)
    with pytest.raises(ConfigError, match="neither a cell key"):
        find_cell(demo_plan, "digits-at", None)


def test_cell_budget_follows_the_cells_attack(demo_plan):
    pgd = find_cell(demo_plan, "digits/at/pgd", None)
    assert cell_budget(pgd, False, 1, {}) == {"draws": 1, "seed": pgd.seed, "steps": pgd.attack_params["steps"],
                                              "loss": "ce"}
    assert cell_budget(pgd, False, 1, {}, loss="margin")["loss"] == "margin"
    assert cell_budget(pgd, False, 1, {"loss": "dlr"}, loss="margin")["loss"] == "dlr"
    aa = find_cell(demo_plan, "digits/at/aa", None)
    assert cell_budget(aa, False, 1, {"steps": 7})["steps"] == 7
    assert cell_budget(aa, False, 1, {})["steps"] == aa.attack_params["apgd_steps"]


def test_cli_without_a_fitted_stage_says_what_to_do(tmp_path, capsys):
    code = main(["grid=demo", "cell=digits/standard/pgd", f"results_dir={tmp_path}", f"artifacts_dir={tmp_path}"])
    assert code == 2
    assert "train_missing=true" in capsys.readouterr().err


def test_cli_rejects_an_unknown_loss_before_any_work(tmp_path, capsys):
    code = main(["grid=demo", "cell=digits/standard/pgd", "loss=hinge", f"results_dir={tmp_path}",
                 f"artifacts_dir={tmp_path}"])
    assert code == 2
    assert "loss='hinge' is not valid; valid: ce, margin, dlr" in capsys.readouterr().err


@pytest.mark.parametrize(("setting", "message"), [("alpha=1.5", "alpha must be in (0, 1), got 1.5"),
                                                   ("min_count=0", "min_count must be >= 1, got 0")])
def test_cli_rejects_a_bad_threshold_before_any_work(tmp_path, capsys, setting, message):
    code = main(["grid=demo", "cell=digits/standard/pgd", setting, f"results_dir={tmp_path}",
                 f"artifacts_dir={tmp_path}"])
    assert code == 2
    assert f"invalid diagnostics budget: {message}" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_writes_the_diagnostics_file(tmp_path):
    code = main(["grid=demo", "cell=digits/standard/pgd", "n=30", "steps=4", "square_queries=50",
                 "train_missing=true", "defences.standard.epochs=1", f"results_dir={tmp_path / 'results'}",
                 f"artifacts_dir={tmp_path / 'artifacts'}"])
    assert code == 0
    document = json.loads((tmp_path / "results/demo/diagnostics/digits.standard.pgd.s0.json").read_text())
    for key in ("scenario", "defence", "attack", "seed", "n", "eps", "norm", "flags", "curves"):
        assert key in document
    assert (document["scenario"], document["defence"], document["attack"], document["n"]) == \
        ("digits", "standard", "pgd", 30)
    assert set(document["flags"]) == set(FLAGS)
    assert all(set(flag) == {"raised", "evidence"} for flag in document["flags"].values())
    assert set(document["curves"]) == {"eps", "steps", "eot"}
    assert document["curves"]["steps"]["x"] == [2.0, 4.0, 8.0]



def test_pgd_eot_keep_best_keeps_the_adversarial_iterate_the_final_one_misses():
    model, x, y = BandModel(), torch.full((4, 1, 5, 5), 0.3), torch.zeros(4, dtype=torch.long)
    settings = {"eps": 0.3, "steps": 20, "step_size": 0.0375, "eot": 1}
    final = attacks.build("pgd_eot", **settings)(model, x, y)
    kept = attacks.build("pgd_eot", keep_best=True, **settings)(model, x, y)
    assert accuracy(model, final, y) == 1.0 and accuracy(model, kept, y) == 0.0


# --- loss masking: CE against the margin family ---------------------------------------------------------------

MASKING = {"steps": 10}


def adversarially_trained(data, seed: int) -> nn.Module:
    """TinyCNN trained on PGD-3 examples (eps 0.1, the eps attacked below): an AT CNN in a few seconds."""
    torch.manual_seed(seed)
    return fit_adversarially(TinyCNN(), data[0], data[1], eps=0.1, steps=3, epochs=8, seed=seed)


@pytest.mark.parametrize("wrap", [DoubleExpEnsemble, ScaledLogits])
def test_saturated_aggregations_are_flagged_for_ce_masking(cnn, data, wrap):
    _, _, x, y = data
    model = wrap(cnn).eval()
    flag = check_loss_masking(model, x, y, eps=0.1, draws=4, eot=2, **MASKING)
    assert flag.raised, flag.evidence
    evidence = flag.evidence
    assert evidence["masked_loss"] == "ce" and evidence["n"] == N
    assert evidence["ce_accuracy"] > 0.8 and evidence["margin_accuracy"] < evidence["ce_accuracy"] - 0.3
    assert evidence["ce_interval"][0] > evidence["margin_interval"][1] and evidence["intervals_disjoint"]
    assert evidence["counts"]["only_margin_breaks"] >= 8 and evidence["p_value"] < evidence["alpha"]
    gradients = gradient_flag(model, x, y, 0.1, eot=2)
    assert gradients.raised and gradients.evidence["counts"]["zero_ce_gradient"] > N // 2
    assert gradients.evidence["counts"]["zero_margin_gradient"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plain_and_noisy_cnns_are_not_flagged_for_loss_masking(data, seed):
    train_x, train_y, x, y = data
    plain = fit_classifier(TinyCNN(), train_x, train_y, epochs=10, seed=seed)
    noisy = NoisyDefence(plain, toy_task(), NoisyDefence.Params(sigma=0.1)).eval()
    for model in (plain, noisy):
        torch.manual_seed(seed)
        flag = check_loss_masking(model, x, y, eps=0.1, draws=4, eot=2, **MASKING)
        assert not flag.raised, flag.evidence
        assert not gradient_flag(model, x, y, 0.1, eot=2).raised


def test_an_adversarially_trained_cnn_is_not_flagged_for_loss_masking(data):
    _, _, x, y = data
    model = adversarially_trained(data, seed=0)
    flag = check_loss_masking(model, x, y, eps=0.1, **MASKING)
    assert not flag.raised, flag.evidence
    assert flag.evidence["margin_accuracy"] > 0.2  # it is robust: the check compares two non-trivial numbers
    assert not gradient_flag(model, x, y, 0.1).raised


@pytest.fixture(scope="module")
def small_carso(one_torch_thread):
    """A real CARSO (defences/carso, double-exp aggregation) on 32x32 digits: a SmallCNN trained for 3 epochs and
    the decoder fitted to reconstruct the images from their representation codes (60 Adam steps instead of the
    full CVAE training: enough for CARSO to classify like its classifier)."""
    import defences
    from bench.data import load_dataset
    from bench.zoo import SmallCNN
    from defences.base import Task

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    train_x, train_y = train.float_images(), train.labels
    torch.manual_seed(0)
    classifier = fit_classifier(SmallCNN(1, 10, 32, channels=(4, 8), hidden=16, mean=0.3, std=0.4), train_x,
                                train_y, epochs=3, seed=0).requires_grad_(False)
    task = Task(dataset="digits", channels=1, height=32, width=32, num_classes=10, mean=(0.3,), std=(0.4,),
                norm="Linf", eps=0.15)
    carso = defences.build("carso", classifier=classifier, task=task, fcrepr=32, fjoint=8,
                           decoder_channels=[16, 16, 8, 8, 4], samples=4)
    optimiser = torch.optim.Adam(carso.purifier.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = train_x[torch.randint(0, len(train_x), (64,), generator=generator)]
        z = torch.randn(64, carso.purifier.latent_size)
        logits = carso.purifier.decode_logits(z, carso.representation_code(batch))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return carso.eval(), test.float_images(slice(0, 24)), test.labels[:24]


def test_carso_is_flagged_for_ce_masking(small_carso):
    carso, x, y = small_carso
    report = attacks.diagnose(carso, x, y, eps=0.15, steps=5, eot=1, draws=2, square_queries=10, eps_points=1)
    masking = report.flags["loss_masking_ce_vs_margin"]
    assert masking.raised and masking.evidence["masked_loss"] == "ce", masking.evidence
    assert masking.evidence["ce_accuracy"] > 0.75 and masking.evidence["margin_accuracy"] < 0.3
    assert report.flags["zero_or_nonfinite_gradients"].evidence["counts"]["zero_ce_gradient"] > len(y) // 2
    assert report.flags["not_below_chance_at_large_eps"].raised  # CE, the cell's loss here, never gets there
    # the cell's loss drives the curves: on the margin loss CARSO falls below chance, and masking is still seen
    margin = attacks.diagnose(carso, x, y, eps=0.15, steps=5, eot=1, draws=2, square_queries=10, eps_points=1,
                              loss="margin")
    assert not margin.flags["not_below_chance_at_large_eps"].raised
    assert margin.flags["loss_masking_ce_vs_margin"].raised


def test_carso_with_a_mean_of_logits_is_not_flagged(small_carso):
    carso, x, y = small_carso
    carso.params.aggregation = "logit_mean"
    try:
        flag = check_loss_masking(carso, x, y, eps=0.15, steps=5, eot=1, draws=2)
    finally:
        carso.params.aggregation = "double_exp"
    assert not flag.raised, flag.evidence


# --- the "still falling" checks, raised (the plain CNN above shows them not raised) -----------------------------

class PeakModel(nn.Module):
    """Two classes, true class 0, a function of the mean pixel s: class 1 wins only within `width` of s = centre,
    where the margin peaks. Sign steps oscillate around the peak; only steps finer than the width land in it."""

    def __init__(self, centre: float, width: float):
        super().__init__()
        self.centre, self.width = centre, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).mean(1)
        score = 1 - ((s - self.centre) / self.width) ** 2
        return torch.stack([torch.zeros_like(score), score], 1)


def test_an_attack_that_needs_more_steps_is_flagged():
    # 10 steps of 0.05 end alternating 0.04 and 0.01 from the peak, the last one 0.04 away (outside the band);
    # 20 steps of 0.025 end inside it
    x, y = torch.full((10, 1, 4, 4), 0.3), torch.zeros(10, dtype=torch.long)
    report = attacks.diagnose(PeakModel(0.44, 0.012), x, y, eps=0.2, steps=10, square_queries=5, eps_points=1,
                              loss="margin")
    flag = report.flags["still_falling_with_steps"]
    assert flag.raised and flag.evidence["accuracy"] == 1.0 and flag.evidence["accuracy_doubled"] == 0.0
    assert flag.evidence["counts"] == {"newly_broken": 10, "newly_robust": 0}


class NoisyGradient(nn.Module):
    """Deterministic predictions (class-1 logit w.x + b), stochastic gradients (w + sigma * N(0, I) on every pass):
    the sign of a few-sample gradient is often wrong, so more EOT samples move the point further."""

    stochastic = True

    def __init__(self, weight: torch.Tensor, bias: float, sigma: float):
        super().__init__()
        self.weight, self.bias, self.sigma = weight, bias, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        jitter = (self.sigma * torch.randn_like(flat) * flat).sum(1)
        score = flat @ self.weight + self.bias + jitter - jitter.detach()
        return torch.stack([torch.zeros_like(score), score], 1)


def test_an_attack_that_needs_more_eot_samples_is_flagged():
    eps, x, y = 0.1, torch.full((40, 1, 8, 8), 0.5), torch.zeros(40, dtype=torch.long)
    weight = torch.ones(64)
    # the true class wins by 0.75 of what the whole eps-ball can take away: only a well-estimated gradient gets there
    model = NoisyGradient(weight, float(-(x[0].flatten() @ weight) - 0.75 * eps * 64), sigma=3.0)
    report = attacks.diagnose(model, x, y, eps=eps, steps=10, eot=2, draws=1, square_queries=5, eps_points=1,
                              loss="margin")
    flag = report.flags["still_falling_with_eot"]
    assert flag.raised and flag.evidence["accuracy"] == 1.0 and flag.evidence["accuracy_doubled"] < 0.5
