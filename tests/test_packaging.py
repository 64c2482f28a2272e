"""What a non-editable install gets: the wheel carries every data file the packages read at run time (the conf/
YAML files, the shipped SLURM profiles among them), and the default `local` profile loads from the installed copy.

The wheel is built from a copy of the sources in a temporary folder, so the checkout gets no build/ or egg-info.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ("bench/conf/**/*.yaml", "bench/constraints.txt", "bench/data/*.json", "bench/paper_numbers.yaml")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (the dev extra installs it)")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("attacks", "bench", "defences"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True)
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_carries_every_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(path.relative_to(ROOT)) for pattern in PACKAGE_DATA for path in ROOT.glob(pattern)}
    assert "bench/conf/slurm_profile/local.yaml" in expected and "bench/conf/grid/demo.yaml" in expected
    assert expected <= names, sorted(expected - names)


def test_the_default_slurm_profile_loads_from_the_installed_package(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"  # no slurm/profiles/ here, and not the checkout
    elsewhere.mkdir()
    script = ("import bench, bench.executors.slurm as s; "
              "print(bench.__file__); print(s.ClusterProfile.load(s.SlurmOptions.from_dict().profile).name); "
              "print(s.available_profiles())")
    result = subprocess.run([sys.executable, "-P", "-c", script], cwd=elsewhere, env={"PYTHONPATH": str(site)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    location, name, profiles = result.stdout.splitlines()
    assert Path(location).is_relative_to(site)  # the installed copy, not the checkout
    assert name == "local" and "example_gpu_cluster" in profiles
