"""One place for the run-time facts every stage needs: threads, the device, provenance (git, versions).

Seeding lives in attacks/seeding.py (the lowest layer that needs it).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
from pathlib import Path

import torch

TRACKED_PACKAGES = (  # what results can depend on: the declared dependencies and the robustbench extra
    "torch", "numpy", "pyautoattack", "submitit", "scikit-learn", "safetensors", "pandas", "pyyaml", "pillow",
    "robustbench",
)


def configure_threads(threads: int | None) -> None:
    """Set torch's CPU thread count (None or 0: torch's default). On a CPU shared with other jobs, one thread
    per process avoids oversubscription, which can slow small models down by an order of magnitude."""
    if threads:
        torch.set_num_threads(int(threads))


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(f"device={spec!r} is not a device; valid: auto, cpu, cuda, cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} asked for CUDA, but torch sees no GPU here; use device=auto or cpu")
    return device


def git_state() -> tuple[str | None, bool | None]:
    """(commit, whether the working tree has uncommitted changes to tracked files); (None, None) outside git."""
    described = git_commit()
    if described is None:
        return None, None
    return described.removesuffix("-dirty"), described.endswith("-dirty")


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this code runs from (with '-dirty' when it has local changes), if any."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages that can change a result, plus Python's."""
    versions = {"python": ".".join(map(str, os.sys.version_info[:3]))}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def hardware_summary(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
