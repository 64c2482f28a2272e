"""Results that stay true: keys that change with the code and input files behind them (and only those), stale
records named as such, records validated on every read with invalid files quarantined, and work locks."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import socket
import time
from pathlib import Path

import pytest

from bench import records
from bench.config import compose
from bench.grid import expand
from bench.layout import record_path
from bench.locks import WorkLock
from bench.plan import Plan
from bench.run import main as run_main
from bench.run import plan_state
from defences.atomic import write_json_atomic


def with_eot(grid):
    grid["attacks"]["pgd_eot"] = {"name": "pgd_eot", "steps": 2, "eot": 1}
    grid["blocks"][0]["attacks"].append("pgd_eot")


def keys(plan: Plan) -> dict[str, str]:
    found = {f"stage {s.defence_key}": s.key for s in plan.stages.values()}
    found.update({f"cell {c.defence_key}/{c.attack_key}": c.key for c in plan.cells})
    return found


def changed_keys(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert set(before) == set(after)
    return {name for name in before if before[name] != after[name]}


def test_attack_code_change_invalidates_exactly_its_cells(tiny_grid, edited_source):
    before = keys(expand(compose(tiny_grid(with_eot))))
    edited_source("attacks/eot.py")
    after = keys(expand(compose(tiny_grid(with_eot))))
    assert changed_keys(before, after) == {"cell standard/pgd_eot", "cell at/pgd_eot"}
    # PGD's own module: every attack built on it, and the AT stage that trains with PGD (and so its cells)
    edited_source("attacks/gradient.py")
    again = keys(expand(compose(tiny_grid(with_eot))))
    assert changed_keys(after, again) == set(again) - {"stage standard"}


def test_defence_and_protocol_changes_invalidate_what_they_compute(tiny_grid, edited_source):
    before = keys(expand(compose(tiny_grid())))
    edited_source("defences/adversarial_training.py")
    after = keys(expand(compose(tiny_grid())))
    assert changed_keys(before, after) == {"stage at", "cell at/fgsm", "cell at/pgd"}
    edited_source("bench/evaluate.py")  # the evaluation protocol: every cell, no stage
    again = keys(expand(compose(tiny_grid())))
    assert changed_keys(after, again) == {name for name in again if name.startswith("cell")}


def test_report_and_runner_only_changes_invalidate_nothing(tiny_grid, edited_source):
    before = keys(expand(compose(tiny_grid(with_eot))))
    edited_source("bench/reporting/tables.py", "bench/report.py", "bench/status.py", "bench/run.py",
                  "bench/records.py", "attacks/diagnostics.py", "bench/executors/local.py")
    assert keys(expand(compose(tiny_grid(with_eot)))) == before


def test_changed_weight_file_invalidates_its_stage(tiny_grid, tmp_path):
    from safetensors.torch import save_file

    from bench.zoo import load_classifier

    model, _ = load_classifier("train:small_cnn", in_channels=1, num_classes=10, image_size=32)
    weights = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    args = tiny_grid() + [f"scenarios.digits.classifier=file:{weights}", "scenarios.digits.classifier_arch=small_cnn"]
    before = keys(expand(compose(args)))
    assert keys(expand(compose(args))) == before  # same file: same keys (and from the hash cache)
    state = {k: v.contiguous() + 1 for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    after = keys(expand(compose(args)))
    assert changed_keys(before, after) == set(after)  # every stage, and so every cell
    plan = expand(compose(args))
    stage = next(iter(plan.stages.values()))
    assert stage.fingerprint["stage_inputs"][f"classifier:{weights}"] == \
        __import__("hashlib").sha256(weights.read_bytes()).hexdigest()


def valid_record(cell, **changes) -> dict:
    n = cell.n_examples
    record = {"schema_version": records.SCHEMA_VERSION, "status": "done", "key": cell.key,
              "settings_key": cell.settings_key, "fingerprint": cell.fingerprint, "grid": cell.grid,
              "scenario": cell.scenario, "defence": cell.defence_key, "defence_name": cell.defence_name,
              "attack": cell.attack_key, "attack_name": cell.attack_name, "attack_settings": cell.attack_params,
              "seed": cell.seed, "n_examples": n, "clean_acc": 1.0, "clean_ci": [0.9, 1.0], "robust_acc": 0.5,
              "robust_ci": [0.3, 0.7], "per_example": {"index": list(range(n))}, "wall_seconds": 1.0,
              "git_commit": "abc", "git_dirty": False, "packages": {}}
    record.update(changes)
    return record


def test_dry_run_marks_stale_cells_and_says_which_file_changed(tiny_grid, capsys):
    plan = expand(compose(tiny_grid()))
    cell = next(c for c in plan.cells if c.attack_key == "pgd" and c.defence_key == "standard")
    old_code = {**cell.fingerprint["code"], "attacks/gradient.py": "0" * 16}
    old = valid_record(cell, key="0123456789abcdef", fingerprint={**cell.fingerprint, "code": old_code},
                       git_commit="old", git_dirty=True)
    old_path = record_path(plan, cell).with_name(cell.record_name.replace(cell.key, "0123456789abcdef"))
    write_json_atomic(old_path, old)
    assert run_main(tiny_grid() + ["dry_run=true"]) == 0
    out = capsys.readouterr().out
    line = next(i for i, text in enumerate(out.splitlines()) if "digits/standard/pgd" in text)
    assert "[stale]" in out.splitlines()[line]
    assert "attacks/gradient.py" in out.splitlines()[line + 1]
    assert old_path.exists()  # a dry run changes nothing
    summary = records.provenance_summary(records.load_records(old_path.parent), plan)
    assert summary["stale"] == [{"record": "digits/standard/pgd/seed0", "key": "0123456789abcdef",
                                 "current_key": cell.key, "changed": ["attacks/gradient.py"]}]
    assert summary["dirty"] == ["digits/standard/pgd/seed0"]


def test_provenance_summary_counts_commits_and_dirty_trees():
    rows = [{"scenario": "s", "defence": "d", "attack": a, "seed": 0, "git_commit": c, "git_dirty": d}
            for a, c, d in [("x", "aaa", False), ("y", "aaa", False), ("z", "bbb-dirty", None), ("w", None, None)]]
    summary = records.provenance_summary(rows)
    assert summary == {"commits": [{"commit": "aaa", "dirty": False, "records": 2},
                                   {"commit": "bbb", "dirty": True, "records": 1},
                                   {"commit": None, "dirty": None, "records": 1}],
                       "mixed_commits": True, "dirty": ["s/d/z/seed0"], "unknown": ["s/d/w/seed0"], "stale": []}


def test_invalid_files_are_quarantined_never_done(tiny_grid, caplog):
    plan = expand(compose(tiny_grid()))
    cells = plan.cells
    paths = [record_path(plan, c) for c in cells]
    paths[0].parent.mkdir(parents=True)
    paths[0].write_text('{"status": "done"}')                       # forged
    paths[1].write_text(json.dumps(valid_record(cells[1]))[:-40])   # truncated
    paths[2].write_text(json.dumps(valid_record(cells[3])))         # another cell's record under this name
    paths[3].write_text(json.dumps(valid_record(cells[3], robust_acc=1.5)))  # impossible value
    stray = paths[0].parent / "notes.json"
    stray.write_text("[1, 2, 3]")
    with caplog.at_level(logging.WARNING, logger="bench.records"):
        _, cell_state = plan_state(plan)
        assert records.load_records(paths[0].parent) == []
    assert set(cell_state.values()) == {"pending"}
    quarantined = sorted(p.name for p in (paths[0].parent / "quarantine").iterdir())
    assert len(quarantined) == 5 and not any(p.exists() for p in [*paths, stray])
    for path in [*paths, stray]:
        assert path.name in caplog.text
    valid = valid_record(cells[0])
    write_json_atomic(paths[0], valid)
    assert records.record_status(paths[0], cells[0].key) == "done"
    assert records.validate_record(valid) == []


@pytest.mark.parametrize(("record", "problem"), [
    ({"schema_version": 9, "status": "done"}, "schema_version"),
    ({"schema_version": 2, "status": "running"}, "status"),
    ({"schema_version": 2, "status": "failed", "key": "k"}, "missing grid"),
    ([1, 2], "not a JSON object"),
])
def test_validation_names_the_problem(record, problem):
    assert any(problem in text for text in records.validate_record(record))


# --- locks -------------------------------------------------------------------------------------------

def _hold_and_log(path: str, log: str, rounds: int) -> None:
    for _ in range(rounds):
        lock = WorkLock(Path(path))
        lock.acquire(poll_s=0.01)
        with open(log, "a") as handle:
            handle.write(f"in {os.getpid()}\n")
            handle.flush()
            time.sleep(0.02)
            handle.write(f"out {os.getpid()}\n")
        lock.release()


def test_lock_excludes_other_processes(tmp_path):
    log = tmp_path / "log"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hold_and_log, args=(str(tmp_path / "x.lock"), str(log), 5)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    lines = log.read_text().split()
    pairs = list(zip(lines[0::4], lines[1::4], lines[2::4], lines[3::4], strict=True))
    assert len(pairs) == 15
    for enter, who, leave, same in pairs:  # every "in" is followed by the same process's "out"
        assert (enter, leave, who) == ("in", "out", same)
    assert not (tmp_path / "x.lock").exists()


def test_dead_owner_lock_is_taken_over_live_one_is_not(tmp_path):
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    process.start()
    process.join()
    path = tmp_path / "cell.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": process.pid, "heartbeat": time.time()}))
    lock = WorkLock(path)
    assert lock.try_acquire()
    lock.release()
    # another host's lock: alive while its heartbeat is fresh, dead once it is older than the timeout
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    other = WorkLock(path, stale_after_s=60)
    assert not other.try_acquire() and not other.try_acquire()
    old = time.time() - 120
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": old}))
    os.utime(path, (old, old))
    assert other.try_acquire()
    other.release()
    assert not path.exists()


# --- bench.status ------------------------------------------------------------------------------------

def test_status_reads_the_folders_given_after_a_move(tiny_grid, tmp_path, monkeypatch, capsys):
    from bench.planfile import write_plan
    from bench.status import main as status_main

    args = tiny_grid()
    plan = expand(compose(args))
    write_plan(plan, tmp_path / "results" / "tiny_test")
    cell = plan.cells[0]
    write_json_atomic(record_path(plan, cell), valid_record(cell))
    (tmp_path / "results").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    grid_file = args[0].partition("=")[2]
    assert status_main([f"grid={grid_file}", "results_dir=moved"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{re.escape(cell.label)}\s+done", out), out
    assert "cells: 1 done, 3 pending" in out
    # without a plan (a copied or committed results folder) the grid is planned from its config
    for path in (tmp_path / "moved" / "tiny_test" / ".plan").iterdir():
        path.unlink()
    assert status_main([f"grid={grid_file}", "results_dir=moved", f"artifacts_dir={tmp_path / 'artifacts'}"]) == 0
    assert "cells: 1 done, 3 pending" in capsys.readouterr().out


def test_provenance_summary_of_a_plan_read_back_from_plan_json(tiny_grid, tmp_path):
    from bench.planfile import read_plan, write_plan

    plan = expand(compose(tiny_grid()))
    cell = plan.cells[0]
    old = valid_record(cell, key="feedfeedfeedfeed", fingerprint={**cell.fingerprint, "stage_inputs": {"data:x": "1"}})
    read = read_plan(write_plan(plan, tmp_path))
    assert records.provenance_summary([old], read)["stale"] == records.provenance_summary([old], plan)["stale"] \
        == [{"record": cell.label, "key": "feedfeedfeedfeed", "current_key": cell.key, "changed": ["data:x"]}]


def test_changed_code_that_keeps_behaviour_reproduces_every_number(tiny_grid, edited_source, tmp_path):
    """Seeds derive from the settings key, not the code fingerprint: after a (pretended) edit of the defence's and
    the attack's source every key changes, the stage is retrained and the cell recomputed, and every number is
    the same as before."""
    def small(grid):
        grid.update(n_examples=20, defences={"standard": {"name": "standard", "epochs": 1}},
                    attacks={"pgd": {"name": "pgd", "steps": 2}})
        grid["blocks"][0].update(defences=["standard"], attacks=["pgd"])

    def run_into(folder: str) -> dict:
        args = [a for a in tiny_grid(small) if not a.startswith(("results_dir=", "artifacts_dir="))]
        assert run_main([*args, f"results_dir={tmp_path / folder}", f"artifacts_dir={tmp_path / folder / 'a'}"]) == 0
        (path,) = (tmp_path / folder / "tiny_test" / "cells").glob("*.json")
        return json.loads(path.read_text())

    before = run_into("before")
    edited_source("attacks/gradient.py", "defences/standard.py")
    after = run_into("after")
    assert after["key"] != before["key"] and after["settings_key"] == before["settings_key"]
    assert after["fingerprint"] != before["fingerprint"]
    for field in ("clean_acc", "robust_acc", "robust_ci", "per_example", "counts"):
        assert after[field] == before[field], field
