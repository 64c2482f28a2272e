"""Surviving GPU out-of-memory: release what a failed try left, put back what it changed, halve a chunk size.

`ShrinkingSize` is one chunk size (a training micro-batch, an evaluation batch, ...) that `retry` halves after
torch.OutOfMemoryError (the class torch.cuda raises) and tries again, down to a floor; then
`OutOfMemoryAtFloor` carries every retry made. Before a retry, `Snapshot.restore` puts back the RNG states and
module buffers (BatchNorm running statistics) the failed try advanced, so that the retried step is the step an
unretried run with the smaller size takes from the same state. Each retry logs a line and is listed in
`ShrinkingSize.retries` for the caller's metadata or record. `run_layers` runs a stack of layers with gradient
checkpointing (each layer recomputed in the backward pass instead of keeping its activations) when asked.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

T = TypeVar("T")


class OutOfMemoryAtFloor(RuntimeError):
    """Out of GPU memory with every chunk size at its floor; `retries` lists the halvings made before."""

    def __init__(self, message: str, retries: list[dict[str, Any]]):
        super().__init__(message)
        self.retries = retries


def release_cached_memory() -> None:
    """Free what a failed try left: unreachable tensors first, then the CUDA allocator's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_line(message: str) -> str:
    lines = message.strip().splitlines()
    return lines[0][:300] if lines else "out of memory"


@dataclass
class Snapshot:
    """The global RNG states, `generators`' states and `modules`' buffers at one moment."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    generators: list[tuple[torch.Generator, torch.Tensor]]
    buffers: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def take(cls, modules: Sequence[nn.Module], generators: Sequence[torch.Generator] = ()) -> Snapshot:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda, [(g, g.get_state()) for g in generators],
                   [(b, b.detach().clone()) for m in modules for b in m.buffers()])

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for generator, state in self.generators:
            generator.set_state(state)
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)


@dataclass
class ShrinkingSize:
    """A chunk size halved on out-of-memory down to `floor`; `retries` lists each halving with where it was."""

    name: str
    value: int
    floor: int = 1
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("defences.memory"))
    retries: list[dict[str, Any]] = field(default_factory=list)

    def retry(self, step: Callable[[int], T], where: dict[str, Any], restore: Callable[[], None]) -> T:
        """step(size) at the current size; after out-of-memory `restore()`, halve and try again."""
        while True:
            try:
                return step(self.value)
            except torch.OutOfMemoryError as error:  # handled below, once the error and its frames are released
                message = str(error)
            restore()
            release_cached_memory()
            self._halve(where, message)

    def _halve(self, where: dict[str, Any], message: str) -> None:
        if self.value <= self.floor:
            raise OutOfMemoryAtFloor(f"out of GPU memory at {where} with {self.name} at its floor ({self.floor}) "
                                     f"after {len(self.retries)} retries: {first_line(message)}", self.retries)
        old, self.value = self.value, max(self.floor, self.value // 2)
        self.retries.append({**where, "halved": self.name, "from": old, "to": self.value,
                             "error": first_line(message)})
        self.log.warning("out of GPU memory at %s; %s %d -> %d, retrying", where, self.name, old, self.value)


def run_layers(layers: Sequence[nn.Module], hidden: torch.Tensor, checkpointed: bool = False,
               **arguments: Any) -> torch.Tensor:
    """hidden through each layer in turn (`arguments` passed to every one); with `checkpointed` and gradients on,
    each layer keeps only its input for the backward pass and is recomputed there. For layers without running
    statistics (BatchNorm in training mode would update them again in the recomputation)."""
    for layer in layers:
        if checkpointed and torch.is_grad_enabled():
            hidden = checkpoint(layer, hidden, use_reentrant=False, **arguments)
        else:
            hidden = layer(hidden, **arguments)
    return hidden
