"""Attacks built by name with their budget: `attacks.build("pgd", eps=8/255, steps=20)(model, x, y)`."""

from __future__ import annotations

from attacks.base import Attack, ThreatModelViolation, attack_surface, check_threat_model, project
from bench.registry import Registry, coerce_params

REGISTRY = Registry(
    "attack",
    {
        "fgsm": "attacks.gradient:FGSM",
        "pgd": "attacks.gradient:PGD",
        "aa": "attacks.autoattack:AutoAttackStandard",
    },
    entry_point_group="bench.attacks",
)


def attack_class(name: str) -> type[Attack]:
    cls = REGISTRY.resolve(name)
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"{name!r} resolves to {cls!r}, which is not an attacks.Attack subclass")
    return cls


def build(name: str, **params) -> Attack:
    """Build attack `name` with `params` (eps, norm, steps, ...); unknown settings are errors."""
    cls = attack_class(name)
    attack = coerce_params(cls, params, owner=f"attack {name!r}")
    attack.registry_name = name
    return attack


def names() -> list[str]:
    return REGISTRY.names()


__all__ = [
    "Attack", "REGISTRY", "ThreatModelViolation", "attack_class", "attack_surface", "build",
    "check_threat_model", "names", "project",
]
