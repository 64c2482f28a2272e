"""Attacks built by name with their budget: `attacks.build("pgd", eps=8/255, steps=20)(model, x, y)`.

Also the evaluation protocol for stochastic defences (`evaluate_correctness`: K independent draws) and the
gradient-masking diagnostics (`diagnose`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from attacks.base import Attack, ThreatModelViolation, attack_surface, check_threat_model, project
from attacks.protocol import evaluate_correctness, summarise_draws, worst_case_over_attacks
from attacks.registry import Registry, coerce_params

if TYPE_CHECKING:
    from attacks.diagnostics import DiagnosticReport

REGISTRY = Registry(
    "attack",
    {
        "fgsm": "attacks.gradient:FGSM",
        "pgd": "attacks.gradient:PGD",
        "cw": "attacks.gradient:CW",
        "aa": "attacks.autoattack:AutoAttackStandard",
        "randaa": "attacks.autoattack:AutoAttackRand",
        "apgd_ce": "attacks.autoattack:APGDCE",
        "apgd_dlr": "attacks.autoattack:APGDDLR",
        "apgd_t": "attacks.autoattack:APGDT",
        "fab_t": "attacks.autoattack:FABT",
        "square": "attacks.autoattack:Square",
        "pgd_eot": "attacks.eot:EOTPGD",
        "bpda_eot": "attacks.bpda:BPDAEOT",
        "adaptive": "attacks.adaptive:Adaptive",
        "fmn": "attacks.min_norm:FMN",
    },
    entry_point_group="bench.attacks",
    base=Attack,
)


def build(name: str, **params) -> Attack:
    """Build attack `name` with `params` (eps, norm, steps, ...); unknown settings are errors."""
    cls = REGISTRY.get_class(name)
    attack = coerce_params(cls, params, owner=f"attack {name!r}")
    attack.registry_name = name
    return attack


def names() -> list[str]:
    return REGISTRY.names()


def diagnose(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
             **budget: Any) -> DiagnosticReport:
    """Gradient-masking diagnostics for `model` on (x, y) at `eps`; see attacks.diagnostics.diagnose."""
    from attacks.diagnostics import diagnose as run_diagnostics

    return run_diagnostics(model, x, y, eps, norm, **budget)


__all__ = [
    "Attack", "REGISTRY", "ThreatModelViolation", "attack_surface", "build",
    "check_threat_model", "diagnose", "evaluate_correctness", "names", "project", "summarise_draws",
    "worst_case_over_attacks",
]
