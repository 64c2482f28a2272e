"""The evaluation protocol: correctness judged from K independent forward passes of a (stochastic) model.

For a deterministic model K = 1 is exact. For a stochastic one each draw is a fresh forward pass with the
defence's own randomness; the protocol reports, per example, the single-draw rate (the expected accuracy of
one random pass), the majority vote over the K draws and the worst case (wrong on any draw).

Draws are separate forward passes, never copies stacked into one batch: a defence that draws its randomness
once per batch (one mask for the whole batch, say) would otherwise give K identical "independent" draws.
Examples are chunked (`chunk_size`) to bound memory.

Robust never exceeds clean: under every rule an example counts as robust only if it is also clean-correct
under the same rule (`robust_given_clean`; the records' headline accuracies use it, `record_accuracies`).
`randomness_audit` says how much the K draws disagree, so a reader knows whether K draws and EOT matter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from attacks.losses import attack_loss
from attacks.stats import wilson_interval

RULES = ("single", "majority", "worst")


def _chunks(n: int, chunk_size: int | None) -> list[slice]:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None for one chunk), got {chunk_size}")
    step = chunk_size or max(n, 1)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


@torch.no_grad()
def predict_draws(model: nn.Module, x: torch.Tensor, draws: int = 1, chunk_size: int | None = None) -> torch.Tensor:
    """LongTensor[draws, B]: the class each of `draws` independent forward passes predicts for each x."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    parts = _chunks(x.shape[0], chunk_size)
    rows = [torch.cat([model(x[part]).argmax(1) for part in parts]) if parts
            else torch.zeros(0, dtype=torch.long, device=x.device) for _ in range(draws)]
    return torch.stack(rows)


def evaluate_correctness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                         chunk_size: int | None = None) -> torch.Tensor:
    """BoolTensor[draws, B]: whether each of `draws` independent forward passes classifies each x correctly."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]} labels")
    return predict_draws(model, x, draws, chunk_size) == y


@torch.no_grad()
def score_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                 chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the fraction of `draws` passes that classify x correctly, and the mean margin loss.

    The margin (best other logit minus the true one, > 0 when wrong) breaks ties between candidate
    adversarial points with the same correct rate: the larger, the closer to flipping on a new draw.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    parts = _chunks(x.shape[0], chunk_size)
    correct = torch.zeros(x.shape[0], device=x.device)
    margin = torch.zeros(x.shape[0], device=x.device)
    for _ in range(draws):
        for part in parts:
            logits = model(x[part])
            correct[part] += (logits.argmax(1) == y[part]).float()
            margin[part] += attack_loss(logits.float(), y[part], "margin")
    return correct / draws, margin / draws


def summarise_draws(correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example single-draw rate, majority-vote and worst-of-K correctness from a [draws, B] matrix.

    Majority is a strict majority (a tie counts as wrong): with K = 2 and one correct draw of two the
    example is not robust.
    """
    if correct.dim() != 2:
        raise ValueError(f"expected a [draws, B] matrix, got shape {tuple(correct.shape)}")
    rate = correct.float().mean(0)
    return {"single": rate, "majority": (rate > 0.5).float(), "worst": correct.bool().all(0).float()}


def robust_given_clean(clean: torch.Tensor, robust: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per example and rule, robust correctness that counts only where the example is also clean-correct.

    `clean` and `robust` are [draws, B] correctness matrices of the same examples. Under each rule of
    `summarise_draws` the result is min(clean_rule, robust_rule): an example wrong on every clean draw is never
    robust, and an example's robust single-draw rate never exceeds its clean rate, whatever fresh draws did.
    """
    if clean.dim() != 2 or robust.dim() != 2 or clean.shape[1] != robust.shape[1]:
        raise ValueError(f"clean and robust must be [draws, B] matrices of the same examples, got shapes "
                         f"{tuple(clean.shape)} and {tuple(robust.shape)}")
    clean_rules, robust_rules = summarise_draws(clean), summarise_draws(robust)
    return {rule: torch.minimum(clean_rules[rule], robust_rules[rule]) for rule in RULES}


def _rule_fields(per_rule: dict[str, torch.Tensor], decision: str, prefix: str) -> dict[str, Any]:
    headline, n = per_rule[decision], per_rule[decision].numel()
    return {**{f"{prefix}_acc_{rule}": values.mean().item() for rule, values in per_rule.items()},
            f"{prefix}_acc": headline.mean().item(), f"{prefix}_ci": list(wilson_interval(headline.sum().item(), n)),
            f"{prefix}_correct": headline.tolist()}


def record_accuracies(clean_draws: torch.Tensor, robust_draws: torch.Tensor, decision: str) -> dict[str, Any]:
    """A record's accuracy fields from its per-example draw matrices ([B, draws], as the record stores them).

    `clean_acc`, `clean_ci` (95% Wilson), `clean_correct` (per example, under `decision`) and `clean_acc_<rule>`
    for every rule; the same `robust_*` fields, judged by `robust_given_clean` (robust <= clean per example
    and rule). The raw, uncombined robust draws stay in the record's `per_example.robust_draws`.
    """
    if decision not in RULES:
        raise ValueError(f"decision={decision!r} is not valid; valid: {', '.join(RULES)}")
    clean, robust = clean_draws.T.bool(), robust_draws.T.bool()
    return {**_rule_fields(summarise_draws(clean), decision, "clean"),
            **_rule_fields(robust_given_clean(clean, robust), decision, "robust")}


def worst_case_over_attacks(per_attack: list[torch.Tensor],
                            clean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-example worst case across several attacks of one (scenario, defence), from their [draws, B] matrices.

    An example counts as robust only if it is robust under every attack: the single-draw rate is the lowest
    rate over the attacks, majority and worst-of-K are ANDed. `clean` (the clean [draws, B] matrix) joins the
    minimum, so an example that is not clean-correct is not robust; without it the first matrix may be the
    clean one. The matrices must cover the same examples in the same order (they may differ in their draws).
    """
    if not per_attack:
        raise ValueError("worst_case_over_attacks needs at least one attack's [draws, B] matrix")
    matrices = [*per_attack, *([clean] if clean is not None else [])]
    sizes = {m.shape[1] for m in matrices}
    if len(sizes) != 1:
        raise ValueError(f"the attacks cover different numbers of examples: {sorted(sizes)}")
    summaries = [summarise_draws(m) for m in matrices]
    return {rule: torch.stack([s[rule] for s in summaries]).amin(0) for rule in RULES}


def _disagreement(predictions: torch.Tensor) -> dict[str, Any]:
    """Pair disagreement and non-unanimity of a [draws, B] prediction matrix (see randomness_audit)."""
    draws, n = predictions.shape
    classes = int(predictions.max().item()) + 1 if predictions.numel() else 1
    counts = torch.zeros(n, classes).scatter_add_(1, predictions.T.cpu(), torch.ones(n, draws))
    pairs = math.comb(draws, 2)
    agreeing = (counts * (counts - 1) / 2).sum(1)
    per_example = 1 - agreeing / pairs
    return {"n": n, "draws": draws, "pair_disagreement": per_example.mean().item() if n else 0.0,
            "non_unanimous": (counts.amax(1) < draws).float().mean().item() if n else 0.0}


@torch.no_grad()
def randomness_audit(model: nn.Module, clean_predictions: torch.Tensor, adversarial_predictions: torch.Tensor,
                     x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, dict[str, Any]] | None:
    """How much a stochastic defence's draws disagree, on clean and on adversarial inputs; None for K < 2.

    Returns {"clean": {...}, "adversarial": {...}}, each with
    - `n`, `draws`: examples and draws (K) it was measured on;
    - `pair_disagreement`: per example, the fraction of the K(K-1)/2 draw pairs whose predicted classes differ,
      averaged over the examples (0: every draw agrees; 1 - 1/C at most, for C classes drawn uniformly);
    - `non_unanimous`: the fraction of examples whose K draws do not all predict the same class;
    - `latent_kl` (only for models with a `latent_kl(x)` method and its weights, such as CARSO): the mean over
      the examples of KL(q(z | x) || p(z)) in nats, the purifier's posterior against the prior it samples from.
    The predictions are the [draws, B] classes of the evaluation's own K draws (`predict_draws`), so the audit
    costs no extra forward pass except the KL's. `merge_audits` combines the audits of several batches.
    """
    if clean_predictions.shape[0] < 2:
        return None
    audit = {"clean": _disagreement(clean_predictions), "adversarial": _disagreement(adversarial_predictions)}
    if callable(getattr(model, "latent_kl", None)) and getattr(model, "has_posterior", True):
        audit["clean"]["latent_kl"] = model.latent_kl(x).mean().item()
        audit["adversarial"]["latent_kl"] = model.latent_kl(x_adv).mean().item()
    return audit


def merge_audits(audits: list[dict[str, dict[str, Any]] | None]) -> dict[str, dict[str, Any]] | None:
    """One audit from several batches' (`randomness_audit`'s shape): every mean weighted by its batch's n."""
    present = [a for a in audits if a is not None]
    if not present:
        return None
    merged: dict[str, dict[str, Any]] = {}
    for side in ("clean", "adversarial"):
        parts = [a[side] for a in present]
        n = sum(p["n"] for p in parts)
        merged[side] = {"n": n, "draws": parts[0]["draws"]}
        for key in sorted({k for p in parts for k in p} - {"n", "draws"}):
            weighted = [(p[key], p["n"]) for p in parts if key in p]
            total = sum(w for _, w in weighted)
            merged[side][key] = sum(v * w for v, w in weighted) / total if total else 0.0
    return merged


def batch_extras(defence: nn.Module, attack: Any, x: torch.Tensor, x_adv: torch.Tensor,
                 clean_predictions: torch.Tensor, adversarial_predictions: torch.Tensor) -> dict[str, Any]:
    """What an evaluated batch adds beyond correctness: the attack's `last_report` (as `attack_report`, from
    attacks that report, such as `adaptive`) and the `randomness_audit` (stochastic defences, K >= 2)."""
    extras: dict[str, Any] = {}
    if (report := getattr(attack, "last_report", None)) is not None:
        extras["attack_report"] = report
    if (audit := randomness_audit(defence, clean_predictions, adversarial_predictions, x, x_adv)) is not None:
        extras["randomness_audit"] = audit
    return extras


def record_extras(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """A record's fields from its batches' `batch_extras`: `attack_report`, the list of the batches' reports in
    batch order (see the attack's `last_report`), and `randomness_audit`, merged over the batches."""
    extras: dict[str, Any] = {}
    if any("attack_report" in b for b in batches):
        extras["attack_report"] = [b.get("attack_report") for b in batches]
    if (audit := merge_audits([b.get("randomness_audit") for b in batches])) is not None:
        extras["randomness_audit"] = audit
    return extras
