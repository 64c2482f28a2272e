"""How CARSO turns the classifier's logits on N reconstructions into one prediction (the CARSO paper §4.5).

`aggregate(logits, method)` takes logits of shape (N, B, C) (N reconstructions of B inputs, C classes) and
returns log-probabilities of shape (B, C):

- `double_exp` (the paper's, default): P_i = (1/Z) prod_a exp(exp(l_i^a)), i.e. log P = log_softmax over
  classes of S_i = sum_a exp(l_i^a).
- `logit_mean`: log_softmax of the mean logit over reconstructions.
- `prob_mean`: log of the mean softmax probability over reconstructions.
- `vote`: log of the fraction of reconstructions whose arg max is each class (the earlier preprint's mode);
  ties go to the lowest class index (arg max), classes without votes get the floor below.

S_i overflows float32 as soon as a logit passes ~88, so `double_exp` is computed in log space. With
s_i = logsumexp_a(l_i^a) and m = max_j s_j, the gap S_max - S_i = exp(m + log(-expm1(s_i - m))) is exact
and finite until the gap itself leaves the float range; then log P = -(gap) - logsumexp_j(-(gap_j)).
A gap beyond the representable range (e.g. logits around 1e4) is clamped to a finite floor: the true
log-probability there is about -e^1e4, which no float can hold, and a finite floor keeps losses and
gradients usable (the clamped entries get zero gradient, as their true gradient is that small relative
to the others); see `log_prob_floor`.

Attacking it: `double_exp` log-probabilities are extremely peaked. With logits of a few units the gaps
S_y - S_j are ~1e5, so the cross-entropy -log P_y = log(1 + sum_j exp(S_j - S_y)) and its input gradient
underflow to exactly 0 for confidently classified points, in any float precision. CE-based attacks
(PGD/PGD+EOT on CE, APGD-CE) therefore barely move CARSO's input; margin or DLR losses, which use
differences of the log-probabilities, do not saturate. That is a property of the paper's aggregation, not
of this implementation (measured on the digits scenario).
"""

from __future__ import annotations

import math

import torch

METHODS = ("double_exp", "logit_mean", "prob_mean", "vote")


def log_prob_floor(dtype: torch.dtype) -> float:
    """The most negative log-probability returned: far below any real one, yet summable a million times."""
    return -torch.finfo(dtype).max / 2**20


def aggregate(logits: torch.Tensor, method: str = "double_exp") -> torch.Tensor:
    """Log-probabilities (B, C) from logits (N, B, C) of N reconstructions; see the module docstring."""
    if method not in METHODS:
        raise ValueError(f"aggregation method {method!r} is not valid; valid: {', '.join(METHODS)}")
    if logits.dim() != 3 or logits.shape[0] < 1:
        raise ValueError(f"logits must have shape (N, B, C) with N >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    floor = log_prob_floor(logits.dtype)
    if method == "logit_mean":
        return torch.log_softmax(logits.mean(0), dim=-1)
    if method == "prob_mean":
        return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])
    if method == "vote":
        votes = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype).mean(0)
        return votes.log().clamp_min(floor)
    return _double_exp(logits, floor)


def _double_exp(logits: torch.Tensor, floor: float) -> torch.Tensor:
    # float64 inside: the (N, B, C) tensor is small, and the gaps keep 16 digits instead of 7.
    work = logits.double()
    s = torch.logsumexp(work, dim=0)                      # log S_i, (B, C)
    m = s.max(dim=-1, keepdim=True).values
    diff = s - m                                          # <= 0; == 0 at the largest S
    is_top = diff == 0
    # log(-expm1(0)) is -inf with an infinite derivative: substitute a harmless value where diff == 0 so
    # that backward stays finite, then select 0 for those entries.
    safe_diff = torch.where(is_top, torch.full_like(diff, -1.0), diff)
    log_gap = (m + torch.log(-torch.expm1(safe_diff))).clamp(max=math.log(-floor))
    negative_gap = torch.where(is_top, torch.zeros_like(diff), -torch.exp(log_gap))  # S_i - S_max
    log_probs = negative_gap - torch.logsumexp(negative_gap, dim=-1, keepdim=True)
    return log_probs.clamp_min(floor).to(logits.dtype)
