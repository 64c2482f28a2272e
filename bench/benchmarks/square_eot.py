"""Square-EOT against plain Square, at the same forward budget, on noisy toys: robust accuracy, optimum, time.

- the noisy linear toy (bench/benchmarks/toys.py: noisy_linear_toy): two classes, Gaussian input noise; every
  final point's expected single-draw accuracy is exact (a closed form), and so is its minimum over the eps-ball,
  the optimum no attack can go below;
- a TinyCNN trained on the 8x8 digits behind Gaussian noise (NoisyDefence), judged by `--judge-draws` common
  seeded draws (attacks.adaptive_stop.seeded_score: the same draws of the noise for every attack's points).
Every run uses `--queries` forward passes per example (Square-EOT: queries // eot steps of eot draws each); the
time is the process's CPU seconds, the ratio Square-EOT's over plain Square's; the forward passes per example are
counted (the K-draw selection of the final points included).

    python -m bench.benchmarks.square_eot --n 100 --queries 1000 --eot 1 2 4 8
"""

from __future__ import annotations

import argparse
import time

import torch

import attacks
from attacks.adaptive_stop import seeded_score
from bench.benchmarks.toys import (
    NoisyDefence,
    TinyCNN,
    digits8,
    fit_classifier,
    noisy_linear_accuracy,
    noisy_linear_optimum,
    noisy_linear_toy,
    toy_task,
)


def run(defence: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int,
        eot: int) -> tuple[torch.Tensor, float, float]:
    """Square's points, CPU seconds and forward passes per example (seeded: the same proposals for every eot)."""
    attack = attacks.build("square", eps=eps, square_queries=queries, eot=eot, seed=3)
    torch.manual_seed(1)
    started = time.process_time()
    points = attack(defence, x, y)
    return points, time.process_time() - started, attack.counts["forward_examples"] / x.shape[0]


def linear_rows(args) -> None:
    for sigma in args.sigma:
        defence, x, y = noisy_linear_toy(args.n, sigma, seed=0)
        optimum = noisy_linear_optimum(defence, x, y, args.eps).mean().item()
        clean = noisy_linear_accuracy(defence, x, y).mean().item()
        print(f"noisy linear toy (sigma {sigma}, eps {args.eps}, n = {args.n}, {args.queries} queries): clean "
              f"{clean:.3f}, optimum {optimum:.3f} (exact expected single-draw accuracies)")
        plain_seconds = None
        for eot in args.eot:
            points, seconds, passes = run(defence, x, y, args.eps, args.queries, eot)
            plain_seconds = plain_seconds or seconds
            exact = noisy_linear_accuracy(defence, points, y).mean().item()
            judged = seeded_score(defence, points, y, args.judge_draws, seed=99)[0].mean().item()
            print(f"  eot {eot:>2}: exact {exact:.3f} (gap to optimum {exact - optimum:+.3f}), {args.judge_draws} "
                  f"draws {judged:.3f}, {seconds:6.2f} CPU s ({seconds / plain_seconds:.2f}x plain), "
                  f"{passes:7.0f} passes/example")


def cnn_rows(args) -> None:
    torch.manual_seed(0)
    train_x, train_y = digits8("train")
    model = fit_classifier(TinyCNN(), train_x, train_y, epochs=10, seed=0)
    x, y = digits8("test")
    x, y = x[:args.n], y[:args.n]
    for sigma in args.sigma:
        defence = NoisyDefence(model, toy_task(), NoisyDefence.Params(sigma=sigma)).eval()
        clean = seeded_score(defence, x, y, args.judge_draws, seed=99)[0].mean().item()
        print(f"noisy TinyCNN on digits (sigma {sigma}, eps {args.eps}, n = {args.n}, {args.queries} queries): "
              f"clean {clean:.3f} ({args.judge_draws} common draws)")
        plain_seconds = None
        for eot in args.eot:
            points, seconds, passes = run(defence, x, y, args.eps, args.queries, eot)
            plain_seconds = plain_seconds or seconds
            judged = seeded_score(defence, points, y, args.judge_draws, seed=99)[0].mean().item()
            print(f"  eot {eot:>2}: {args.judge_draws} draws {judged:.3f}, {seconds:6.2f} CPU s "
                  f"({seconds / plain_seconds:.2f}x plain), {passes:7.0f} passes/example")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="examples (the CNN: the first n of the digits test split)")
    parser.add_argument("--queries", type=int, default=1000, help="forward passes per example")
    parser.add_argument("--eot", type=int, nargs="+", default=[1, 2, 4, 8], help="draws per query (1 first)")
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--judge-draws", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("linear", "cnn"), default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 360:
        parser.error(f"--n must be between 1 and 360 (the digits test split), got {args.n}")
    if min(args.judge_draws, args.threads, *args.eot) < 1 or args.eot[0] != 1:
        parser.error("--judge-draws, --threads and every --eot must be >= 1, and the first --eot 1 (plain Square)")
    if args.queries < max(args.eot) or not 0 < args.eps <= 0.3 or min(args.sigma) <= 0:
        parser.error("--queries must be >= the largest --eot, --eps in (0, 0.3] (the toy's inputs stay in the box) "
                     "and every --sigma > 0")
    torch.set_num_threads(args.threads)
    if args.only != "cnn":
        linear_rows(args)
    if args.only != "linear":
        cnn_rows(args)


if __name__ == "__main__":
    main()
