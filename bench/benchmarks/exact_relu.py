"""Exact robust accuracy of small trained ReLU networks under Linf, from a mixed-integer programme.

The bank behind tests/test_exact_relu.py (its fixtures: tests/fixtures/exact_relu/, whose README says how to
regenerate them). Every network is a sequence of affine layers (Linear, or Conv2d read as a dense matrix) with
ReLUs between, trained with fixed seeds on scikit-learn's 8x8 digits (10 classes), plainly or with PGD
adversarial training. For each point and each wrong class j the programme minimises the margin
logit_y - logit_j over the point's eps-box intersected with [0, 1], each unstable ReLU encoded with one binary
and big-M constants from interval bound propagation; the point is robust iff the smallest margin over j is
> 0. The MILP cannot express an L2 ball (it is a quadratic constraint): L2 has exact answers only where a
closed form exists (linear models, tests/test_attacks_exact.py).

Floating point: the programme is solved by HiGHS (scipy.optimize.milp) in float64 on the float32 weights. A
point is claimed only when its answer is clear of the solver's tolerances: robust when the solver's lower
bound on the margin exceeds `TOLERANCE`, breakable when the solver's point, rounded into the box in float32,
is misclassified by the float32 network with margin below -`TOLERANCE`; every other point is `borderline` and
left out of the exact claims (counted).

`python -m bench.benchmarks.exact_relu --write DIR` trains the networks, solves every point (about 8 CPU minutes)
and writes the fixtures into DIR; with or without it (`--bank DIR`, default the committed fixtures) it prints,
per network, the exact robust accuracy beside each attack's in `--attacks` (default budgets, seed 0, CPU seconds,
`--threads` torch threads).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attacks.gradient import PGD
from bench.benchmarks.toys import digits8, fit_classifier

TOLERANCE = 1e-3  # logits: a margin this close to 0 is not claimed either way
SLACK = 1e-5  # added to LP-tightened pre-activation bounds
POINTS = 100  # the first POINTS test digits
SHAPE = (1, 8, 8)
CLASSES = 10
ATTACKS = ("aa", "adaptive", "apgd_ce", "apgd_dlr", "pgd", "fgsm")


@dataclass(frozen=True)
class Spec:
    """One network of the bank: its architecture, training (train_eps 0: plain) and the attack eps."""

    name: str
    architecture: str
    train_eps: float
    eps: float
    seed: int
    epochs: int = 40


SPECS = (
    Spec("mlp32_plain", "mlp32", 0.0, 0.075, 0),
    Spec("mlp32_at", "mlp32", 0.1, 0.15, 1),
    Spec("mlp32x16_plain", "mlp32x16", 0.0, 0.075, 2),
    Spec("mlp32x16_at", "mlp32x16", 0.1, 0.15, 3),
    Spec("cnn_at", "cnn", 0.1, 0.15, 4),
)


def build_network(architecture: str) -> nn.Sequential:
    """The bank's architectures, all of them affine layers with ReLUs between (8x8 inputs, 10 classes)."""
    if architecture == "mlp32":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    if architecture == "mlp32x16":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                             nn.Linear(16, CLASSES))
    if architecture == "cnn":  # conv 3x3 stride 2 (4 channels, 64 ReLUs), then 16 hidden units
        return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 16),
                             nn.ReLU(), nn.Linear(16, CLASSES))
    raise ValueError(f"architecture={architecture!r} is not valid; valid: mlp32, mlp32x16, cnn")


def train_network(spec: Spec, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> nn.Sequential:
    """Adam on cross-entropy, on clean inputs or (train_eps > 0) on PGD-10 examples (step eps/4, random start)."""
    torch.manual_seed(spec.seed)
    model = build_network(spec.architecture)
    pgd = PGD(eps=spec.train_eps, steps=10, step_size=spec.train_eps / 4, keep_best=False) if spec.train_eps else None
    return fit_classifier(model, x, y, epochs=spec.epochs, lr=0.01, batch_size=batch_size, seed=spec.seed,
                          attack=pgd)


# --- the network as affine layers ------------------------------------------------------------------------
def affine_layers(model: nn.Sequential, shape: tuple[int, ...] = SHAPE) -> list[tuple[np.ndarray, np.ndarray]]:
    """The network as [(W, b)] in float64 on the flattened input, ReLU between consecutive layers.

    Each affine module (with the Flattens around it) is read off by applying it to 0 and to the unit basis.
    """
    layers, pending, current = [], [], shape
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.ReLU):
                layers.append(_read_affine(pending, current))
                pending, current = [], tuple(_apply(pending, torch.zeros(1, *current)).shape[1:])
            else:
                pending.append(module)
        layers.append(_read_affine(pending, current))
    return layers


def _apply(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def _read_affine(modules: list[nn.Module], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    size = int(np.prod(shape))
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
    double = [copy.deepcopy(module).double() for module in modules]  # float32 -> float64 is exact
    bias = _apply(double, torch.zeros(1, *shape, dtype=torch.float64)).flatten(1)
    weight = (_apply(double, basis).flatten(1) - bias).T
    return weight.numpy(), bias[0].numpy()


def interval_bounds(weight: np.ndarray, bias: np.ndarray, low: np.ndarray,
                    high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of W v + b over the box low <= v <= high (exact for one affine layer on a box)."""
    positive, negative = np.clip(weight, 0, None), np.clip(weight, None, 0)
    return positive @ low + negative @ high + bias, positive @ high + negative @ low + bias


@dataclass
class Programme:
    """The constraints shared by every wrong class of one point: variables [x, then (a_k, d_k) per hidden layer]."""

    matrix: np.ndarray
    row_low: np.ndarray
    row_high: np.ndarray
    low: np.ndarray
    high: np.ndarray
    integrality: np.ndarray
    last: slice  # the last hidden layer's activations


def build_programme(layers: list[tuple[np.ndarray, np.ndarray]], low: np.ndarray, high: np.ndarray) -> Programme:
    """Each unstable ReLU a = max(z, 0), l < 0 < u: a >= z, a <= z - l (1 - d), a <= u d, d binary; stable ones
    are a = z (l >= 0) or a = 0 (u <= 0). l, u: interval bounds, tightened from the second hidden layer on by
    the LP relaxation of the layers before (big-M constants as small as an LP can prove, so fewer branches)."""
    sizes = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers[:-1]]
    total = sizes[0] + 2 * sum(sizes[1:])
    programme = Programme(np.zeros((0, total)), np.zeros(0), np.zeros(0), np.zeros(total), np.zeros(total),
                          np.zeros(total), slice(0, sizes[0]))
    programme.low[:sizes[0]], programme.high[:sizes[0]] = low, high
    start = sizes[0]
    for weight, bias in layers[:-1]:
        n = weight.shape[0]
        z_low, z_high = interval_bounds(weight, bias, programme.low[programme.last], programme.high[programme.last])
        if programme.last.start > 0:
            z_low, z_high = _tighten(programme, weight, bias, z_low, z_high)
        rows, row_low, row_high = [], [], []
        a, d = slice(start, start + n), slice(start + n, start + 2 * n)
        for i in range(n):
            _relu_rows(rows, row_low, row_high, total, programme.last, weight[i], bias[i], a.start + i, d.start + i,
                       z_low[i], z_high[i])
        if rows:
            programme.matrix = np.vstack([programme.matrix, np.array(rows)])
            programme.row_low = np.r_[programme.row_low, row_low]
            programme.row_high = np.r_[programme.row_high, row_high]
        programme.high[a], programme.high[d] = np.clip(z_high, 0, None), (z_low < 0) & (z_high > 0)
        programme.integrality[d] = 1
        start, programme.last = start + 2 * n, a
    return programme


def _tighten(programme: Programme, weight: np.ndarray, bias: np.ndarray, z_low: np.ndarray,
             z_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min and max of each pre-activation over the LP relaxation of the programme so far, within the given bounds,
    widened by `SLACK` against the LP solver's tolerances (a bound too tight would cut off real points)."""
    z_low, z_high = z_low.copy(), z_high.copy()
    for i in range(weight.shape[0]):
        z_low[i] = max(z_low[i], _solve(programme, weight[i], bias[i], 60.0, exact=False)[1] - SLACK)
        z_high[i] = min(z_high[i], -_solve(programme, -weight[i], -bias[i], 60.0, exact=False)[1] + SLACK)
    return z_low, z_high


def _relu_rows(rows: list, row_low: list, row_high: list, total: int, inputs: slice, weight: np.ndarray,
               bias: float, a: int, d: int, z_low: float, z_high: float) -> None:
    """Append the rows of one ReLU (none when it is always off: its bounds [0, 0] say it)."""
    if z_high <= 0:
        return
    row = np.zeros(total)
    row[inputs], row[a] = -weight, 1.0
    if z_low >= 0:  # always on: a - W v = b
        rows.append(row), row_low.append(bias), row_high.append(bias)
        return
    rows.append(row), row_low.append(bias), row_high.append(np.inf)  # a >= z
    upper = row.copy()
    upper[d] = -z_low
    rows.append(upper), row_low.append(-np.inf), row_high.append(bias - z_low)  # a <= z - l (1 - d)
    gate = np.zeros(total)
    gate[a], gate[d] = 1.0, -z_high
    rows.append(gate), row_low.append(-np.inf), row_high.append(0.0)  # a <= u d


@dataclass
class Solution:
    """The smallest margin logit_y - logit_j over the box and wrong classes j: the solver's value at its point,
    a lower bound on the true minimum, the point, and whether every programme finished."""

    margin: float
    bound: float
    point: np.ndarray
    solved: bool
    seconds: float


def minimise_margin(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, label: int, eps: float,
                    time_limit: float = 120.0) -> Solution:
    """One programme per wrong class j, in order of their LP-relaxation bounds; a class whose relaxation bound is
    already above the best margin found cannot hold the minimum and is not solved exactly."""
    started = time.process_time()
    programme = build_programme(layers, np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1))
    weight, bias = layers[-1]
    classes = [j for j in range(weight.shape[0]) if j != label]
    relaxed = {j: _solve(programme, weight[label] - weight[j], bias[label] - bias[j], time_limit, exact=False)[1]
               for j in classes}
    best, bounds, point, solved = np.inf, [], x.copy(), True
    for j in sorted(classes, key=relaxed.get):
        if relaxed[j] >= best:
            bounds.append(relaxed[j])
            continue
        value, bound, where, finished = _solve(programme, weight[label] - weight[j], bias[label] - bias[j],
                                               time_limit, exact=True)
        solved &= finished
        bounds.append(bound)
        if value < best:
            best, point = value, where[:x.shape[0]].copy()
    return Solution(float(best), float(min(bounds)), point, solved, time.process_time() - started)


def _solve(programme: Programme, objective: np.ndarray, constant: float, time_limit: float,
           exact: bool) -> tuple[float, float, np.ndarray | None, bool]:
    """min objective . a_last + constant: (value at the solver's point, lower bound, the point, finished);
    exact=False solves the LP relaxation (binaries in [0, 1]), whose value is a lower bound."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    cost = np.zeros(programme.low.shape[0])
    cost[programme.last] = objective
    constraints = [LinearConstraint(programme.matrix, programme.row_low, programme.row_high)] \
        if len(programme.matrix) else []
    integrality = programme.integrality if exact else np.zeros_like(programme.integrality)
    result = milp(cost, integrality=integrality, bounds=Bounds(programme.low, programme.high),
                  constraints=constraints, options={"mip_rel_gap": 1e-6, "time_limit": time_limit})
    if result.x is None:
        return np.inf, -np.inf, None, False
    dual = getattr(result, "mip_dual_bound", None) if exact else None  # None for an LP: its optimum is the bound
    return result.fun + constant, (result.fun if dual is None else dual) + constant, result.x, result.status == 0


# --- verdicts in float32 ----------------------------------------------------------------------------------
def into_box(point: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """`point` as float32 values inside the box in exact arithmetic: |p - x| <= eps and 0 <= p <= 1 (x float32)."""
    x = x.astype(np.float32)
    low, high = np.maximum(x.astype(np.float64) - eps, 0.0), np.minimum(x.astype(np.float64) + eps, 1.0)
    p = np.clip(point, low, high).astype(np.float32)
    for _ in range(4):  # rounding to float32 may step one ulp outside: step back towards x
        outside = (p.astype(np.float64) < low) | (p.astype(np.float64) > high)
        if not outside.any():
            return p
        p[outside] = np.nextafter(p[outside], x[outside])
    raise AssertionError("could not round the point into the box")


def float32_margins(model: nn.Module, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logit_y - max_{j != y} logit_j of the float32 network."""
    with torch.no_grad():
        logits = model(points.float())
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(1)


def verdict(solution: Solution, float32_margin: float) -> str:
    """robust / breakable (the float32 counterexample is misclassified) / borderline (not claimed)."""
    if solution.solved and solution.bound > TOLERANCE:
        return "robust"
    if float32_margin < -TOLERANCE:
        return "breakable"
    return "borderline"


def solve_network(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> list[dict]:
    """Per point: verdict, the solver's optimal margin and lower bound, seconds, and for breakable points the
    counterexample (float32 values, flattened)."""
    layers = affine_layers(model)
    records = []
    for point, label in zip(x.flatten(1).double().numpy(), y.tolist(), strict=True):
        solution = minimise_margin(layers, point, label, eps)
        adversarial = into_box(solution.point, point, eps)
        margin32 = float(float32_margins(model, torch.from_numpy(adversarial).view(1, *SHAPE),
                                         torch.tensor([label]))[0])
        kind = verdict(solution, margin32)
        records.append({"verdict": kind, "margin": solution.margin, "bound": solution.bound,
                        "float32_margin": margin32, "seconds": round(solution.seconds, 3),
                        "counterexample": adversarial.tolist() if kind == "breakable" else None})
    return records


# --- the bank's files -------------------------------------------------------------------------------------
def bank_points(n: int = POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits8("test")
    return x[:n].contiguous(), y[:n].contiguous()


def compact(values: list[float]) -> list[float]:
    """float32 values as the shortest decimals that round back to them (smaller JSON, same float32 numbers)."""
    return [float(str(np.float32(v))) for v in values]


def summary(records: list[dict]) -> dict[str, int]:
    return {kind: sum(r["verdict"] == kind for r in records) for kind in ("robust", "breakable", "borderline")}


def write_bank(directory: Path, specs: tuple[Spec, ...] = SPECS, n: int = POINTS) -> dict[str, nn.Module]:
    """Train every network, solve every point, write networks.safetensors and verdicts.json; returns the models."""
    from safetensors.torch import save_file

    train_x, train_y = digits8("train")
    x, y = bank_points(n)
    tensors, networks, models = {"points.x": x, "points.y": y}, {}, {}
    for spec in specs:
        model = train_network(spec, train_x, train_y)
        records = solve_network(model, x, y, spec.eps)
        for record in records:
            record["counterexample"] = record["counterexample"] and compact(record["counterexample"])
        tensors.update({f"{spec.name}.{key}": value.contiguous() for key, value in model.state_dict().items()})
        networks[spec.name] = {**asdict(spec), "norm": "Linf", **summary(records),
                               "solver_seconds": round(sum(r["seconds"] for r in records), 1), "points": records}
        models[spec.name] = model
        print(f"{spec.name}: {summary(records)} in {networks[spec.name]['solver_seconds']} s", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "networks.safetensors"))
    verdicts = {"tolerance": TOLERANCE, "points": n, "inputs": f"the first {n} digits8 test points",
                "networks": networks}
    (directory / "verdicts.json").write_text(json.dumps(verdicts, indent=1) + "\n")
    return models


@dataclass
class BankEntry:
    """One network of the bank as loaded: the float32 model, its points, eps and per-point verdicts."""

    spec: Spec
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    records: list[dict]

    def mask(self, kind: str) -> torch.Tensor:
        return torch.tensor([r["verdict"] == kind for r in self.records])


def load_bank(directory: Path) -> list[BankEntry]:
    """The committed bank (weights through safetensors only; no file runs code)."""
    from safetensors.torch import load_file

    tensors = load_file(str(directory / "networks.safetensors"))
    verdicts = json.loads((directory / "verdicts.json").read_text())
    entries = []
    for name, network in verdicts["networks"].items():
        spec = Spec(**{field: network[field] for field in Spec.__dataclass_fields__})
        model = build_network(spec.architecture)
        prefix = f"{name}."
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        entries.append(BankEntry(spec, model.eval(), tensors["points.x"], tensors["points.y"], network["points"]))
    return entries


# --- attacks against the exact answer ---------------------------------------------------------------------
def run_attack(name: str, entry: BankEntry, seed: int = 0, **budget) -> tuple[torch.Tensor, float]:
    """`name`'s points against the bank's network (default budget unless given, seed fixed) and its CPU seconds."""
    import attacks

    seeded = {"seed": seed} if name in ("aa", "adaptive", "apgd_ce", "apgd_dlr") else {}
    attack = attacks.build(name, eps=entry.spec.eps, norm="Linf", **seeded, **budget)
    torch.manual_seed(seed)
    started = time.process_time()
    x_adv = attack(entry.model, entry.x, entry.y)
    return x_adv, time.process_time() - started


def benchmark(entries: list[BankEntry], names: tuple[str, ...] = ATTACKS) -> None:
    """Print, per network, the exact robust accuracy (claimed points) beside each attack's on the same points."""
    print(f"{'network':16} {'eps':>6} {'claimed':>7} {'exact':>6} " + " ".join(f"{n:>16}" for n in names))
    for entry in entries:
        claimed = ~entry.mask("borderline")
        exact = int(entry.mask("robust").sum())
        cells = []
        for name in names:
            x_adv, seconds = run_attack(name, entry)
            robust = float32_margins(entry.model, x_adv, entry.y) > 0
            broken_robust = int((entry.mask("robust") & ~robust).sum())
            flag = f"!{broken_robust}" if broken_robust else ""
            cells.append(f"{int((robust & claimed).sum())}{flag} ({seconds:.1f}s)".rjust(16))
        print(f"{entry.spec.name:16} {entry.spec.eps:>6} {int(claimed.sum()):>7} {exact:>6} " + " ".join(cells),
              flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="train, solve and write the fixtures into this folder")
    parser.add_argument("--bank", type=Path, default=Path("tests/fixtures/exact_relu"),
                        help="the bank to attack (without --write)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated attack names")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import attacks

    names = tuple(a for a in args.attacks.split(",") if a)
    unknown = [a for a in names if a not in attacks.names()]
    if unknown:
        parser.error(f"unknown attack(s) {unknown}; valid: {', '.join(attacks.names())}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.write is not None:
        write_bank(args.write)
    directory = args.write or args.bank
    if not (directory / "verdicts.json").is_file():
        parser.error(f"no bank in {directory}: run with --write {directory} first")
    benchmark(load_bank(directory), names)


if __name__ == "__main__":
    main()
