"""Deep checks of a cell record's content, run on every read (bench.records.validate_record) after the schema's
type checks: what a record says must be possible and agree with itself.

A `done` record: counts (n_examples, draws, forward/backward examples) are non-negative integers; every accuracy
lies in [0, 1] and every interval is [low, high] inside [0, 1] holding its accuracy; the per-example lists hold
n entries (indices distinct, draw matrices of n rows of `draws` 0/1 entries, perturbations inside the eps-ball);
robust <= clean per example under the record's decision rule, and the accuracies, intervals and per-example
correctness are what the draw matrices give (attacks.protocol.record_accuracies). A `failed` record carries its
error and no result. Out-of-memory retries (bench.oom) are well formed in either. Each problem says what is wrong.
"""

from __future__ import annotations

import math
import re
from typing import Any

ACCURACY = re.compile(r"^(clean|robust)_acc(_[a-z]+)?$")
RESULT_FIELDS = ("clean_acc", "robust_acc", "clean_ci", "robust_ci", "clean_correct", "robust_correct",
                 "per_example")
TOLERANCE = 1e-6  # accuracies are float32 means written as JSON doubles
SHOWN = 3  # offending entries named per problem


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def deep_problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with a schema-valid record's content (empty when nothing is)."""
    problems = _retry_problems(record.get("oom_retries"))
    if record["status"] == "failed":
        if not record["error"].strip():
            problems.append("a failed record with an empty error")
        return problems + [f"a failed record carries the result field {name}" for name in RESULT_FIELDS
                           if name in record]
    if "error" in record:
        problems.append("a done record carries an error")
    problems += _count_problems(record) + _bound_problems(record)
    shape = _per_example_problems(record)
    return problems + shape + ([] if shape or problems else _decision_problems(record))


def _count_problems(record: dict[str, Any]) -> list[str]:
    problems = [f"{name}={record[name]!r} is not a non-negative integer" for name in ("n_examples", "draws")
                if name in record and not is_count(record[name])]
    if record.get("draws") == 0:
        problems.append("draws=0: a result needs at least one draw")
    counts = record.get("counts", {})
    if not isinstance(counts, dict):
        return problems + [f"counts is a {type(counts).__name__}, not an object"]
    problems += [f"counts.{name}={value!r} is not a non-negative integer" for name, value in counts.items()
                 if not is_count(value)]
    return problems + [f"{name}={record[name]!r} is not a non-negative number of seconds"
                       for name in ("wall_seconds", "attack_seconds")
                       if name in record and not (is_number(record[name]) and record[name] >= 0)]


def _bound_problems(record: dict[str, Any]) -> list[str]:
    problems = [f"{name}={value!r} is not in [0, 1]" for name, value in record.items()
                if ACCURACY.match(name) and not (is_number(value) and 0 <= value <= 1)]
    for name in [name for name in record if name.endswith("_ci")]:
        interval = record[name]
        if not (isinstance(interval, list) and len(interval) == 2 and all(is_number(v) for v in interval)):
            problems.append(f"{name}={interval!r} is not an interval [low, high]")
        elif not 0 <= interval[0] <= interval[1] <= 1:
            problems.append(f"{name}={interval} is not [low, high] with 0 <= low <= high <= 1")
        elif is_number(accuracy := record.get(name[:-3] + "_acc")) and \
                not interval[0] - TOLERANCE <= accuracy <= interval[1] + TOLERANCE:
            problems.append(f"{name}={interval} does not hold {name[:-3]}_acc={accuracy}")
    return problems


def _entries_problem(name: str, values: Any, n: int, valid: Any, what: str) -> list[str]:
    """[] when `values` is a list of n entries each passing `valid`, else one problem naming the first few bad."""
    if not isinstance(values, list) or len(values) != n:
        size = len(values) if isinstance(values, list) else type(values).__name__
        return [f"{name} has {size} entries, not n_examples={n}"]
    bad = [i for i, value in enumerate(values) if not valid(value)]
    if bad:
        shown = ", ".join(f"[{i}]={values[i]!r}" for i in bad[:SHOWN])
        return [f"{name} has {len(bad)} entries that are not {what}: {shown}"]
    return []


def _per_example_problems(record: dict[str, Any]) -> list[str]:
    n, per_example = record["n_examples"], record["per_example"]
    if not is_count(n):
        return []  # said by _count_problems
    problems = _entries_problem("per_example.index", per_example.get("index"), n, is_count, "non-negative integers")
    if not problems and len(set(per_example["index"])) != n:
        problems.append("per_example.index repeats an example")
    if "label" in per_example:
        problems += _entries_problem("per_example.label", per_example["label"], n, is_count, "class indices")
    draws = record.get("draws")
    for name in ("clean_draws", "robust_draws"):
        if name in per_example:
            rows = per_example[name]
            width = draws if is_count(draws) else len(rows[0]) if rows and isinstance(rows[0], list) else 0
            problems += _entries_problem(f"per_example.{name}", per_example[name], n,
                                         lambda row, w=width: _is_draw_row(row, w), f"rows of {width} 0/1 draws")
    if "perturbation" in per_example:
        eps = record.get("eps")
        budget = f"sizes within eps={eps}" if is_number(eps) else "non-negative sizes"
        problems += _entries_problem("per_example.perturbation", per_example["perturbation"], n,
                                     lambda size: _is_size(size, eps), budget)
    for name in ("clean_correct", "robust_correct"):
        if name in record:
            problems += _entries_problem(name, record[name], n, lambda v: is_number(v) and 0 <= v <= 1,
                                         "correctness in [0, 1]")
    return problems


def _is_draw_row(row: Any, width: int) -> bool:
    return isinstance(row, list) and len(row) == width and all(v in (0, 1) and not isinstance(v, float)
                                                               for v in row)


def _is_size(size: Any, eps: Any) -> bool:
    from attacks.base import within_budget

    return is_number(size) and size >= 0 and (not is_number(eps) or within_budget(size, eps))


def _decision_problems(record: dict[str, Any]) -> list[str]:
    """robust <= clean per example under the decision rule, and the accuracy fields are the draws' (when the
    record has its draw matrices and its rule)."""
    clean, robust = record.get("clean_correct"), record.get("robust_correct")
    problems = []
    if isinstance(clean, list) and isinstance(robust, list):
        above = [i for i, (c, r) in enumerate(zip(clean, robust, strict=True)) if r > c + TOLERANCE]
        if above:
            shown = ", ".join(f"[{i}] robust {robust[i]} > clean {clean[i]}" for i in above[:SHOWN])
            problems.append(f"robust_correct exceeds clean_correct on {len(above)} examples under decision "
                            f"{record.get('decision')!r}: {shown}")
    per_example = record["per_example"]
    if problems or "decision" not in record or not {"clean_draws", "robust_draws"} <= set(per_example):
        return problems
    return _recomputed_problems(record, per_example["clean_draws"], per_example["robust_draws"])


def _recomputed_problems(record: dict[str, Any], clean_draws: list, robust_draws: list) -> list[str]:
    import torch

    from attacks.protocol import RULES, record_accuracies

    decision, n = record["decision"], record["n_examples"]
    if decision not in RULES:
        return [f"decision {decision!r} is not one of {', '.join(RULES)}"]
    if n == 0:
        return []  # no example: nothing to recompute
    width = len(clean_draws[0])
    expected = record_accuracies(torch.tensor(clean_draws, dtype=torch.int64).reshape(n, width),
                                 torch.tensor(robust_draws, dtype=torch.int64).reshape(n, width), decision)
    problems = []
    for name, value in expected.items():
        if name in record and not _close(record[name], value):
            shown = value if not isinstance(value, list) else f"{sum(value) / max(1, len(value)):.4g} on average"
            problems.append(f"{name} is not what per_example's draws give under decision {decision!r} ({shown})")
    return problems


def _close(stored: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return isinstance(stored, list) and len(stored) == len(expected) and \
            all(_close(a, b) for a, b in zip(stored, expected, strict=True))
    return is_number(stored) and abs(stored - expected) <= TOLERANCE


def _retry_problems(retries: Any) -> list[str]:
    """oom_retries, when present: a list of halvings, each at a batch, of a known size, to a smaller one >= 1."""
    from bench.oom import FLOOR, SIZES

    if retries is None:
        return []
    if not isinstance(retries, list):
        return [f"oom_retries is a {type(retries).__name__}, not a list"]
    problems = []
    for i, retry in enumerate(retries):
        if not isinstance(retry, dict) or not all(is_count(retry.get(k)) for k in ("batch", "offset", "examples")):
            problems.append(f"oom_retries[{i}] does not say its batch, offset and examples")
        elif retry.get("halved") not in SIZES:
            problems.append(f"oom_retries[{i}] halved {retry.get('halved')!r}, not one of {', '.join(SIZES)}")
        elif not (is_count(retry.get("from")) and is_count(retry.get("to")) and FLOOR <= retry["to"] < retry["from"]):
            problems.append(f"oom_retries[{i}] goes from {retry.get('from')!r} to {retry.get('to')!r}, not to a "
                            f"smaller size >= {FLOOR}")
    return problems
