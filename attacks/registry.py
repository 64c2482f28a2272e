"""Name -> class registries with lazy imports, user extensions and errors that help.

The generic registry behind `attacks.REGISTRY`, `defences.REGISTRY` and the harness's executors; it lives at
the lowest layer so that the attacks need nothing from the harness. A name resolves, in order, to: a built-in
entry ("pgd"), an entry point of the registry's group (a package that declares
`[project.entry-points."bench.attacks"] myattack = "pkg.mod:MyAttack"`), or a `package.module:ClassName` path
given directly in a grid file. Nothing is ever evaluated as code.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import re
from collections.abc import Iterable

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class UnknownNameError(ValueError):
    """An unknown registry name; the message lists the valid names and the closest one."""


def closest_hint(name: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    match = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {match[0]!r}?" if match else ""
    return f"Valid: {', '.join(valid)}.{hint}"


def import_object(path: str) -> type:
    """Import 'package.module:Name'; errors say which part failed."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UnknownNameError(f"cannot import module {module_name!r} from {path!r}: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        raise UnknownNameError(f"module {module_name!r} has no attribute {attribute!r}") from error


class Registry:
    """A lazily importing registry of classes for one kind of thing (defences, attacks)."""

    def __init__(self, kind: str, builtins: dict[str, str], entry_point_group: str, base: type | None = None):
        self.kind = kind
        self._builtins = dict(builtins)
        self._group = entry_point_group
        self.base = base

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        return {ep.name: ep for ep in importlib.metadata.entry_points(group=self._group)}

    def names(self) -> list[str]:
        return sorted(set(self._builtins) | set(self._entry_points()))

    def register(self, name: str, import_path: str) -> None:
        if not _IMPORT_PATH.match(import_path):
            raise ValueError(f"{import_path!r} is not of the form 'package.module:ClassName'")
        self._builtins[name] = import_path

    def resolve(self, name: str) -> type:
        if name in self._builtins:
            return import_object(self._builtins[name])
        entry_points = self._entry_points()
        if name in entry_points:
            return entry_points[name].load()
        if _IMPORT_PATH.match(name):
            return import_object(name)
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}. {closest_hint(name, self.names())} "
            f"A user {self.kind} can also be given as 'package.module:ClassName'."
        )

    def get_class(self, name: str) -> type:
        """`resolve(name)`, checked to be a subclass of the registry's base class (when it has one)."""
        cls = self.resolve(name)
        if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} {name!r} resolves to {cls!r}, which is not a subclass of "
                            f"{self.base.__module__}.{self.base.__qualname__}")
        return cls


def coerce_params(params_class: type, given: dict, owner: str) -> object:
    """Build a params dataclass from a mapping; unknown keys are errors that list the valid ones."""
    valid = {f.name for f in dataclasses.fields(params_class) if f.init}
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ValueError(f"{owner}: unknown setting(s) {', '.join(map(repr, unknown))}. "
                         f"{closest_hint(unknown[0], valid)}")
    return params_class(**given)
