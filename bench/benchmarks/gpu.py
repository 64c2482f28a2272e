"""GPU readiness and calibration: what the paper grids cost per image, measured on this machine's accelerator.

`python -m bench.benchmarks.gpu [--size paper|tiny] [--out gpu_calibration.json] [--budget-s 480] [--device auto]`

On synthetic CIFAR-10-shaped data (random weights: costs do not depend on what the weights learned), it
measures, and writes as JSON:
- WRN-28-10 (SiLU, the paper grids' classifier) forward+backward throughput, images/s;
- per-image cost of AutoAttack (`aa`), `randaa`, `pgd_eot` (and `adaptive` where registered) on AT (the
  classifier alone), CARSO (N = 8, the paper's purifier) and AToP (GAN purifier, RT3). Each attack runs at
  1/`scale` of its step-like budgets (steps, APGD/FAB steps, Square queries; EOT as is) on labels equal to
  the defence's own predictions, so every point is attacked; the full-budget cost is that measurement x
  `scale` (linear in the steps; an upper bound for AutoAttack, which stops attacking broken points);
- batched vs looped EOT: PGD+EOT on CARSO with all EOT copies in one batch vs one batch per copy;
- peak GPU memory of each measurement (null on CPU);
- a seeded cell batch computed twice (bench.evaluate's own per-batch code: clean and robust draws, counts,
  perturbation sizes) gives the same record.
It stops starting new measurements after `--budget-s` seconds (default 480: 8 minutes) and says which it
skipped. `--size tiny` runs the same code at toy sizes (a WRN-10-1, a small purifier) in seconds on a CPU.

The JSON is a calibration file for the SLURM dry run: `python -m bench.run grid=paper_tables executor=slurm
slurm.calibration=gpu_calibration.json dry_run=true` estimates GPU-hours from these costs
(bench/executors/slurm.py, `estimate_gpu_hours`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

import attacks
import defences
from attacks.seeding import seed_everything
from bench.runtime import hardware_summary, resolve_device
from bench.smoke import budget_settings
from bench.zoo import WideResNet
from defences.base import Defence, Task

CIFAR10 = Task("cifar10", 3, 32, 32, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), "Linf", 8 / 255)


@dataclass
class Size:
    depth: int
    width: int
    throughput_batch: int
    attack_batch: int
    scale: int
    carso: dict[str, Any] = field(default_factory=dict)
    atop: dict[str, Any] = field(default_factory=dict)


SIZES = {
    "paper": Size(28, 10, throughput_batch=128, attack_batch=32, scale=10, carso={"samples": 8},
                  atop={"transform": "rt3", "purifier": "gan"}),
    "tiny": Size(10, 1, throughput_batch=4, attack_batch=2, scale=50,
                 carso={"samples": 2, "decoder_channels": [8, 8, 8, 8, 4], "fcrepr": 16, "fjoint": 8},
                 atop={"transform": "rt3", "purifier": "gan", "generator_width": 4, "generator_stages": 1,
                       "generator_layout": "compact", "discriminator_width": 4}),
}
ATTACKS = ("aa", "randaa", "pgd_eot", "adaptive")


class Clock:
    """Wall time with device synchronisation, and the peak memory since the last `start`."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> float:
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return time.perf_counter()

    def stop(self, started: float) -> tuple[float, float | None]:
        self.sync()
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        return time.perf_counter() - started, peak


def build_defences(size: Size, device: torch.device) -> dict[str, Defence]:
    torch.manual_seed(0)
    classifier = WideResNet(size.depth, size.width, CIFAR10.num_classes, activation="silu", mean=CIFAR10.mean,
                            std=CIFAR10.std).to(device).eval()
    built = {"at": defences.build("at", classifier=classifier, task=CIFAR10),
             "carso": defences.build("carso", classifier=classifier, task=CIFAR10, **size.carso),
             "atop": defences.build("atop", classifier=classifier, task=CIFAR10, **size.atop)}
    return {name: defence.to(device).eval() for name, defence in built.items()}


def scaled_attack(name: str, scale: int, **extra: Any) -> attacks.Attack:
    """Attack `name` at 1/scale of its step-like budgets (at least 1 each): the budget settings its class declares
    (`attacks.base.Budget` in its `smoke_budget`), EOT apart."""
    cls = attacks.REGISTRY.get_class(name)
    defaults = {f.name: f.default for f in fields(cls)}
    steps = [k for k in budget_settings("attack", cls) if k != "eot"]
    budget = {k: max(1, int(defaults[k]) // scale) for k in steps if isinstance(defaults.get(k), int)}
    if isinstance(defaults.get("target_classes"), int):
        budget["target_classes"] = min(int(defaults["target_classes"]), CIFAR10.num_classes - 1)
    return attacks.build(name, eps=CIFAR10.eps, norm="Linf", **{**budget, **extra})


def throughput(size: Size, device: torch.device, clock: Clock, repeats: int = 3) -> dict[str, Any]:
    model = build_defences(size, device)["at"].classifier
    x = torch.rand(size.throughput_batch, 3, 32, 32, device=device, requires_grad=True)
    y = torch.randint(0, 10, (size.throughput_batch,), device=device)
    torch.nn.functional.cross_entropy(model(x), y).backward()  # warm-up (cudnn autotuning, allocations)
    started = clock.start()
    for _ in range(repeats):
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), x)
    seconds, peak = clock.stop(started)
    return {"images_per_s": repeats * size.throughput_batch / seconds, "batch": size.throughput_batch,
            "peak_gb": peak}


def attack_cost(defence: Defence, attack_name: str, size: Size, device: torch.device, clock: Clock,
                **extra: Any) -> dict[str, Any]:
    torch.manual_seed(1)
    x = torch.rand(size.attack_batch, 3, 32, 32, device=device)
    with torch.no_grad():
        y = defence(x).argmax(1)  # every point starts correct, so every point is attacked
    attack = scaled_attack(attack_name, size.scale, **extra)
    started = clock.start()
    attack(defence, x, y)
    seconds, peak = clock.stop(started)
    per_image = seconds / size.attack_batch
    return {"seconds": seconds, "per_image_s_measured": per_image, "scale": size.scale,
            "per_image_s_full_budget": per_image * size.scale, "settings": attack.settings(),
            "forward_examples": attack.counts["forward_examples"],
            "backward_examples": attack.counts["backward_examples"], "peak_gb": peak}


def eot_batching(defence: Defence, size: Size, device: torch.device, clock: Clock) -> dict[str, Any]:
    eot = attacks.REGISTRY.get_class("pgd_eot").eot
    batched = attack_cost(defence, "pgd_eot", size, device, clock, max_batch=size.attack_batch * eot)
    looped = attack_cost(defence, "pgd_eot", size, device, clock, max_batch=size.attack_batch)
    return {"eot": eot, "batched_s": batched["seconds"], "looped_s": looped["seconds"],
            "looped_over_batched": looped["seconds"] / batched["seconds"], "batched_peak_gb": batched["peak_gb"],
            "looped_peak_gb": looped["peak_gb"]}


def seeded_cell_repeats(defence: Defence, size: Size, device: torch.device) -> dict[str, Any]:
    """The same cell batch (bench.evaluate's per-batch code) twice under one seed: equal records?"""
    from bench.evaluate import _batch_result

    x = torch.rand(size.attack_batch, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        seed_everything(3)
        y = defence(x).argmax(1)
    runs = [_batch_result(defence, scaled_attack("pgd_eot", size.scale * 4), x, y, draws=4, seed=12345)
            for _ in range(2)]
    for run in runs:
        run.pop("attack_seconds")
    points = [run.pop("points") for run in runs]
    identical = runs[0] == runs[1] and torch.equal(points[0], points[1])
    return {"identical": identical, "defence": type(defence).__name__, "draws": 4}


def run_benchmark(size_name: str, device_name: str = "auto", budget_s: float = 480.0) -> dict[str, Any]:
    size, device = SIZES[size_name], resolve_device(device_name)
    clock, started = Clock(device), time.monotonic()
    result: dict[str, Any] = {"size": size_name, "device": hardware_summary(device), "scale": size.scale,
                              "attack_batch": size.attack_batch, "per_image_seconds": {}, "skipped": [],
                              "measurements": {}}
    steps: list[tuple[str, Callable[[], Any]]] = [("wrn_forward_backward", lambda: throughput(size, device, clock))]
    built = build_defences(size, device)
    registered = set(attacks.names())
    for defence_name, defence in built.items():
        for attack_name in ATTACKS:
            if attack_name in registered:
                steps.append((f"{defence_name}/{attack_name}",
                              lambda d=defence, a=attack_name: attack_cost(d, a, size, device, clock)))
    steps.append(("eot_batching_carso", lambda: eot_batching(built["carso"], size, device, clock)))
    steps.append(("seeded_cell_carso", lambda: seeded_cell_repeats(built["carso"], size, device)))
    for label, measure in steps:
        if time.monotonic() - started > budget_s:
            result["skipped"].append(label)
            continue
        value = measure()
        result["measurements"][label] = value
        if "per_image_s_full_budget" in value:
            result["per_image_seconds"][label] = value["per_image_s_full_budget"]
        print(f"{label}: {json.dumps(_brief(value))}", flush=True)
    result["seconds"] = time.monotonic() - started
    if device.type == "cuda":
        result["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _brief(value: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in value.items() if k != "settings"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument("--out", default="gpu_calibration.json")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    result = run_benchmark(args.size, args.device, args.budget_s)
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"wrote {args.out} ({result['seconds']:.0f} s; skipped: {result['skipped'] or 'nothing'})")
    return 0 if result["measurements"].get("seeded_cell_carso", {}).get("identical", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
