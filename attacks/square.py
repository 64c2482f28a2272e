"""Square with EOT: pyautoattack's Square Attack whose query loss is averaged over `eot` draws of a stochastic
defence, for the `square` component of attacks/autoattack.py (the `square` attack, and `randaa` / `aa` where
their components include it) and `adaptive`'s Square member.

Plain Square judges every proposal from one forward pass: on a stochastic defence it accepts steps whose single
draw was lucky, keeps a best loss that is the minimum of noisy values (so later, truly better proposals are
rejected), and stops attacking a point once one draw misclassified it. Square-EOT evaluates each proposal with
`eot` draws: a step is accepted when the mean margin over the draws (the loss) improves, and no point is ever
"done": every point spends the whole budget lowering its mean margin (a point all of whose `eot` draws were wrong
once is not wrong on later draws; stopping there leaves the noisy linear toy of bench/benchmarks/square_eot.py at
0.24 expected accuracy with eot 8 where the full budget reaches 0.19, and at 0.61 instead of 0.24 with eot 2). With
eot = 1 it is pyautoattack's Square unchanged (which stops at the first misclassified draw).

Budget: `square_queries` counts forward passes per example (queries of the model, as in the black-box setting),
not steps: Square-EOT takes square_queries // eot steps of `eot` passes each (plus the first point's `eot`), so
plain Square and Square-EOT with the same `square_queries` have the same forward budget (plain Square spends
less of it on a stochastic model: it stops at the first misclassified draw). The schedule of the square sizes
follows the passes spent (step t uses plain Square's size at step t * eot), so both shrink the squares over the
same budget.
"""

from __future__ import annotations

import functools

import torch

from attacks.eot import default_max_batch, eot_passes


def square_steps(queries: int, eot: int) -> int:
    """Square's steps for a budget of `queries` forward passes per example at `eot` draws per step."""
    if eot < 1 or queries < eot:
        raise ValueError(f"square_queries ({queries}) counts forward passes per example and must be >= the draws "
                         f"per query ({eot}): Square-EOT takes square_queries // eot steps")
    return queries // eot


def per_draw_margins(predict, x: torch.Tensor, y: torch.Tensor, eot: int, max_batch: int | None) -> torch.Tensor:
    """[eot, B]: logit of the true class minus the largest other logit, for `eot` independent passes of each point
    (copies stacked copy-major into passes of at most `max_batch` examples, as attacks.eot does)."""
    margins = torch.empty(eot, x.shape[0], device=x.device)
    ones = [1] * (x.dim() - 1)
    for examples, samples in eot_passes(x.shape[0], eot, max_batch or default_max_batch(x.device, x.shape[0])):
        copies = samples.stop - samples.start
        logits = predict(x[examples].repeat(copies, *ones))
        labels = y[examples].repeat(copies)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        margins[samples, examples] = (true - others).view(copies, -1)
    return margins


@functools.cache
def eot_square_class() -> type:
    """pyautoattack's SquareAttack judging every query by `eot` draws (built on first use: importing pyautoattack
    takes seconds)."""
    from pyautoattack.square import SquareAttack

    class EOTSquare(SquareAttack):
        def __init__(self, predict, eot: int, max_batch: int | None = None, **kwargs):
            super().__init__(predict, **kwargs)
            if self.loss != "margin" or self.targeted:
                raise ValueError("Square-EOT averages the untargeted margin loss only")
            self.eot = eot
            self.max_batch = max_batch

        def margin_and_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(a constant 1: no point is ever done, SquareAttack stops at margin <= 0; the mean margin: the loss)."""
            margins = per_draw_margins(self.predict, x, y, self.eot, self.max_batch).mean(0)
            return torch.ones_like(margins), margins

        def p_selection(self, it: int) -> float:
            return super().p_selection(it * self.eot)

    return EOTSquare


def square_attack(model, eot: int, max_batch: int | None, **settings):
    """pyautoattack's Square for eot = 1 (bit for bit), Square-EOT otherwise; `settings` are SquareAttack's."""
    if eot == 1:
        from pyautoattack.square import SquareAttack

        return SquareAttack(model, **settings)
    return eot_square_class()(model, eot=eot, max_batch=max_batch, **settings)
