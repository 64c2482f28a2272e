"""Out-of-memory during evaluation: chunk sizes halved in turn, retried batches seeded as an unretried run with the
smaller size, retries recorded and logged, the floor recorded as a failed cell. On the CPU, with a classifier that
raises torch.OutOfMemoryError (the class torch.cuda raises) whenever a pass holds more examples than it allows."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import attacks
import bench.evaluate
from bench import oom
from bench.benchmarks.toys import LinearClassifier, NoisyDefence, toy_task
from bench.config import compose
from bench.evaluate import attack_batches, result_fields
from bench.records import load_records, validate_record
from bench.run import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


class MemoryLimited(nn.Module):
    """The wrapped model, except that a pass of more than `limit` examples runs out of (simulated) GPU memory."""

    def __init__(self, model: nn.Module, limit: int):
        super().__init__()
        self.model, self.limit, self.refused = model, limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a pass of {x.shape[0]} examples")
        return self.model(x)


def noisy_defence(limit: int | None = None) -> NoisyDefence:
    generator = torch.Generator().manual_seed(3)
    linear = LinearClassifier(torch.randn(4, 16, generator=generator), torch.zeros(4))
    classifier = MemoryLimited(linear, limit) if limit is not None else linear
    return NoisyDefence(classifier, toy_task(side=4, num_classes=4), NoisyDefence.Params(sigma=0.3)).eval()


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def evaluate(defence: nn.Module, attack: attacks.Attack, batch_size: int, draws: int = 2) -> dict:
    images, labels = data()
    batches = attack_batches(defence, attack, images, labels, draws, CPU, batch_size=batch_size, seed=0,
                             settings_key="k", label="cell")
    return result_fields(batches, list(range(len(labels))), labels, True, draws, "single")


def test_a_batch_out_of_memory_is_retried_in_halves_seeded_as_an_unretried_run_of_that_size(caplog):
    attack = attacks.build("pgd", eps=0.1, steps=3)
    caplog.set_level(logging.WARNING, logger="bench.oom")
    retried = evaluate(noisy_defence(limit=4), attack, batch_size=8)
    unretried = evaluate(noisy_defence(), attack, batch_size=4)
    assert retried["per_example"] == unretried["per_example"]  # example for example: same seeds, same pieces
    assert retried["robust_acc"] == unretried["robust_acc"] and retried["counts"] == unretried["counts"]
    # one halving, on the first batch; the halved size holds for the cell's later batches
    assert [{k: r[k] for k in ("batch", "offset", "examples", "halved", "from", "to")}
            for r in retried["oom_retries"]] == [
        {"batch": 0, "offset": 0, "examples": 8, "halved": "eval.batch_size", "from": 8, "to": 4}]
    assert "CUDA out of memory" in retried["oom_retries"][0]["error"]
    assert "oom_retries" not in unretried
    lines = [r.getMessage() for r in caplog.records if r.name == "bench.oom"]
    assert len(lines) == 1 and "eval.batch_size 8 -> 4" in lines[0] and "batch 0" in lines[0]


def test_the_attacks_max_batch_is_halved_first_and_restored_after_the_cell():
    attack = attacks.build("pgd_eot", eps=0.1, steps=2, eot=2, max_batch=8)
    defence = noisy_defence(limit=4)  # batch 4 x 2 EOT copies = 8 rows a pass: over the limit
    retried = evaluate(defence, attack, batch_size=4, draws=1)
    assert attack.max_batch == 8  # the attack object is left as given
    assert [(r["halved"], r["from"], r["to"]) for r in retried["oom_retries"]] == [("attack.max_batch", 8, 4)]
    unretried = evaluate(noisy_defence(), attacks.build("pgd_eot", eps=0.1, steps=2, eot=2, max_batch=4),
                         batch_size=4, draws=1)
    assert retried["per_example"] == unretried["per_example"]


@dataclass
class ChunkedParams:
    max_batch: int = 6


class Chunked(nn.Module):
    params = ChunkedParams()


def test_sizes_are_halved_in_turn_down_to_the_floor_and_then_refused():
    attack = attacks.build("pgd_eot", eps=0.1, steps=1, max_batch=None)
    defence = Chunked()
    sizes = oom.ChunkSizes(defence, attack, eval_batch=3, device=CPU)  # on a CPU None means the batch: 3
    with sizes.restored():
        halvings = [sizes.halve() for _ in range(6)]
        assert defence.params.max_batch == 1 and attack.max_batch == 1 and sizes.eval_batch == 1
    assert halvings == [("attack.max_batch", 3, 1), ("defence.max_batch", 6, 3), ("eval.batch_size", 3, 1),
                        ("defence.max_batch", 3, 1), None, None]
    assert defence.params.max_batch == 6 and attack.max_batch is None


def test_a_batch_that_does_not_fit_at_the_floor_raises_with_every_retry():
    defence = noisy_defence(limit=0)
    with pytest.raises(oom.OutOfMemoryAtFloor, match="every chunk size at the floor") as raised:
        evaluate(defence, attacks.build("pgd", eps=0.1, steps=1), batch_size=4)
    assert [(r["from"], r["to"]) for r in raised.value.retries] == [(4, 2), (2, 1)]


def test_a_resumed_cell_keeps_the_pieces_of_a_retried_batch():
    images, labels = data()
    attack, done, calls = attacks.build("pgd", eps=0.1, steps=2), {}, []

    def stop_after_first() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the job is killed once batch 0 is saved

    common = dict(batch_size=8, seed=0, settings_key="k", label="cell")
    with pytest.raises(KeyboardInterrupt):
        attack_batches(noisy_defence(limit=4), attack, images, labels, 2, CPU, done=done, after_batch=stop_after_first,
                       **common)
    assert len(done["0"]["pieces"]) == 2 and "oom_retries" in done["0"]["pieces"][0]
    resumed = attack_batches(noisy_defence(), attack, images, labels, 2, CPU, done=done, **common)
    fields = result_fields(resumed, list(range(24)), labels, True, 2, "single")
    reference = evaluate(noisy_defence(limit=4), attack, batch_size=8)
    assert fields["per_example"]["robust_draws"][:8] == reference["per_example"]["robust_draws"][:8]
    assert len(fields["oom_retries"]) == 1


def test_the_runner_records_retries_in_a_done_record_and_the_floor_as_a_failed_cell(tmp_path, tiny_grid,
                                                                                     monkeypatch):
    real = bench.evaluate._batch_result
    limit = {"examples": 0}

    def limited(defence, attack, x, y, draws, seed):
        if x.shape[0] > limit["examples"]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(defence, attack, x, y, draws, seed)

    def small(grid):
        grid["blocks"][0].update(defences=["standard"], attacks=["pgd"])
        grid["defences"]["standard"]["epochs"] = 1

    monkeypatch.setattr(bench.evaluate, "_batch_result", limited)
    assert run(compose(tiny_grid(small) + ["report=false"]))["failed"] == 1
    cells = tmp_path / "results" / "tiny_test" / "cells"
    (failed,) = load_records(cells)
    assert failed["status"] == "failed" and "robust_acc" not in failed and validate_record(failed) == []
    assert "OutOfMemoryAtFloor" in failed["error"]
    assert [(r["from"], r["to"]) for r in failed["oom_retries"]] == [(12, 6), (6, 3), (3, 1)]

    limit["examples"] = 6
    assert run(compose(tiny_grid(small) + ["report=false"]))["done"] == 1
    (done,) = load_records(cells)
    assert done["status"] == "done" and validate_record(done) == [] and done["n_examples"] == 24
    assert [(r["batch"], r["from"], r["to"]) for r in done["oom_retries"]] == [(0, 12, 6)]
