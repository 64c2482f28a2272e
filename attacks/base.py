"""The Attack interface, the threat model (eps-ball and [0, 1] box) and the attack surface.

Every attack is a dataclass of its settings (eps, norm, steps, ... with the papers' defaults) called as
`attack(model, x, y) -> x_adv`. Whatever the attack does inside, its output is checked against the threat
model before it is returned: an attack that leaves the eps-ball or the image box raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from attacks.l1 import project_l1

NORMS = ("Linf", "L2", "L1")
TARGETS = ("end_to_end", "classifier")
# float32 rounding of x + delta: a projected point may sit this far outside the ball.
THREAT_MODEL_TOLERANCE = 1e-5


class ThreatModelViolation(AssertionError):
    """An attack produced a point outside the eps-ball or outside [0, 1]."""


def lp_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "L1":
        return flat.abs().sum(dim=1)
    return flat.abs().amax(dim=1) if norm == "Linf" else flat.norm(p=2, dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project x_adv onto the eps-ball around x (in `norm`) intersected with the [0, 1] box.

    For L2 the ball projection is followed by the box clamp, which can only shrink the perturbation,
    so the result stays in both sets. For L1 it is the exact projection onto the intersection (attacks.l1).
    """
    if norm == "L1":
        return project_l1(x_adv, x, eps)
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = lp_norms(delta, "L2").clamp_min(1e-12)
        factor = (eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * factor
    return (x + delta).clamp(0.0, 1.0)


def straight_through(x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
    """`purified` in the forward pass, the identity (summed over copies) in the backward pass."""
    purified = purified.detach()
    if purified.shape == x.shape:
        return purified + (x - x.detach())
    batch, item = x.shape[0], tuple(x.shape[1:])
    if purified.dim() == x.dim() and tuple(purified.shape[1:]) == item and purified.shape[0] % batch == 0:
        repeated = x.repeat(purified.shape[0] // batch, *([1] * (x.dim() - 1)))
        return purified + (repeated - repeated.detach())
    if purified.dim() == x.dim() + 1 and tuple(purified.shape[1:]) == tuple(x.shape):
        stacked = x.unsqueeze(0).expand_as(purified)
        return purified + (stacked - stacked.detach())
    raise ValueError(f"purify returned shape {tuple(purified.shape)} for inputs {tuple(x.shape)}; BPDA needs the "
                     "input's shape, (k*B, ...) copy-major, or (k, B, ...)")

def require_at_least_one(owner: object, names: tuple[str, ...], optional: bool = False) -> None:
    """Raise ValueError naming the first setting in `names` whose value on `owner` is below 1 (with optional=True,
    None is accepted: it stands for the default)."""
    for name in names:
        value = getattr(owner, name)
        if value is None and optional:
            continue
        if value is None or value < 1:
            default = " (or None for the default)" if optional else ""
            raise ValueError(f"{name} must be >= 1{default}, got {value}")


def within_budget(size: float, eps: float) -> bool:
    """Whether a perturbation of this size (in the threat model's norm) is inside the eps-ball, up to rounding."""
    return size <= eps * (1 + 1e-4) + THREAT_MODEL_TOLERANCE


def check_threat_model(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> None:
    """Raise ThreatModelViolation unless every x_adv is within eps of x (in `norm`: Linf, L2 or L1) and inside
    [0, 1], the sizes measured exactly (float64) up to THREAT_MODEL_TOLERANCE and a relative 1e-4."""
    if x_adv.shape != x.shape:
        raise ThreatModelViolation(f"adversarial batch has shape {tuple(x_adv.shape)}, inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise ThreatModelViolation("adversarial batch contains NaN or inf")
    low, high = x_adv.min().item(), x_adv.max().item()
    if low < -THREAT_MODEL_TOLERANCE or high > 1 + THREAT_MODEL_TOLERANCE:
        raise ThreatModelViolation(f"adversarial batch leaves [0, 1]: min {low:.6g}, max {high:.6g}")
    # in float64 the difference of two float32 points is exact and an L1 sum of d terms rounds by ~d * 1e-16
    sizes = lp_norms(x_adv.double() - x.double(), norm)
    worst = sizes.max().item() if sizes.numel() else 0.0
    if not within_budget(worst, eps):
        raise ThreatModelViolation(f"{norm} perturbation {worst:.6g} exceeds eps {eps:.6g}")


def attack_surface(model: nn.Module, target: str) -> nn.Module:
    """The module an attack differentiates: the whole defence, or its classifier alone."""
    if target == "end_to_end":
        return model
    if target == "classifier":
        classifier = getattr(model, "classifier", None)
        if classifier is None:
            raise ValueError(f"target='classifier' needs a defence with a .classifier; {type(model).__name__} has none")
        return classifier
    raise ValueError(f"target={target!r} is not valid; valid: {', '.join(TARGETS)}")


@contextmanager
def no_weight_gradients(model: nn.Module) -> Iterator[None]:
    """The model's parameters stop requiring gradients inside the block and are restored after (also on error).

    Every attack runs inside it: attacks differentiate with respect to the input alone, so the backward pass
    skips every weight gradient (the digits CNN's forward+input gradient 4-13% faster in paired runs, its input
    gradients bit for bit the same) and cannot leave gradients in the parameters' .grad (an attack inside a
    training step, pyautoattack's FAB calling .backward())."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


class PassCounter(nn.Module):
    """Wraps a model and counts the examples sent forward and the examples whose gradient was taken."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_examples = 0
        self.backward_examples = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Straight to forward: a counter has no module hooks, and nn.Module's call machinery costs ~15 us a
        # pass, a tenth of a small model's forward+backward (bench/benchmarks/speed.py's linear-model row).
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Counts go straight into __dict__ and the backward is counted by a bound method hooked on the output's
        # autograd node (a tensor hook only where the output has no node: a leaf): without nn.Module.__setattr__,
        # a closure per pass and Tensor.register_hook the counter costs ~14 us a forward+backward instead of ~21.
        state = self.__dict__
        out = state["_modules"]["model"](x)
        state["forward_examples"] += x.shape[0]
        if out.requires_grad:
            if out.grad_fn is not None:
                out.grad_fn.register_prehook(self._count_node_backward)
            else:
                out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.__dict__["backward_examples"] += grad.shape[0] if grad.dim() else 1

    def _count_node_backward(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        self._count_backward(next(g for g in grads if g is not None))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)


@dataclass(frozen=True)
class Budget:
    """A budget setting (the attack's work grows with it) in a component's `smoke_budget`: smoke mode shrinks its
    value n to `floor + ceil(log10 n) - 1` when above `floor` (bench/smoke.py), and the GPU-hour estimate scales
    a directly measured attack's cost by it (bench/executors/calibration.py)."""

    floor: int = 1


@dataclass
class Attack:
    """Base settings shared by every attack. Subclasses add theirs (all with defaults) and `perturb`."""

    code_version: ClassVar[str] = "1"
    registry_name: ClassVar[str] = ""
    # The registry names this attack builds (`attacks.build`) when it runs; its code fingerprint follows them.
    registry_members: ClassVar[tuple[str, ...]] = ()
    # Smoke mode's settings (bench/smoke.py): setting -> Budget(floor) (shrunk) or a value (set); settings not
    # named keep their values. None: not declared, and smoke mode applies its documented default.
    smoke_budget: ClassVar[dict[str, Any] | None] = None
    # Whether its gradients reach the defence through the BPDA approximation (Defence.bpda_forward: the
    # purifier's gradient replaced by the identity) rather than end to end; the report's decomposition uses it.
    through_bpda: ClassVar[bool] = False
    # The threat models it is defined for (a subset of NORMS); any other norm is refused when it is built.
    supported_norms: ClassVar[tuple[str, ...]] = NORMS

    eps: float = 8 / 255
    norm: str = "Linf"
    target: str = "end_to_end"

    def __post_init__(self) -> None:
        if self.norm not in self.supported_norms:
            raise ValueError(f"norm={self.norm!r} is not supported by {self.registry_name or type(self).__name__}; "
                             f"valid: {', '.join(self.supported_norms)}")
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r} is not valid; valid: {', '.join(TARGETS)}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Perturb x within the threat model; forward/backward example counts accumulate in `self.counts`."""
        x = x.detach()
        counter = PassCounter(self.surface(model))
        with no_weight_gradients(model):
            x_adv = self.perturb(counter, x, y).detach()
        counts = self.__dict__.setdefault("counts", {"forward_examples": 0, "backward_examples": 0})
        counts["forward_examples"] += counter.forward_examples
        counts["backward_examples"] += counter.backward_examples
        check_threat_model(x, x_adv, self.eps, self.norm)
        return x_adv

    def surface(self, model: nn.Module) -> nn.Module:
        return attack_surface(model, self.target)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def passes_per_image(self) -> float | None:
        """Forward+backward passes of one image through the model at these settings (a forward pass alone counts
        1/3), for the GPU-hour estimate; None where the count is not known in advance (the base: undeclared)."""
        return None

    def settings(self) -> dict[str, Any]:
        return {"name": self.registry_name or type(self).__name__, **dataclasses.asdict(self)}

    def budget(self) -> str:
        """A one-line human summary of the budget, for plans and tables."""
        fields = {f.name for f in dataclasses.fields(self)} - {"eps", "norm", "target"}
        parts = [f"{self.norm} eps={self.eps:.4g}"] + [f"{k}={getattr(self, k)}" for k in sorted(fields)]
        return ", ".join(parts + [f"target={self.target}"])
