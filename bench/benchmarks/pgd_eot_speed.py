"""PGD+EOT speed: the harness's `pgd_eot` against torchattacks' EOTPGD and the raw cost of the same passes.

`python -m bench.benchmarks.pgd_eot_speed [--batch 64] [--steps 10] [--eot 20] [--max-batch 64,256,1280]
[--repeats 3] [--threads N] [--device auto]`

The model is fixed: the demo's small CNN (32x32, one channel, seeded random weights) behind Gaussian input
noise (sigma 0.25), i.e. a stochastic defence with per-example randomness. Every method does steps x eot
forward+backward passes over the batch; the raw cost is exactly those passes (model forward, summed
cross-entropy, input gradient) with no attack logic, once as a loop of per-EOT-sample batches (what
torchattacks does) and once in the chunks the harness uses. Each timing is the best of `repeats` runs,
interleaved in a shuffled order, so that a noisy shared machine hurts all methods alike. Targets: harness no slower than
torchattacks and within 1.15x of the raw cost. torchattacks is not a dependency of the harness: its row (and the
"vs torchattacks" column, nan without it) needs `pip install --no-deps torchattacks==3.5.1`.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import attacks
from attacks.eot import default_max_batch, eot_passes
from bench.benchmarks.toys import NoisyDefence, toy_task
from bench.runtime import resolve_device
from bench.zoo.small_cnn import SmallCNN

REFERENCE = "torchattacks EOTPGD (loop)"  # timed only where torchattacks is installed (no extra installs it)


def build_model(device: torch.device) -> NoisyDefence:
    torch.manual_seed(0)
    classifier = SmallCNN(in_channels=1, num_classes=10, image_size=32)
    model = NoisyDefence(classifier, toy_task(side=32), NoisyDefence.Params(sigma=0.25))
    return model.to(device).eval()


def raw_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, eot: int,
               max_batch: int) -> None:
    """steps x eot forward+backward passes in the given chunking, nothing else."""
    ones = [1] * (x.dim() - 1)
    for _ in range(steps):
        for examples, samples in eot_passes(x.shape[0], eot, max_batch):
            leaf = x[examples].detach().requires_grad_(True)
            copies = samples.stop - samples.start
            loss = F.cross_entropy(model(leaf.repeat(copies, *ones)), y[examples].repeat(copies), reduction="sum")
            torch.autograd.grad(loss, leaf)


def best_time(run: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return min(times)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eot", type=int, default=20)
    parser.add_argument("--max-batch", default=None,
                        help="comma-separated max_batch values for the harness (default: batch, the device default, "
                             "all copies at once)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def build_methods(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  eps: float, chunkings: list[int]) -> dict[str, Callable[[], object]]:
    """Every timed method by name: torchattacks (where it is installed), the raw passes, the harness at each
    chunking."""
    methods: dict[str, Callable[[], object]] = {}
    try:
        import torchattacks
    except ImportError:
        print(f"torchattacks is not installed: no {REFERENCE!r} row. `pip install --no-deps torchattacks==3.5.1` "
              "adds it (EOTPGD needs none of its declared deps), best in a venv of its own: its wheel also installs "
              "a stale top-level robustbench/ over the real one")
    else:
        reference = torchattacks.EOTPGD(model, eps=eps, alpha=0.007, steps=args.steps, eot_iter=args.eot,
                                        random_start=False)
        methods[REFERENCE] = lambda: reference(x, y)
    methods[f"raw passes, loop of {args.batch}"] = lambda: raw_passes(model, x, y, args.steps, args.eot, args.batch)
    for chunk in chunkings:
        harness = attacks.build("pgd_eot", eps=eps, steps=args.steps, eot=args.eot, max_batch=chunk)
        methods[f"harness pgd_eot, max_batch {chunk}"] = lambda harness=harness: harness(model, x, y)
        if chunk != args.batch:
            methods[f"raw passes, chunks of {chunk}"] = \
                lambda chunk=chunk: raw_passes(model, x, y, args.steps, args.eot, chunk)
    return methods


def interleaved_timings(methods: dict[str, Callable[[], object]], repeats: int,
                        sync: Callable[[], None]) -> dict[str, float]:
    """The best time of each method over `repeats` rounds, each round in a fresh shuffled order."""
    timings = {name: float("inf") for name in methods}
    order = list(methods)
    shuffler = random.Random(0)
    for _ in range(repeats):  # interleaved rounds in a fresh order: load changes hit every method alike
        shuffler.shuffle(order)
        for name in order:
            timings[name] = min(timings[name], best_time(methods[name], 1, sync))
    return timings


def print_timings(timings: dict[str, float], batch: int, chunkings: list[int]) -> None:
    raw_loop = timings[f"raw passes, loop of {batch}"]
    reference = timings.get(REFERENCE, float("nan"))
    width = max(map(len, timings))
    print(f"{'method':<{width}}  seconds  vs raw loop  vs torchattacks")
    for name, seconds in timings.items():
        print(f"{name:<{width}}  {seconds:7.3f}  {seconds / raw_loop:10.2f}x  {seconds / reference:13.2f}x")
    for chunk in chunkings:
        harness = timings[f"harness pgd_eot, max_batch {chunk}"]
        same_chunks = timings[f"raw passes, chunks of {chunk}" if chunk != batch else
                              f"raw passes, loop of {batch}"]
        print(f"max_batch {chunk}: harness / raw (same chunks) = {harness / same_chunks:.3f}, "
              f"harness / raw loop = {harness / raw_loop:.3f}, harness / torchattacks = {harness / reference:.3f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = build_model(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 1, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    eps = 8 / 255
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    chunkings = ([int(v) for v in args.max_batch.split(",")] if args.max_batch else
                 sorted({args.batch, default_max_batch(device, args.batch), args.batch * args.eot}))
    passes = args.steps * args.eot
    print(f"PGD+EOT speed on {device} ({torch.get_num_threads()} torch threads): batch {args.batch}, "
          f"{args.steps} steps x EOT {args.eot} = {passes} forward+backward passes per example, "
          f"small CNN 1x32x32 behind Gaussian noise; best of {args.repeats}")
    timings = interleaved_timings(build_methods(args, model, x, y, eps, chunkings), args.repeats, sync)
    print_timings(timings, args.batch, chunkings)


if __name__ == "__main__":
    main()
