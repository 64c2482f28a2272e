"""Surviving GPU out-of-memory in an evaluation cell: halve a chunk size and retry the batch that ran out.

A cell has up to three chunk sizes (`ChunkSizes`): the attack's `max_batch` (examples per forward/backward
pass; halving None, the device default, starts from a batch's EOT copies on a GPU, the batch on a CPU: the
GPU default sends all copies at once up to max(8192, batch), so above that the first halvings change nothing;
attacks.eot is not imported, so that its code stays out of the fingerprint of cells whose attacks do not use
it), the defence's micro-batch
(`params.max_batch`: CARSO's reconstructions per pass) and the evaluation batch (`eval.batch_size`). On
torch.OutOfMemoryError the next size in turn (attack, defence, evaluation batch, attack, ...) above the floor
is halved, cached memory is released, and the batch is tried again; when every size is at the floor the cell
fails with `OutOfMemoryAtFloor`, which carries every retry made. The halved sizes hold for the rest of the
cell and are restored when the cell ends (the defence and attack objects may outlive it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from defences.memory import OutOfMemoryAtFloor, first_line, release_cached_memory

LOG = logging.getLogger("bench.oom")
FLOOR = 1  # the smallest chunk of every kind: one example (one reconstruction, one pass)
ATTACK_MAX_BATCH, DEFENCE_MAX_BATCH, EVAL_BATCH = "attack.max_batch", "defence.max_batch", "eval.batch_size"
SIZES = (ATTACK_MAX_BATCH, DEFENCE_MAX_BATCH, EVAL_BATCH)  # the chunk sizes a retry may halve


@dataclasses.dataclass
class Knob:
    """One chunk size: its current value, how to apply a new one, and the value to restore at the end."""

    name: str
    value: int
    apply: Callable[[int], None]
    restore: Callable[[], None]

    def set(self, value: int) -> None:
        self.value = value
        self.apply(value)


def _attack_knob(attack: Any, device: torch.device, eval_batch: int) -> Knob | None:
    names = {f.name for f in dataclasses.fields(attack)} if dataclasses.is_dataclass(attack) else set()
    if "max_batch" not in names:
        return None
    original = attack.max_batch
    copies = attack.eot if device.type == "cuda" and isinstance(getattr(attack, "eot", None), int) else 1
    start = original if original is not None else eval_batch * max(1, copies)
    return Knob(ATTACK_MAX_BATCH, start, lambda value: setattr(attack, "max_batch", value),
                lambda: setattr(attack, "max_batch", original))


def _defence_knob(defence: Any) -> Knob | None:
    params = getattr(defence, "params", None)
    if not dataclasses.is_dataclass(params) or not isinstance(getattr(params, "max_batch", None), int):
        return None
    original = params.max_batch
    return Knob(DEFENCE_MAX_BATCH, original, lambda value: setattr(defence.params, "max_batch", value),
                lambda: setattr(defence.params, "max_batch", original))


class ChunkSizes:
    """A cell's chunk sizes, halved in turn on out-of-memory (`halve`); `eval_batch` is the current batch size."""

    def __init__(self, defence: Any, attack: Any, eval_batch: int, device: torch.device):
        found = (_attack_knob(attack, device, eval_batch), _defence_knob(defence),
                 Knob(EVAL_BATCH, eval_batch, lambda value: None, lambda: None))
        self.knobs = [knob for knob in found if knob is not None]
        self.retries: list[dict[str, Any]] = []  # every halving in this cell, in order
        self._turn = 0

    @property
    def eval_batch(self) -> int:
        return self.knobs[-1].value

    def halve(self) -> tuple[str, int, int] | None:
        """Halve the next size above the floor, in turn; (name, old, new), or None when all are at the floor."""
        for step in range(len(self.knobs)):
            knob = self.knobs[(self._turn + step) % len(self.knobs)]
            if knob.value > FLOOR:
                old = knob.value
                knob.set(max(FLOOR, old // 2))
                self._turn = (self._turn + step + 1) % len(self.knobs)
                return knob.name, old, knob.value
        return None

    @contextmanager
    def restored(self) -> Iterator[ChunkSizes]:
        """The sizes as given are put back on the attack and the defence when the block ends (also on error)."""
        try:
            yield self
        finally:
            for knob in self.knobs:
                knob.restore()


def after_out_of_memory(sizes: ChunkSizes, where: dict[str, int], message: str, label: str) -> None:
    """Record (in sizes.retries) and log one retry, a halving, after an out-of-memory error at `where` (batch,
    offset, examples); raise OutOfMemoryAtFloor when no size can be halved any more."""
    retries = sizes.retries
    release_cached_memory()
    halved = sizes.halve()
    reason = first_line(message)
    if halved is None:
        raise OutOfMemoryAtFloor(f"{label}: out of GPU memory on batch {where['batch']} with every chunk size at "
                                 f"the floor ({FLOOR}) after {len(retries)} retries: {reason}", retries)
    name, old, new = halved
    retries.append({**where, "halved": name, "from": old, "to": new, "error": reason})
    LOG.warning("%s: out of GPU memory on batch %d (examples %d..%d); %s %d -> %d, retrying", label,
                where["batch"], where["offset"], where["offset"] + where["examples"] - 1, name, old, new)
