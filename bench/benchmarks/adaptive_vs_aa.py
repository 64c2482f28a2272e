"""`adaptive` against AutoAttack, on the same model and examples, in one run: robust accuracy and time.

- deterministic: a small CNN adversarially trained here (PGD, on scikit-learn's 8x8 digits, seeded), `aa` against
  `adaptive` at the same budget and seed; also the examples `aa` breaks that `adaptive` does not (0 by design);
- stochastic: Gaussian noise in front of that CNN (a purifier toy: `has_purifier`, a `.classifier`), `randaa`,
  `pgd_eot` and `bpda_eot` (their per-example worst case, the union) against `adaptive`, times summed.
Times are the process's CPU seconds (`time.process_time`), which other jobs on a shared machine disturb far less
than wall time. Stochastic results are judged by `--judge-draws` common draws (the same seeded draws of the noise
for every attack's points, attacks.adaptive_stop.seeded_score); accuracies are single-draw rates averaged.

`--scale` divides every step, query and EOT budget (1 = the attacks' full defaults: 100 APGD steps, 9 targets, FAB
100, Square 5000, EOT 20; PGD+EOT and BPDA+EOT 200 steps, EOT 20), with `--threads` torch threads. The goal is
adaptive <= 1.2x aa's time while at least as strong, and on the stochastic model <= randaa + pgd_eot + bpda_eot.
`--square-eot` sets adaptive's draws per Square query on the stochastic model (its default 4; 1 = plain Square):
`square_queries` counts forward passes, so it changes the steps, not the forward budget.

    python -m bench.benchmarks.adaptive_vs_aa --n 100 --scale 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import attacks
from attacks.adaptive_stop import seeded_score
from bench.benchmarks.toys import NoisyDefence, TinyCNN, digits8, fit_classifier, toy_task


def adversarially_trained(eps: float, epochs: int, steps: int, seed: int = 0) -> torch.nn.Module:
    """TinyCNN trained on PGD-`steps` adversarial examples at `eps` (Madry et al.), Adam, digits train split."""
    torch.manual_seed(seed)
    x, y = digits8("train")
    model = TinyCNN()
    pgd = attacks.build("pgd", eps=eps, steps=steps, step_size=2.5 * eps / steps)
    return fit_classifier(model, x, y, epochs=epochs, lr=0.01, batch_size=64, seed=seed, attack=pgd)


def budgets(scale: int, square_eot: int = 4) -> dict[str, dict[str, object]]:
    """Every attack's settings at 1/`scale` of its full default budget."""
    apgd = {"apgd_steps": max(1, 100 // scale)}
    eot = {"eot": max(1, 20 // scale)}
    pgd_eot = {"steps": max(1, 200 // scale), **eot}
    return {"aa": {**apgd, "fab_steps": max(1, 100 // scale), "square_queries": max(1, 5000 // scale)},
            "randaa": {**apgd, **eot}, "pgd_eot": pgd_eot, "bpda_eot": pgd_eot,
            "adaptive": {**apgd, **eot, "fab_steps": max(1, 100 // scale), "square_queries": max(1, 5000 // scale),
                         "pgd_steps": max(1, 100 // scale), "square_eot": square_eot}}


def timed(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The result and the process's CPU seconds (on a shared machine less noisy than wall time; with one torch
    thread the two agree on an idle machine)."""
    started = time.process_time()
    result = run()
    return result, time.process_time() - started


def attack(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
           settings: dict[str, object]) -> tuple[torch.Tensor, float, attacks.Attack]:
    built = attacks.build(name, eps=eps, **settings)
    torch.manual_seed(seed)
    result, seconds = timed(lambda: built(model, x, y))
    return result, seconds, built


def deterministic_rows(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args) -> None:
    b = budgets(args.scale)
    aa_x, aa_s, _ = attack("aa", model, x, y, args.eps, 1, {**b["aa"], "seed": 7})
    ad_x, ad_s, adaptive = attack("adaptive", model, x, y, args.eps, 1, {**b["adaptive"], "seed": 7})
    with torch.no_grad():
        aa_ok, ad_ok = model(aa_x).argmax(1) == y, model(ad_x).argmax(1) == y
    print(f"deterministic (AT TinyCNN, eps {args.eps}, n = {x.shape[0]}, 1/{args.scale} budget)")
    print(f"  aa        robust {aa_ok.float().mean():.3f}  {aa_s:7.1f} CPU s")
    print(f"  adaptive  robust {ad_ok.float().mean():.3f}  {ad_s:7.1f} CPU s  ({ad_s / aa_s:.2f}x aa's time)")
    print(f"  examples aa breaks and adaptive does not: {int((ad_ok & ~aa_ok).sum())}; "
          f"adaptive breaks and aa does not: {int((aa_ok & ~ad_ok).sum())}")
    print(f"  adaptive rounds: {round_summary(adaptive.last_report)}")


def stochastic_rows(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args) -> None:
    b = budgets(args.scale, args.square_eot)
    defence = NoisyDefence(model, toy_task(), NoisyDefence.Params(sigma=args.sigma)).eval()
    rates, seconds = {}, {}
    for name in ("randaa", "pgd_eot", "bpda_eot", "adaptive"):
        settings = {**b[name], "seed": 7} if name in ("randaa", "adaptive") else b[name]
        points, seconds[name], built = attack(name, defence, x, y, args.eps, 1, settings)
        rates[name] = seeded_score(defence, points, y, args.judge_draws, seed=99)[0]
        if name == "adaptive":
            report = built.last_report
    union = torch.stack([rates[n] for n in ("randaa", "pgd_eot", "bpda_eot")]).amin(0)
    others = sum(seconds[n] for n in ("randaa", "pgd_eot", "bpda_eot"))
    print(f"stochastic (noise sigma {args.sigma} + AT TinyCNN, eps {args.eps}, n = {x.shape[0]}, "
          f"{args.judge_draws} common judge draws, 1/{args.scale} budget, adaptive's square_eot {args.square_eot})")
    for name in ("randaa", "pgd_eot", "bpda_eot"):
        print(f"  {name:<9} robust {rates[name].mean():.3f}  {seconds[name]:7.1f} CPU s")
    print(f"  union of the three  robust {union.mean():.3f}  {others:7.1f} CPU s")
    print(f"  adaptive  robust {rates['adaptive'].mean():.3f}  {seconds['adaptive']:7.1f} s  "
          f"({seconds['adaptive'] / others:.2f}x the three's time)")
    print(f"  examples the union beats adaptive on by > 3 sd of the paired judge: "
          f"{int(((rates['adaptive'] - union) * args.judge_draws > 3 * (args.judge_draws / 2) ** 0.5).sum())}")
    print(f"  adaptive rounds: {round_summary(report)}")


def round_summary(report: dict) -> str:
    parts = []
    for entry in report["path"]:
        members = ", ".join(f"{m} {v['attacked']}->{v['kept']} {v.get('seconds', entry['seconds']):.1f}s"
                            for m, v in entry["members"].items())
        parts.append(f"[{entry['kind']}: {members}; acc {entry['accuracy']:.3f}]")
    return " ".join(parts) + f" stopped: {report['stopped']}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="test examples (the first n of the digits test split)")
    parser.add_argument("--scale", type=int, default=1, help="divide every budget by this (1 = full defaults)")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--sigma", type=float, default=0.1, help="the stochastic model's input noise")
    parser.add_argument("--judge-draws", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10, help="adversarial training epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--square-eot", type=int, default=4, help="adaptive's draws per Square query (stochastic)")
    parser.add_argument("--only", choices=("deterministic", "stochastic"), default=None)
    args = parser.parse_args(argv)
    x, y = digits8("test")
    if not 1 <= args.n <= x.shape[0]:
        parser.error(f"--n must be between 1 and {x.shape[0]} (the digits test split), got {args.n}")
    if min(args.scale, args.judge_draws, args.epochs, args.threads, args.square_eot) < 1 or not args.eps > 0:
        parser.error("--scale, --judge-draws, --epochs, --threads and --square-eot must be >= 1 and --eps > 0")
    torch.set_num_threads(args.threads)
    model = adversarially_trained(args.eps, args.epochs, steps=5)
    x, y = x[:args.n], y[:args.n]
    if args.only != "stochastic":
        deterministic_rows(model, x, y, args)
    if args.only != "deterministic":
        stochastic_rows(model, x, y, args)


if __name__ == "__main__":
    main()
