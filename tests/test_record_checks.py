"""Deep validation of records on every read: each kind of impossible or inconsistent content is quarantined with a
message that says what is wrong, and the committed demo records all pass."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.records import read_record, validate_record

DEMO = sorted((Path(__file__).resolve().parent.parent / "results" / "demo" / "cells").glob("*.json"))


def test_every_committed_demo_record_passes():
    assert len(DEMO) >= 20
    for path in DEMO:
        assert validate_record(json.loads(path.read_text())) == [], path.name


def _stochastic_demo() -> tuple[Path, dict]:
    """A demo record with K > 1 draws per example and examples both clean-correct and not."""
    for path in DEMO:
        record = json.loads(path.read_text())
        if record["draws"] > 1 and 0 < record["robust_acc"] < record["clean_acc"] < 1:
            return path, record
    raise AssertionError("no stochastic demo record with 0 < robust < clean < 1")


def _set(field: str, value) -> Callable[[dict], None]:
    def change(record: dict) -> None:
        record[field] = value
    return change


def _first_row(name: str, row: Callable[[list], list]) -> Callable[[dict], None]:
    def change(record: dict) -> None:
        record["per_example"][name][0] = row(record["per_example"][name][0])
    return change


def _robust_above_clean(record: dict) -> None:
    record["clean_correct"][0], record["robust_correct"][0] = 0.0, 1.0


def _flip_robust_draw(record: dict) -> None:
    i = record["robust_correct"].index(max(record["robust_correct"]))
    record["per_example"]["robust_draws"][i] = [0] * record["draws"]


def _repeat_index(record: dict) -> None:
    record["per_example"]["index"][1] = record["per_example"]["index"][0]


def _failed(extra: dict) -> Callable[[dict], None]:
    def change(record: dict) -> None:
        kept = {k: record[k] for k in ("schema_version", "key", "grid", "scenario", "defence", "attack", "seed")}
        record.clear()
        record.update(kept, status="failed", error="Traceback: something broke", **extra)
    return change


CORRUPTIONS = {
    "accuracy above 1": (_set("clean_acc", 1.2), "clean_acc=1.2 is not in [0, 1]"),
    "per-rule accuracy below 0": (_set("robust_acc_worst", -0.1), "robust_acc_worst=-0.1 is not in [0, 1]"),
    "interval reversed": (_set("robust_ci", [0.3, 0.1]), "robust_ci=[0.3, 0.1] is not [low, high]"),
    "interval above 1": (_set("clean_ci", [0.5, 1.5]), "clean_ci=[0.5, 1.5] is not [low, high]"),
    "interval of one number": (_set("clean_ci", [0.5]), "clean_ci=[0.5] is not an interval"),
    "interval missing its accuracy": (_set("robust_ci", [0.995, 1.0]), "does not hold robust_acc"),
    "a draw row missing": (lambda r: r["per_example"]["clean_draws"].pop(), "per_example.clean_draws has"),
    "a row with a draw too few": (_first_row("robust_draws", lambda row: row[:-1]), "rows of"),
    "a draw that is not 0/1": (_first_row("clean_draws", lambda row: [2, *row[1:]]), "0/1 draws: [0]=[2"),
    "a negative count": (lambda r: r["counts"].update(forward_examples=-1),
                         "counts.forward_examples=-1 is not a non-negative integer"),
    "a fractional count": (lambda r: r["counts"].update(backward_examples=1.5),
                           "counts.backward_examples=1.5 is not a non-negative integer"),
    "zero draws": (_set("draws", 0), "draws=0"),
    "draw rows that are not lists": (lambda r: r["per_example"].update(clean_draws=[1] * r["n_examples"]),
                                     "entries that are not rows of"),
    "robust above clean": (_robust_above_clean, "robust_correct exceeds clean_correct on 1 examples"),
    "accuracy not the draws'": (_flip_robust_draw, "is not what per_example's draws give"),
    "a repeated example": (_repeat_index, "per_example.index repeats an example"),
    "a perturbation outside the ball": (lambda r: r["per_example"]["perturbation"].__setitem__(0, 0.2),
                                        "not sizes within eps=0.15"),
    "a done record with an error": (_set("error", "boom"), "a done record carries an error"),
    "a failed record with a result": (_failed({"robust_acc": 0.5}),
                                      "a failed record carries the result field robust_acc"),
    "a failed record without its error": (lambda r: (_failed({})(r), r.update(error=" "))[0],
                                          "a failed record with an empty error"),
    "an out-of-memory retry that grows": (_set("oom_retries", [{"batch": 0, "offset": 0, "examples": 8,
                                                                 "halved": "eval.batch_size", "from": 4, "to": 8}]),
                                          "oom_retries[0] goes from 4 to 8"),
    "an unknown size halved": (_set("oom_retries", [{"batch": 0, "offset": 0, "examples": 8, "halved": "lr",
                                                      "from": 8, "to": 4}]), "oom_retries[0] halved 'lr'"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_kind_of_corruption_is_quarantined_with_what_was_wrong(kind, tmp_path, caplog):
    source, record = _stochastic_demo()
    corrupt, message = CORRUPTIONS[kind]
    record = copy.deepcopy(record)
    corrupt(record)
    path = tmp_path / "cells" / source.name
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    caplog.set_level(logging.WARNING, logger="bench.records")
    assert read_record(path) is None
    assert not path.exists() and len(list((tmp_path / "cells" / "quarantine").glob("*.json"))) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "bench.records"]
    assert len(warnings) == 1 and message in warnings[0], warnings


def test_the_uncorrupted_copy_reads_back():
    source, record = _stochastic_demo()
    assert validate_record(copy.deepcopy(record)) == []
    retried = {**record, "oom_retries": [{"batch": 1, "offset": 120, "examples": 120, "halved": "eval.batch_size",
                                          "from": 120, "to": 60, "error": "CUDA out of memory"}]}
    assert validate_record(retried) == []
