"""`python -m bench.benchmarks.one_pass_selection [key=value ...]`: how much one-pass iterate selection overstated
robustness. Fits the demo_atop grid's stages (or reuses them), then runs PGD / CW on each stochastic defence twice
on the same examples: with the old rule (keep the first iterate that ONE noisy pass misclassified, later restarts
skip it; still the path for deterministic models) and with the K-draw rule (attacks/gradient.py). Both are
judged by K = `draws` fresh passes; prints the single-draw and worst-of-K robust accuracy of each.

Settings: grid (demo_atop), n (360), draws (8), steps (20), artifacts_dir, results_dir, threads (1), device.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

import attacks
from attacks.protocol import evaluate_correctness, summarise_draws
from attacks.seeding import seed_everything
from bench.config import compose, parse_overrides
from bench.grid import expand
from bench.runtime import resolve_device

LOG = logging.getLogger("bench.benchmarks.one_pass_selection")
OWN = {"n": 360, "draws": 8, "steps": 20}


def robust(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor, draws: int) -> tuple[float, float]:
    summary = summarise_draws(evaluate_correctness(model, x_adv, y, draws, chunk_size=120))
    return summary["single"].mean().item(), summary["worst"].mean().item()


def compare(defence: torch.nn.Module, name: str, target: str, x: torch.Tensor, y: torch.Tensor,
            settings: dict[str, int]) -> str:
    attack = attacks.build(name, eps=0.15, steps=settings["steps"], target=target)
    surface = attack.surface(defence)
    seed_everything(0)
    old = torch.cat([attack._perturb_deterministic(surface, x[i:i + 120], y[i:i + 120])
                     for i in range(0, len(y), 120)])
    seed_everything(0)
    new = torch.cat([attack(defence, x[i:i + 120], y[i:i + 120]) for i in range(0, len(y), 120)])
    (old_single, old_worst), (new_single, new_worst) = (robust(defence, p, y, settings["draws"]) for p in (old, new))
    return (f"{name}-{settings['steps']} {target:10s} one-pass keep_best {old_single:.3f} (worst-of-K {old_worst:.3f})"
            f" | K-draw rule {new_single:.3f} (worst-of-K {new_worst:.3f})")


def main(argv: list[str]) -> None:
    from bench.evaluate import evaluation_subset
    from bench.training_stage import load_fitted_defence, run_training_stage

    own = {key: int(value) for key, value in parse_overrides([a for a in argv if a.split("=")[0] in OWN])}
    settings = {**OWN, **own}
    rest = [a for a in argv if a.split("=")[0] not in OWN]
    config = compose(["grid=demo_atop", "threads=1", *rest])
    torch.set_num_threads(int(config.options.get("threads") or 1))
    plan = expand(config)
    device = resolve_device(plan.options.device)
    for key in plan.stages:
        for link in reversed(plan.stage_chain(key)):
            run_training_stage(plan, link)
    for key, stage in plan.stages.items():
        defence = load_fitted_defence(plan, key, device)
        if not getattr(defence, "stochastic", False):
            continue
        _, x, y = evaluation_subset(plan.scenario(stage.scenario), settings["n"], plan.options.data_dir)
        x, y = x.to(device), y.to(device)
        for name, target in (("pgd", "end_to_end"), ("pgd", "classifier"), ("cw", "end_to_end")):
            started = time.time()
            line = compare(defence, name, target, x, y, settings)
            print(f"{stage.defence_key:10s} n={len(y)} K={settings['draws']} {line} ({time.time() - started:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main(sys.argv[1:])
