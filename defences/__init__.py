"""Defences behind one interface, built by name: `defences.build("at", classifier=..., task=..., epochs=10)`."""

from __future__ import annotations

from bench.registry import Registry
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
)


def defence_class(name: str) -> type[Defence]:
    cls = REGISTRY.resolve(name)
    if not (isinstance(cls, type) and issubclass(cls, Defence)):
        raise TypeError(f"{name!r} resolves to {cls!r}, which is not a defences.Defence subclass")
    return cls


def build(name: str, *, classifier, task: Task, base: Defence | None = None, **params) -> Defence:
    """Build defence `name` around `classifier` for `task`; unknown parameters are errors."""
    cls = defence_class(name)
    return cls(classifier=classifier, task=task, params=cls.make_params(params), base=base)


def names() -> list[str]:
    return REGISTRY.names()


__all__ = ["Defence", "FitContext", "Task", "build", "defence_class", "names", "REGISTRY"]
