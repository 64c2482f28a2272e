"""Lookahead (Zhang et al. 2019) around any torch optimiser: slow weights pulled towards the fast ones.

Every `steps` inner steps: slow <- slow + alpha * (fast - slow), then fast <- slow. CARSO uses it around
RAdam with steps = 6, alpha = 0.8 (the CARSO paper Table 14). The learning rate lives in the inner optimiser's
param groups (`param_groups` is exposed for schedulers); `state_dict` holds the inner state, the slow
weights and the step counter, so training resumes exactly. At the end of training `use_slow_weights`
keeps the slow (averaged) weights, as the authors' public CARSO code does before saving.
"""

from __future__ import annotations

from typing import Any

import torch


class Lookahead:
    def __init__(self, inner: torch.optim.Optimizer, steps: int = 6, alpha: float = 0.8):
        if steps < 1:
            raise ValueError(f"lookahead steps must be >= 1, got {steps}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"lookahead alpha must be in (0, 1], got {alpha}")
        self.inner, self.steps, self.alpha = inner, steps, alpha
        self.counter = 0
        self.slow = [[p.detach().clone() for p in group["params"]] for group in inner.param_groups]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.inner.step()
        self.counter += 1
        if self.counter % self.steps:
            return
        for group, slow_params in zip(self.inner.param_groups, self.slow, strict=True):
            for fast, slow in zip(group["params"], slow_params, strict=True):
                slow.add_(fast - slow, alpha=self.alpha)
                fast.copy_(slow)

    @torch.no_grad()
    def use_slow_weights(self) -> None:
        """Copy the slow weights into the parameters (what a finished run keeps)."""
        for group, slow_params in zip(self.inner.param_groups, self.slow, strict=True):
            for fast, slow in zip(group["params"], slow_params, strict=True):
                fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "counter": self.counter,
                "slow": [[s.clone() for s in group] for group in self.slow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.counter = int(state["counter"])
        for mine, saved in zip(self.slow, state["slow"], strict=True):
            for slow, value in zip(mine, saved, strict=True):
                slow.copy_(value)
