"""Defences behind one interface, built by name: `defences.build("at", classifier=..., task=..., epochs=10)`."""

from __future__ import annotations

from attacks.registry import Registry
from defences.base import Defence, FitContext, Task

REGISTRY = Registry(
    "defence",
    {
        "standard": "defences.standard:StandardTraining",
        "at": "defences.adversarial_training:AdversarialTraining",
        "carso": "defences.carso:Carso",
        "atop": "defences.atop:AToP",
    },
    entry_point_group="bench.defences",
    base=Defence,
)


def build(name: str, *, classifier, task: Task, base: Defence | None = None, **params) -> Defence:
    """Build defence `name` around `classifier` for `task`; unknown parameters are errors."""
    cls = REGISTRY.get_class(name)
    return cls(classifier=classifier, task=task, params=cls.make_params(params), base=base)


def names() -> list[str]:
    return REGISTRY.names()


__all__ = ["Defence", "FitContext", "Task", "build", "names", "REGISTRY"]
