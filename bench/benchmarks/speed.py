"""The harness against the reference tools, as time ratios measured in one run (median of `repeats`).

`python -m bench.benchmarks.speed [--n 100] [--square 300] [--rand-steps 20] [--eot 5] [--carso-batch 60]
[--carso-paper-batch 4] [--eot-batch 64] [--repeats 3] [--threads 1] [--device cpu|cuda]`

Rows (every ratio is harness time / reference time, both measured in this run, interleaved per repeat):
- `aa` vs pyautoattack standard on a deterministic model (TinyCNN on 8x8 digits at eps 0.1, where about half the
  points stay robust and every component works), with both robust accuracies (they should be equal);
- `aa` vs pyautoattack standard on a 10-class linear model (64 features) at eps 0.1;
- `randaa` vs pyautoattack rand on a stochastic model (the TinyCNN behind Gaussian noise, sigma 0.3), both with
  `--rand-steps` APGD steps and `--eot` EOT samples, robust accuracy from 8 fresh draws per example;
- CARSO forward (N = 8, the digits demo's purifier widths, 32x32, untrained weights: the cost does not depend on
  them) vs its classifier alone, now and through `unoptimised_forward` (the inference path as it was before the
  speed work: all reconstructions decoded by the plain modules in chunks of `max_batch`), and the same CARSO
  with torch's own max-pooling in its classifier (what the pooling change gains CARSO); its note gives the
  arithmetic ratio (FLOPs of the CARSO forward over the classifier's, torch's FLOP counter): the time ratio's
  floor where every layer runs as efficiently as the classifier's;
- CARSO forward in the CARSO paper's CIFAR-10 configuration (WRN-28-10 with the Table 5 layers, the Table 13
  purifier, N = 8; untrained weights, `--carso-paper-batch` images, 0 to skip) vs its classifier, with its
  arithmetic ratio;
- the small CNN's forward and forward+input gradient with bench.zoo.pooling vs torch's MaxPool2d (same results);
- batched vs looped APGD-EOT: the same APGD (10 steps, EOT 10) with the device's default batching
  (`attacks.apgd.apgd_max_batch`), and with all copies in one pass, vs one copy per pass (the loop), on the digits
  demo's small CNN (32x32) behind Gaussian noise (batch `--eot-batch`) and on the TinyCNN (8x8, batch `--n`);
  with `--device cuda` also on a WideResNet-28-10 at batch 64.
Each row runs harness and reference back to back, in alternating order between repeats; the printed ratio is the
median of the per-repeat ratios with their range, on process CPU time (what the run cost: on a loaded machine
far steadier than wall time, which waits for cores other processes hold) and on wall time. The `noise:` rows
time two identical configurations against each other: their ratio's distance from 1.00 and their range are the
measurement noise of this run, to read every other ratio against.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

import attacks
from attacks.apgd import APGD, apgd_max_batch
from attacks.protocol import evaluate_correctness
from bench.benchmarks.toys import LinearClassifier, NoisyDefence, TinyCNN, digits8, fit_classifier, toy_task
from bench.runtime import resolve_device

EPS = 0.1
DRAWS = 8


@dataclass
class Row:
    name: str
    harness: Callable[[], object]
    reference: Callable[[], object]
    note: Callable[[], str] = lambda: ""


def unoptimised_forward(carso: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CARSO's forward as the plain composition of its modules (the code before the speed work: compressors and
    decoder with their BatchNorm layers, transposed convolutions in their own layout): the reference
    for its result (tests/test_carso_speed.py) and its time (here). Draws z exactly as `Carso.sample_logits`."""
    from defences.carso.aggregation import aggregate
    from defences.carso.representation import capture

    purifier, n, batch = carso.purifier, carso.params.samples, x.shape[0]
    representation, _ = capture(carso.classifier, x, carso.layers)
    flat = [encoder(tensor) for encoder, tensor in zip(purifier.layer_encoders, representation, strict=True)]
    code = purifier.repr_encoder(torch.cat(flat, 1))
    z = torch.randn(n * batch, purifier.latent_size, device=code.device, dtype=code.dtype)
    codes, chunk, logits = code.repeat(n, 1), carso.params.max_batch, []
    for i in range(0, n * batch, chunk):
        decoder = purifier.decoder
        hidden = decoder.project(torch.cat([z[i:i + chunk], codes[i:i + chunk]], 1)).view(-1, *decoder.start_shape)
        logits.append(carso.classifier(torch.sigmoid(decoder.deconv(hidden))))
    return aggregate(torch.cat(logits).view(n, batch, -1), carso.params.aggregation)


def pyautoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, version: str, device: torch.device,
                 steps: int = 100, eot: int = 1, square: int = 5000) -> torch.Tensor:
    """pyautoattack's own driver with its budgets set after construction (checkpoints recomputed for `steps`)."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=EPS, version=version, device=device, seed=0)
    adversary.verbose = False
    for apgd in (adversary.apgd, adversary.apgd_targeted):
        apgd.n_iter = steps
        apgd.n_iter_2, apgd.n_iter_min = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1)
        apgd.size_decr = max(int(0.03 * steps), 1)
    adversary.apgd.eot_iter = eot
    adversary.square.n_queries = square
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return adversary.run_standard_evaluation(x, y, batch_size=500)[0]


def robust(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor, draws: int = 1) -> float:
    with torch.no_grad():
        return evaluate_correctness(model, x_adv, y, draws).float().mean().item()


def aa_row(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args, device) -> Row:
    results: dict[str, float] = {}

    def harness() -> None:
        torch.manual_seed(0)
        attack = attacks.build("aa", eps=EPS, square_queries=args.square)
        results["harness"] = robust(model, attack(model, x, y), y)

    def reference() -> None:
        results["reference"] = robust(model, pyautoattack(model, x, y, "standard", device, square=args.square), y)

    return Row(name, harness, reference,
               lambda: f"robust {results['harness']:.3f} vs {results['reference']:.3f} (n={x.shape[0]})")


def randaa_row(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args, device) -> Row:
    results: dict[str, float] = {}

    def harness() -> None:
        torch.manual_seed(0)
        attack = attacks.build("randaa", eps=EPS, apgd_steps=args.rand_steps, eot=args.eot)
        results["harness"] = robust(model, attack(model, x, y), y, DRAWS)

    def reference() -> None:
        torch.manual_seed(0)
        adv = pyautoattack(model, x, y, "rand", device, steps=args.rand_steps, eot=args.eot)
        results["reference"] = robust(model, adv, y, DRAWS)

    return Row(f"randaa vs pyautoattack rand (noisy CNN, {args.rand_steps} steps, EOT {args.eot})", harness,
               reference, lambda: f"robust ({DRAWS} draws) {results['harness']:.3f} vs {results['reference']:.3f}")


def no_grad(f: Callable, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return f(x)
    return run


def with_grad(f: Callable, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        leaf = x.clone().requires_grad_(True)
        return torch.autograd.grad(f(leaf).sum(), leaf)
    return run


def arithmetic_ratio(model: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of model(x) over FLOPs of reference(x), as torch's FLOP counter counts them (convolutions and matrix
    products): the floor of their time ratio where both run their layers equally efficiently."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(m: torch.nn.Module) -> int:
        torch.manual_seed(0)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m(x)
        return counter.get_total_flops()

    return flops(model) / flops(reference)


def digits_carso(device: torch.device, **settings: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(CARSO, its classifier) as the digits demo builds them (the small CNN, the demo's purifier widths), untrained,
    in eval mode, seeded; `settings` override CARSO's (e.g. samples)."""
    import defences
    from bench.zoo.small_cnn import SmallCNN
    from defences.base import Task

    torch.manual_seed(0)
    task = Task(dataset="digits", channels=1, height=32, width=32, num_classes=10, mean=(0.3,), std=(0.4,),
                norm="Linf", eps=0.15)
    classifier = SmallCNN(1, 10, 32).to(device).eval()
    carso = defences.build("carso", classifier=classifier, task=task, decoder_channels=[64, 64, 32, 16, 8],
                           **settings)
    return carso.to(device).eval(), classifier


def carso_rows(device: torch.device, batch: int) -> list[Row]:
    carso, classifier = digits_carso(device)
    x = torch.rand(batch, 1, 32, 32, device=device)
    floor = arithmetic_ratio(carso, classifier, x)
    torch_pooling = with_torch_pooling(classifier)
    before = copy.deepcopy(carso)
    before.classifier = torch_pooling
    return [Row(f"CARSO forward (N=8, batch {batch}) vs its classifier", no_grad(carso, x), no_grad(classifier, x),
                lambda: f"arithmetic {floor:.2f}x"),
            Row("CARSO forward, classifier with bench.zoo.pooling vs with torch's MaxPool2d", no_grad(carso, x),
                no_grad(before, x)),
            Row("CARSO forward+backward, classifier with bench.zoo.pooling vs with torch's MaxPool2d",
                with_grad(carso, x), with_grad(before, x)),
            Row("CARSO forward, unoptimised path vs its classifier",
                no_grad(lambda v: unoptimised_forward(carso, v), x), no_grad(classifier, x)),
            Row("CARSO forward+backward vs classifier's", with_grad(carso, x), with_grad(classifier, x)),
            Row("CARSO forward+backward, unoptimised path", with_grad(lambda v: unoptimised_forward(carso, v), x),
                with_grad(classifier, x)),
            Row(f"small CNN forward (batch {batch}), bench.zoo.pooling vs torch's MaxPool2d", no_grad(classifier, x),
                no_grad(torch_pooling, x)),
            Row(f"small CNN forward+input gradient (batch {batch}), bench.zoo.pooling vs torch's MaxPool2d",
                with_grad(classifier, x), with_grad(torch_pooling, x))]


def carso_paper_rows(device: torch.device, batch: int) -> list[Row]:
    """CARSO as the CARSO paper runs it on CIFAR-10: WRN-28-10, its default representation layers (Table 5) and
    purifier (Table 13, decoder widths 256-32), N = 8."""
    if batch < 1:
        return []
    import defences
    from bench.zoo.wide_resnet import WideResNet
    from defences.base import Task

    torch.manual_seed(0)
    task = Task(dataset="cifar10", channels=3, height=32, width=32, num_classes=10, mean=(0.5,) * 3,
                std=(0.25,) * 3, norm="Linf", eps=8 / 255)
    classifier = WideResNet(28, 10).to(device).eval()
    carso = defences.build("carso", classifier=classifier, task=task).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    floor = arithmetic_ratio(carso, classifier, x)
    return [Row(f"CARSO forward, CIFAR-10 paper configuration (WRN-28-10, N=8, batch {batch}) vs its classifier",
                no_grad(carso, x), no_grad(classifier, x), lambda: f"arithmetic {floor:.2f}x")]


def with_torch_pooling(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose max-pooling layers are torch's own nn.MaxPool2d (the same weights)."""
    plain = copy.deepcopy(model)
    for parent in plain.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.MaxPool2d):
                setattr(parent, name, torch.nn.MaxPool2d(child.kernel_size, child.stride))
    return plain


def apgd_eot_rows(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
                  eot: int) -> list[Row]:
    def run(max_batch: int | None) -> Callable[[], object]:
        def attack() -> object:
            torch.manual_seed(0)
            return APGD(eps=8 / 255, steps=steps, eot=eot, max_batch=max_batch).run(model, x, y)
        return attack

    default = apgd_max_batch(x)
    return [Row(f"APGD-EOT default batching ({default} per pass) vs looped, {name}", run(None), run(x.shape[0])),
            Row(f"APGD-EOT all {eot} copies per pass vs looped, {name}", run(x.shape[0] * eot), run(x.shape[0])),
            Row(f"noise: identical configurations (looped APGD-EOT vs itself), {name}", run(x.shape[0]),
                run(x.shape[0]))]


def noisy(classifier: torch.nn.Module, side: int, channels: int, device: torch.device) -> NoisyDefence:
    return NoisyDefence(classifier, toy_task(channels=channels, side=side), NoisyDefence.Params(sigma=0.25)).to(
        device).eval()


def build_rows(args, device: torch.device) -> list[Row]:
    train_x, train_y = digits8("train")
    x, y = (t[:args.n].to(device) for t in digits8("test"))
    torch.manual_seed(0)
    cnn = fit_classifier(TinyCNN(), train_x, train_y, epochs=10, seed=0).to(device)
    linear = fit_classifier(LinearClassifier(torch.zeros(10, 64), torch.zeros(10)), train_x, train_y, epochs=10,
                            seed=0).to(device)
    torch.manual_seed(0)
    stochastic = NoisyDefence(TinyCNN(), toy_task(), NoisyDefence.Params(sigma=0.3))
    fit_classifier(stochastic.classifier, train_x, train_y, epochs=10, seed=0, transform=stochastic.purify)
    stochastic = stochastic.to(device).eval()
    rows = [aa_row(f"aa vs pyautoattack standard (TinyCNN, Square {args.square})", cnn, x, y, args, device),
            aa_row(f"aa vs pyautoattack standard (10-class linear, Square {args.square})", linear, x, y, args, device),
            randaa_row(stochastic, x, y, args, device), *carso_rows(device, args.carso_batch),
            *carso_paper_rows(device, args.carso_paper_batch)]
    from bench.zoo.small_cnn import SmallCNN

    torch.manual_seed(0)
    demo_cnn = noisy(SmallCNN(1, 10, 32), 32, 1, device)
    images = torch.rand(args.eot_batch, 1, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.eot_batch,), device=device)
    rows += apgd_eot_rows(f"small CNN 32x32, batch {args.eot_batch}, EOT 10", demo_cnn, images, labels, 10, 10)
    rows += apgd_eot_rows(f"TinyCNN 8x8, batch {args.n}, EOT 10", stochastic, x, y, 10, 10)
    if device.type == "cuda":
        from bench.zoo.wide_resnet import WideResNet

        wrn = noisy(WideResNet(28, 10), 32, 3, device)
        images = torch.rand(64, 3, 32, 32, device=device)
        labels = torch.randint(0, 10, (64,), device=device)
        rows += apgd_eot_rows("WRN-28-10, batch 64, EOT 20", wrn, images, labels, 5, 20)
    return rows


@dataclass
class Timing:
    """One run's wall-clock and process CPU seconds (CPU time: what the run itself cost, the part of a loaded
    machine's noise that other processes' use of the cores does not add)."""

    wall: float
    cpu: float


def timed(run: Callable[[], object], sync: Callable[[], None]) -> Timing:
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    sync()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def measure(rows: list[Row], repeats: int, sync: Callable[[], None]) -> dict[str, list[tuple[Timing, Timing]]]:
    """(harness, reference) timings per row and repeat; the order within a pair alternates between repeats. Each
    callable runs once untimed first: first calls pay for kernel selection and allocation (without it the first
    CARSO row's per-repeat ratios ranged 5.3x-21x)."""
    times: dict[str, list[tuple[Timing, Timing]]] = {row.name: [] for row in rows}
    for row in rows:
        row.harness()
        row.reference()
    print("  warm-up done", flush=True)
    for repeat in range(repeats):
        for row in rows:
            harness_first = repeat % 2 == 0
            first, second = (row.harness, row.reference) if harness_first else (row.reference, row.harness)
            a, b = timed(first, sync), timed(second, sync)
            times[row.name].append((a, b) if harness_first else (b, a))
        print(f"  repeat {repeat + 1}/{repeats} done", flush=True)
    return times


def summary(pairs: list[tuple[Timing, Timing]], clock: str) -> tuple[float, float, float, str]:
    """Median harness and reference seconds, the median of the per-repeat ratios (each pair ran back to back,
    so a load change between repeats cancels), and the ratios' range."""
    harness = [getattr(h, clock) for h, _ in pairs]
    reference = [getattr(r, clock) for _, r in pairs]
    ratios = [h / r if r > 0 else float("inf") for h, r in zip(harness, reference, strict=True)]
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    return statistics.median(harness), statistics.median(reference), statistics.median(ratios), spread


def report(rows: list[Row], times: dict[str, list[tuple[Timing, Timing]]]) -> None:
    width = max(len(row.name) for row in rows)
    print(f"{'row':<{width}}  {'cpu: harness s':>14}  {'reference s':>11}  {'ratio':>6}  {'range':>9}  "
          f"{'wall: ratio':>11}  {'range':>9}  notes")
    for row in rows:
        harness, reference, ratio, spread = summary(times[row.name], "cpu")
        _, _, wall_ratio, wall_spread = summary(times[row.name], "wall")
        print(f"{row.name:<{width}}  {harness:14.3f}  {reference:11.3f}  {ratio:5.2f}x  {spread:>9}  "
              f"{wall_ratio:10.2f}x  {wall_spread:>9}  {row.note()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="examples for the AutoAttack rows")
    parser.add_argument("--square", type=int, default=300, help="Square queries in both AutoAttacks")
    parser.add_argument("--rand-steps", type=int, default=20)
    parser.add_argument("--eot", type=int, default=5, help="EOT samples in both randAAs")
    parser.add_argument("--carso-batch", type=int, default=60)
    parser.add_argument("--carso-paper-batch", type=int, default=4,
                        help="images for the CIFAR-10 paper configuration's CARSO row (0: skip it)")
    parser.add_argument("--eot-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.carso_paper_batch < 0:
        parser.error(f"--carso-paper-batch must be >= 0 (0 skips that row), got {args.carso_paper_batch}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = build_rows(args, device)
    print(f"speed on {device} ({torch.get_num_threads()} torch threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores), {args.repeats} interleaved repeats; "
          f"ratio = harness / reference, the median of the per-repeat ratios, with their range")
    times = measure(rows, args.repeats, sync)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    report(rows, times)


if __name__ == "__main__":
    main()
