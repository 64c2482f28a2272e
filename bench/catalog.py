"""`python -m bench.run list`: what the harness has, one line each: grids (with what each is for), scenarios,
defences, attacks and executors. Grid and scenario lines are their files' `description`; defence and attack lines
are the first line of their class's docstring."""

from __future__ import annotations

import sys
from collections.abc import Callable

from attacks.registry import UnknownNameError
from bench.conffiles import ConfigError, available, load_conf


def _first_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no description)"


def _conf_line(kind: str, name: str) -> str:
    try:
        return _first_line(str(load_conf(kind, name).get("description") or ""))
    except (ConfigError, OSError) as error:
        return f"(unreadable: {error})"


def _class_line(resolve: Callable[[str], type], name: str) -> str:
    """The first docstring line of the class, or of its module when the class has none."""
    try:
        cls = resolve(name)
        return _first_line(cls.__doc__ or sys.modules[cls.__module__].__doc__)
    except (UnknownNameError, ImportError, TypeError) as error:
        return f"(cannot load: {error})"


def entries() -> dict[str, list[tuple[str, str]]]:
    """Every kind of thing the harness has, each as (name, one-line description)."""
    import attacks
    import defences
    from bench.executors import REGISTRY as EXECUTORS

    return {
        "grids": [(name, _conf_line("grid", name)) for name in available("grid")],
        "scenarios": [(name, _conf_line("scenario", name)) for name in available("scenario")],
        "defences": [(name, _class_line(defences.REGISTRY.get_class, name)) for name in defences.names()],
        "attacks": [(name, _class_line(attacks.REGISTRY.get_class, name)) for name in attacks.names()],
        "executors": [(name, _class_line(EXECUTORS.resolve, name)) for name in available("executor")],
    }


def render(found: dict[str, list[tuple[str, str]]] | None = None) -> str:
    found = entries() if found is None else found
    width = max((len(name) for items in found.values() for name, _ in items), default=0) + 2
    lines = []
    for kind, items in found.items():
        lines.append(f"{kind}:")
        lines += [f"  {name:<{width}}{line}" for name, line in items]
        lines.append("")
    lines.append("Run a grid with `python -m bench.run grid=NAME`; see its plan with `dry_run=true`.")
    return "\n".join(lines)


def main() -> int:
    print(render())
    return 0
