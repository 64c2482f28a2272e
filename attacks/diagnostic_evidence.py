"""How a diagnostic flag (attacks/diagnostics.py) decides: the examples that bear its evidence are counted, the
count is tested where chance could explain it, and the flag is raised only when the test is significant at
`alpha` and the count reaches `min_count`. Every flag's evidence carries the same keys: `test` (what was tested,
in words), `p_value` and `alpha` (None for checks of an exact property, which no sampling noise can produce),
`counts`, `min_count` and `significant`; and the flag's own figures beside them.

Also the checks that need no attack run: `gradient_flag` (exactly zero or non-finite input gradients where the
model is not flat) and `stability_flags` (a "deterministic" model whose outputs change, a stochastic one whose
copies in one batch come out identical).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks.eot import eot_gradient
from attacks.exact_tests import sign_test
from attacks.gradient import random_start
from attacks.losses import attack_loss

MAX_LISTED = 20  # example indices listed in a flag's evidence
# Relative change beyond which two outputs differ: a float reduction in another order moves them by ~1e-6.
RELATIVE_CHANGE = 1e-4


@dataclass
class Flag:
    raised: bool
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """The thresholds of every flag: significance level, fewest evidence-bearing examples, smallest fraction."""

    alpha: float
    min_count: int
    min_fraction: float = 0.0


DEFAULT_RULE = Rule(alpha=0.01, min_count=5, min_fraction=0.05)


def indices(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten()[:MAX_LISTED].tolist()


def verdict(rule: Rule, test: str, count: int, counts: dict[str, int], p_value: float | None = None,
            **conditions: bool) -> tuple[bool, dict[str, Any]]:
    """(raised, the standard evidence keys): raised iff p_value < alpha (when tested), count >= min_count and
    every extra condition (an effect size, say) holds; the conditions are recorded under their names."""
    significant = (p_value is None or p_value < rule.alpha) and count >= rule.min_count
    evidence = {"test": test, "p_value": p_value, "alpha": None if p_value is None else rule.alpha,
                "counts": counts, "min_count": rule.min_count, "significant": significant, **conditions}
    return significant and all(conditions.values()), evidence


def discordant(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the discordant pairs of two per-example 0/1 outcomes: (first 1 and second 0, first 0 and second 1)."""
    first, second = first.bool(), second.bool()
    return first & ~second, ~first & second


def paired_flag(rule: Rule, test: str, more: torch.Tensor, fewer: torch.Tensor, more_name: str,
                fewer_name: str, **conditions: bool) -> tuple[bool, dict[str, Any]]:
    """A one-sided exact sign test that the `more` kind of discordant pair outnumbers the `fewer` kind."""
    count, other = int(more.sum()), int(fewer.sum())
    raised, evidence = verdict(rule, test, count, {more_name: count, fewer_name: other}, sign_test(count, other),
                               **conditions)
    return raised, {**evidence, "examples": indices(more)}


class _ZeroGradientPath(nn.Module):
    """A model whose output has no autograd path to its input (a hard vote, say), plus an exact zero that depends on
    the input: its gradients come out as the zeros they are instead of an autograd error."""

    def __init__(self, model: nn.Module, stochastic: bool):
        super().__init__()
        self.model, self.stochastic = model, stochastic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if x.requires_grad and not out.requires_grad:
            out = out + (x * 0).flatten(1).sum(1, keepdim=True).to(out.dtype)
        return out


def with_gradient_path(model: nn.Module, x: torch.Tensor, stochastic: bool) -> tuple[nn.Module, bool, int]:
    """(the model to attack, whether its output has an autograd path to the input, its number of classes) from one
    pass on x[:1]; a model without the path is wrapped in `_ZeroGradientPath`."""
    with torch.enable_grad():
        out = model(x[:1].detach().requires_grad_(True))
    if out.requires_grad:
        return model, True, out.shape[1]
    return _ZeroGradientPath(model, stochastic), False, out.shape[1]


@torch.no_grad()
def _moves_within_ball(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                       probes: int) -> torch.Tensor:
    """Per example: whether the margin loss at some of `probes` random points of the eps-ball differs from its
    value at x (beyond float noise): the model is not flat there, so an exactly zero gradient hides a slope."""
    centre = attack_loss(model(x).float(), y, "margin")
    moved = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(probes):
        probe = attack_loss(model(random_start(x, eps, norm)).float(), y, "margin")
        moved |= ~torch.isfinite(probe) | ((probe - centre).abs() > RELATIVE_CHANGE * (1 + centre.abs()))
    return moved


def gradient_flag(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
                  eot: int = 1, max_batch: int | None = None, rule: Rule = DEFAULT_RULE,
                  probes: int = 4) -> Flag:
    """`zero_or_nonfinite_gradients`: the EOT input gradient of the margin loss or of cross-entropy is exactly zero
    where the model is not flat in the eps-ball (a quantising layer; a softmax or double exponential saturated
    until cross-entropy's gradient underflows), or is not finite. A ReLU network on a region where it is
    constant has a true zero gradient: such points are counted apart and are not evidence. An exact property
    (a differentiable model never shows it), so no p-value: raised at `min_count` points and `min_fraction` of n."""
    margin = eot_gradient(model, x, y, eot, "margin", max_batch).grad.flatten(1)
    cross_entropy = eot_gradient(model, x, y, eot, "ce", max_batch).grad.flatten(1)
    zero_margin, zero_ce = (margin == 0).all(1), (cross_entropy == 0).all(1)
    nonfinite = ~torch.isfinite(margin).all(1) | ~torch.isfinite(cross_entropy).all(1)
    moves = _moves_within_ball(model, x, y, eps, norm, probes)
    masked = ((zero_margin | zero_ce) & moves) | nonfinite
    count, n = int(masked.sum()), x.shape[0]
    norms = margin.norm(dim=1)
    finite_norms = norms[torch.isfinite(norms)]
    counts = {"zero_margin_gradient": int(zero_margin.sum()), "zero_ce_gradient": int(zero_ce.sum()),
              "nonfinite_gradient": int(nonfinite.sum()),
              "zero_gradient_where_flat": int(((zero_margin | zero_ce) & ~moves & ~nonfinite).sum()),
              "evidence": count}
    test = ("points whose margin or CE input gradient is exactly zero while the margin changes at random points "
            f"of the eps-ball ({probes} probes), or is not finite: at least min_count and min_fraction of n")
    raised, evidence = verdict(rule, test, count, counts, None, fraction_reached=count >= rule.min_fraction * n)
    return Flag(raised, {**evidence, "n": n, "fraction": count / max(n, 1), "min_fraction": rule.min_fraction,
                         "median_margin_gradient_l2": finite_norms.median().item() if finite_norms.numel()
                         else float("nan"), "examples": indices(masked)})


@torch.no_grad()
def _unstable_flag(model: nn.Module, x: torch.Tensor, passes: int, rule: Rule) -> Flag:
    """A deterministic model's outputs, pass after pass: evidence is an example whose logits move by more than
    RELATIVE_CHANGE of the logit scale (float reordering moves them ~1e-6). An exact property: no p-value."""
    outputs = torch.stack([model(x).float() for _ in range(passes)])
    predictions = outputs.argmax(-1)
    changed_predictions = (predictions != predictions[0]).any(0)
    scale = outputs.abs().amax().clamp_min(1e-12)
    change = ((outputs - outputs[0]).abs().amax(2).amax(0) / scale).nan_to_num(nan=float("inf"))
    changed = change > RELATIVE_CHANGE
    count = int(changed.sum())
    test = (f"examples whose logits change by more than {RELATIVE_CHANGE:g} of the logit scale across {passes} "
            "passes of the same batch (a deterministic model: none)")
    raised, evidence = verdict(rule, test, count, {"changed_logits": count,
                                                   "changed_predictions": int(changed_predictions.sum())})
    return Flag(raised, {**evidence, "passes": passes, "changed_predictions": int(changed_predictions.sum()),
                         "max_relative_logit_change": change.max().item(), "examples": indices(changed)})


@torch.no_grad()
def _identical_copies_flag(model: nn.Module, x: torch.Tensor, rule: Rule, size: int = 32) -> Flag:
    """A stochastic model run twice on a batch holding each example twice: with randomness per example, two copies
    in one batch are identical exactly as often as the same example in two passes; with randomness per batch,
    copies are identical while passes differ. One-sided sign test on those discordant examples."""
    sample = x[: min(x.shape[0], size)]
    doubled = sample.repeat(2, *([1] * (x.dim() - 1)))
    first, second = model(doubled).float(), model(doubled).float()
    half = sample.shape[0]
    within = (first[:half] == first[half:]).all(1)
    across = (first[:half] == second[:half]).all(1)
    only_within, only_across = discordant(within, across)
    raised, evidence = paired_flag(
        rule, "one-sided exact sign test: copies identical within a batch but not across passes, vs the reverse",
        only_within, only_across, "identical_in_batch_only", "identical_across_passes_only")
    return Flag(raised, {**evidence, "copies_compared": half, "identical": int(within.sum())})


def stability_flags(model: nn.Module, x: torch.Tensor, stochastic: bool, passes: int, rule: Rule) -> dict[str, Flag]:
    """`unstable_deterministic_predictions` and `identical_copies_in_batch` (each where it applies)."""
    if stochastic:
        return {"unstable_deterministic_predictions": Flag(False, {"note": "stochastic model: not applicable"}),
                "identical_copies_in_batch": _identical_copies_flag(model, x, rule)}
    return {"unstable_deterministic_predictions": _unstable_flag(model, x, passes, rule),
            "identical_copies_in_batch": Flag(False, {"note": "deterministic model: not applicable"})}
