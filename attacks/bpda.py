"""BPDA+EOT: PGD+EOT through a purifier whose gradient is replaced by the identity (Athalye et al. 2018).

The forward pass is the defence's own, with fresh randomness on every pass; in the backward pass the purifier
is skipped: the gradient w.r.t. the purified image is used as the gradient w.r.t. x. A defence says how with
`bpda_forward(x)` (defences/base.py: `classify(purify(x))` with the identity for purify, by default; CARSO
classifies and aggregates all of its decoded samples exactly as its forward does). EOT over the defence's
randomness is batched exactly as in `pgd_eot` (attacks/eot.py), whose defaults (200 steps, 0.007, EOT 20,
no random start) BPDA+EOT keeps.

For a module without `bpda_forward`, `purify` may return images shaped like x, or k purified copies per
input stacked copy-major ((k*B, ...) as `x.repeat(k, ...)`, or (k, B, ...)), which `classify` then
aggregates; the identity gradient of every copy flows back to its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import straight_through
from attacks.eot import EOTPGD


class IdentityGradientPurifier(nn.Module):
    """A defence seen through BPDA: its forward pass unchanged, its purifier's gradient the identity."""

    def __init__(self, defence: nn.Module):
        super().__init__()
        missing = [name for name in ("purify", "classify") if not callable(getattr(defence, name, None))]
        if missing:
            raise ValueError(f"bpda_eot needs a defence with purify() and classify(); {type(defence).__name__} "
                             f"lacks {', '.join(missing)}")
        self.defence = defence

    @property
    def stochastic(self) -> bool:
        return bool(getattr(self.defence, "stochastic", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hook = getattr(self.defence, "bpda_forward", None)
        if callable(hook):
            return hook(x)
        with torch.no_grad():
            purified = self.defence.purify(x)
        return self.defence.classify(straight_through(x, purified))


@dataclass
class BPDAEOT(EOTPGD):
    """BPDA+EOT: `pgd_eot` on the defence with its purifier's gradient replaced by the identity.

    It always attacks the whole defence (it needs purify and classify), so `target` must be 'end_to_end'.
    On a defence without a purifier (purify is the identity) it is exactly `pgd_eot`.
    """

    through_bpda = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target != "end_to_end":
            raise ValueError(f"bpda_eot attacks the whole defence (purify + classify); target={self.target!r} is "
                             "not valid, use target='end_to_end' (or pgd_eot with target='classifier')")

    def surface(self, model: nn.Module) -> nn.Module:
        return IdentityGradientPurifier(model)
