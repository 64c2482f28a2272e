"""The GPU benchmark at tiny sizes on the CPU, and SLURM GPU-hours from a calibration file."""

from __future__ import annotations

import json

import pytest

from bench.benchmarks import gpu
from bench.conffiles import ConfigError
from bench.config import compose
from bench.executors.calibration import estimate_eval_hours, load_calibration
from bench.grid import expand

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_defences():
    return gpu.build_defences(gpu.SIZES["tiny"], gpu.resolve_device("cpu"))


def test_attack_cost_attacks_every_point_and_scales_to_the_full_budget(tiny_defences):
    size, device = gpu.SIZES["tiny"], gpu.resolve_device("cpu")
    cost = gpu.attack_cost(tiny_defences["at"], "pgd_eot", size, device, gpu.Clock(device))
    steps, eot = cost["settings"]["steps"], cost["settings"]["eot"]
    assert steps == 200 // size.scale and eot == 20
    assert cost["backward_examples"] == size.attack_batch * steps * eot  # no point skipped
    assert cost["per_image_s_full_budget"] == pytest.approx(cost["per_image_s_measured"] * size.scale)
    assert cost["peak_gb"] is None  # CPU


def test_a_seeded_cell_batch_gives_the_same_record_twice(tiny_defences):
    result = gpu.seeded_cell_repeats(tiny_defences["carso"], gpu.SIZES["tiny"], gpu.resolve_device("cpu"))
    assert result["identical"] is True


def test_the_time_budget_skips_measurements_and_says_which(tmp_path):
    result = gpu.run_benchmark("tiny", "cpu", budget_s=-1.0)
    assert result["measurements"] == {}
    assert "wrn_forward_backward" in result["skipped"] and "seeded_cell_carso" in result["skipped"]
    assert "carso/randaa" in result["skipped"] and "atop/pgd_eot" in result["skipped"]


def test_dry_run_gpu_hours_come_from_the_calibration(tiny_grid, tmp_path):
    config = compose(tiny_grid(lambda g: g["attacks"].update({"pgd_eot": {"name": "pgd_eot", "steps": 100,
                                                                          "eot": 10}})))
    config.grid["blocks"][0]["attacks"] = ["fgsm", "pgd", "pgd_eot"]
    plan = expand(config)
    # one full PGD+EOT (200 steps x 20 EOT) on the classifier costs 4000 s per image: 1 s per pass
    calibration = {"per_image_seconds": {"at/pgd_eot": 4000.0}}
    hours, uncovered = estimate_eval_hours(plan, [c.key for c in plan.cells], calibration)
    n = plan.cells[0].n_examples  # 24 per cell, 2 defences: fgsm 1 pass, pgd 3 passes, pgd_eot half the steps
    expected_seconds = 2 * n * (1 + 3 + 4000.0 * 0.5 * 0.5)
    assert uncovered == [] and hours == pytest.approx(expected_seconds / 3600)
    assert estimate_eval_hours(plan, [c.key for c in plan.cells], {"per_image_seconds": {}})[1]


def test_a_bad_calibration_file_is_a_config_error(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"something": 1}))
    with pytest.raises(ConfigError, match="per_image_seconds"):
        load_calibration(path)
    with pytest.raises(ConfigError, match="bench.benchmarks.gpu"):
        load_calibration(tmp_path / "absent.json")
