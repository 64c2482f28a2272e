"""Out of GPU memory in CARSO's purifier training: the step is retried with the micro-batch halved from the same
RNG states and BatchNorm statistics, so the purifier ends exactly as in an unretried run with the smaller
micro-batch; the retries are in the stage's summary, and the floor raises. Simulated on the CPU with a purifier
whose forward raises torch.OutOfMemoryError above a number of examples."""

from __future__ import annotations

import pytest
import torch

import defences
from bench.data import load_dataset
from bench.zoo import SmallCNN
from defences.base import FitContext, Task
from defences.memory import OutOfMemoryAtFloor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASK = Task(dataset="digits", channels=1, height=32, width=32, num_classes=10, mean=(0.3,), std=(0.4,),
            norm="Linf", eps=0.15)


def fit(tmp_path, name: str, limit: int | None = None, **params):
    torch.manual_seed(0)
    classifier = SmallCNN(1, 10, 32, channels=(4, 8), hidden=16, mean=0.3, std=0.4).eval()
    carso = defences.build("carso", classifier=classifier, task=TASK, fcrepr=32, fjoint=8,
                           decoder_channels=[16, 16, 8, 8, 4], samples=2, check_examples=4, batch_size=16,
                           epochs=1, pgd_steps=1, warmup_epochs=0, kl_start_epoch=0, kl_end_epoch=0, **params)
    if limit is not None:
        forward = carso.purifier.forward

        def limited(x, representation):
            if x.shape[0] > limit:
                raise torch.OutOfMemoryError(f"CUDA out of memory (simulated): {x.shape[0]} examples")
            return forward(x, representation)

        carso.purifier.forward = limited
    summary = carso.fit(load_dataset("digits", "train").subset(range(32)),
                        FitContext(device=torch.device("cpu"), seed=0, workdir=tmp_path / name))
    return carso, summary


def test_a_step_out_of_memory_is_retried_with_half_the_micro_batch_as_an_unretried_run(tmp_path):
    retried, summary = fit(tmp_path, "retried", limit=8)
    unretried, reference = fit(tmp_path, "unretried", micro_batch=8)
    for key, value in unretried.purifier.state_dict().items():
        assert torch.equal(retried.purifier.state_dict()[key], value), key  # same shapes, same kernels
    assert summary["history"][0]["loss"] == reference["history"][0]["loss"]
    assert [(r["epoch"], r["batch"], r["halved"], r["from"], r["to"]) for r in summary["oom_retries"]] == [
        (0, 0, "micro_batch", 16, 8)]
    assert summary["history"][0]["oom_retries"] == summary["oom_retries"] and "oom_retries" not in reference


def test_a_step_that_does_not_fit_at_the_floor_fails_the_stage(tmp_path):
    with pytest.raises(OutOfMemoryAtFloor, match="micro_batch at its floor") as raised:
        fit(tmp_path, "floor", limit=1)
    assert [(r["from"], r["to"]) for r in raised.value.retries] == [(16, 8), (8, 4), (4, 2)]


class LimitedMLP(torch.nn.Module):
    """A classifier with BatchNorm whose passes of more than `limit` examples run out of (simulated) memory."""

    def __init__(self, limit: int | None):
        super().__init__()
        torch.manual_seed(5)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16),
                                       torch.nn.ReLU(), torch.nn.Linear(16, 10))
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.limit is not None and x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated): {x.shape[0]} examples")
        return self.net(x)


def adversarial_epoch(tmp_path, limit: int | None, micro_batch: int):
    from attacks.gradient import PGD
    from bench.benchmarks.toys import digits8
    from defences.memory import ShrinkingSize
    from defences.training import TrainingSettings, make_optimiser, train_epoch

    images, labels = digits8("train")
    model, settings = LimitedMLP(limit), TrainingSettings(epochs=1, batch_size=16, lr=0.05, augment="none")
    optimiser = make_optimiser(model, settings)
    attack = PGD(eps=0.1, steps=2)
    micro = ShrinkingSize("micro_batch", micro_batch, floor=2)
    record = train_epoch(model, optimiser, images[:64], labels[:64], settings,
                         FitContext(device=torch.device("cpu"), seed=0, workdir=tmp_path), 0,
                         lambda m, x, y, epoch: attack(m, x, y), micro)
    return model, record


def test_an_adversarial_training_step_out_of_memory_is_retried_in_micro_batches_as_an_unretried_run(tmp_path):
    retried, record = adversarial_epoch(tmp_path, limit=8, micro_batch=16)
    unretried, reference = adversarial_epoch(tmp_path, limit=None, micro_batch=8)
    for key, value in unretried.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(retried.state_dict()[key], value), key
    assert record["loss"] == reference["loss"] and record["batch_accuracy"] == reference["batch_accuracy"]
    assert [(r["epoch"], r["step"], r["from"], r["to"]) for r in record["oom_retries"]] == [(0, 0, 16, 8)]


def test_a_snapshot_puts_back_the_rngs_and_batchnorm_statistics_a_failed_try_advanced():
    from defences.memory import Snapshot

    model, generator = LimitedMLP(None).train(), torch.Generator().manual_seed(6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = Snapshot.take([model], [generator])
    first = (torch.rand(3), torch.rand(3, generator=generator))
    model(torch.rand(4, 64))  # a training-mode pass: running statistics and the batch count move
    assert not torch.equal(model.state_dict()["net.2.running_mean"], before["net.2.running_mean"])
    snapshot.restore()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    again = (torch.rand(3), torch.rand(3, generator=generator))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def atop_epoch(tmp_path, name: str, limit: int | None, micro_batch: int):
    from defences.atop.training import Phase, train_epoch, trainable_state
    from defences.memory import ShrinkingSize

    torch.manual_seed(0)
    classifier = SmallCNN(1, 10, 32, channels=(4, 8), hidden=16, mean=0.3, std=0.4).eval()
    atop = defences.build("atop", classifier=classifier, task=TASK, generator_width=4, generator_stages=1,
                          discriminator_width=4, pretrain_batch_size=8, pretrain_epochs=1, finetune=False)
    if limit is not None:  # the purifier's loss against the discriminator (after its step) runs out of memory
        forward = atop.discriminator.forward

        def limited(x):
            if x.requires_grad and x.shape[0] > limit:
                raise torch.OutOfMemoryError(f"CUDA out of memory (simulated): {x.shape[0]} examples")
            return forward(x)

        atop.discriminator.forward = limited
    settings = Phase.of(atop.params, "pretrain")
    state = trainable_state(atop, settings.lr)
    train = load_dataset("digits", "train").subset(range(16))
    ctx = FitContext(device=torch.device("cpu"), seed=0, workdir=tmp_path / name)
    record = train_epoch(atop, train.float_images(), train.labels, ctx, 0, settings, state["optimiser"],
                         state["d_optimiser"], ShrinkingSize("micro_batch", micro_batch))
    return atop, record


def test_an_atop_step_out_of_memory_after_the_discriminator_step_is_retried_as_an_unretried_run(tmp_path):
    retried, record = atop_epoch(tmp_path, "retried", limit=4, micro_batch=8)
    unretried, reference = atop_epoch(tmp_path, "unretried", limit=None, micro_batch=4)
    for part in ("purifier", "discriminator"):  # the failed try's discriminator step was undone
        for key, value in getattr(unretried, part).state_dict().items():
            assert torch.equal(getattr(retried, part).state_dict()[key], value), f"{part}.{key}"
    assert {k: v for k, v in record.items() if k != "oom_retries"} == reference
    assert [(r["batch"], r["from"], r["to"]) for r in record["oom_retries"]] == [(0, 8, 4)]
