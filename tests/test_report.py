"""bench.report from a fixed set of records written here: tables compared to expected text, figures, worst case.

The fixture is one scenario with the CIFAR-10 / Cui2023Decoupled setting of CARSO Table 2, so the paper's
row (a) sits beside the measured numbers. Its six planned cells cover every state: done (deterministic and
stochastic), failed, partial and missing; plus one stray record from an older plan and a diagnostics file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attacks.protocol import summarise_draws
from attacks.stats import wilson_interval
from bench.report import render
from bench.reporting import figures, long_table, paper_tables
from bench.reporting.collect import collect
from bench.reporting.layouts import LAYOUTS, ReportConfigError, configured_layouts
from bench.reporting.paper_numbers import PaperNumbersError, load_paper_numbers, parse_paper_numbers
from bench.reporting.tables import to_latex, to_markdown
from bench.reporting.worst_case import combine

EPS = 8 / 255
SCENARIO = {"dataset": "cifar10", "dataset_options": {}, "norm": "Linf", "eps": EPS,
            "classifier": "robustbench:Cui2023Decoupled_WRN-28-10", "classifier_arch": None,
            "classifier_params": {}, "test_subset_seed": 0}
INDEX = [3, 8, 15, 16, 23, 42, 51, 60, 77, 99]
EVAL = {"batch_size": 5, "draws": 1, "stochastic_draws": 2, "decision": "single"}

AT_CLEAN = [[1], [1], [1], [1], [1], [1], [1], [1], [1], [0]]                        # 9/10
AT_AA = [[1], [1], [1], [1], [1], [1], [0], [0], [0], [0]]                           # 6/10
AT_PGD = [[1], [1], [1], [1], [0], [1], [1], [0], [0], [0]]                          # 6/10; AND with aa: 5/10
CARSO_CLEAN = [[1, 1]] * 7 + [[1, 0], [0, 1], [0, 0]]                                # single 0.8, majority 0.7
CARSO_RANDAA = [[1, 1], [1, 1], [1, 0], [0, 1]] + [[0, 0]] * 6                       # single 0.3, majority 0.2

# (key, defence key, defence name, attack key, attack name, extra attack settings, state)
CELLS = [
    ("k_at_aa", "at", "at", "aa", "aa", {}, "done"),
    ("k_at_pgd", "at", "at", "pgd", "pgd", {"steps": 20}, "done"),
    ("k_c_randaa", "carso", "carso", "randaa", "randaa", {}, "done"),
    ("k_c_eot", "carso", "carso", "pgd_eot", "pgd_eot", {"steps": 200, "eot": 20}, "failed"),
    ("k_c_randaa95", "carso", "carso", "randaa95", "randaa", {"eps": 0.95}, "partial"),
    ("k_at_aa95", "at", "at", "aa95", "aa", {"eps": 0.95}, "missing"),
]
DRAWS = {"k_at_aa": (AT_CLEAN, AT_AA), "k_at_pgd": (AT_CLEAN, AT_PGD), "k_c_randaa": (CARSO_CLEAN, CARSO_RANDAA)}


def _accuracies(draws: list[list[int]], prefix: str) -> dict:
    import torch

    summary = summarise_draws(torch.tensor(draws).T.bool())
    n = len(draws)
    out = {f"{prefix}_acc_{rule}": values.mean().item() for rule, values in summary.items()}
    out[f"{prefix}_acc"] = summary["single"].mean().item()
    out[f"{prefix}_ci"] = list(wilson_interval(summary["single"].sum().item(), n))
    out[f"{prefix}_correct"] = summary["single"].tolist()
    return out


def _settings(attack_name: str, extra: dict) -> dict:
    return {"name": attack_name, "eps": EPS, "norm": "Linf", "target": "end_to_end", **extra}


def _base_record(cell: tuple) -> dict:
    key, defence, defence_name, attack, attack_name, extra, _ = cell
    settings = _settings(attack_name, extra)
    return {"schema_version": 1, "key": key, "grid": "fixture", "block": "main", "scenario": "cifar10_toy",
            "defence": defence, "defence_name": defence_name, "stage": f"stage_{defence}", "attack": attack,
            "attack_name": attack_name, "attack_settings": settings, "attack_budget": "", "target": "end_to_end",
            "eps": settings["eps"], "norm": "Linf", "seed": 0, "n_examples": 10, "eval_settings": EVAL,
            "git_commit": "abc123", "packages": {"torch": "2.14.1"}, "host": "testhost", "slurm_job_id": None,
            "log": "/logs/job.out", "started_at": 1.7e9}


def write_grid_fixture(root: Path) -> Path:
    """results/fixture/ with a plan, records, a partial file, a stray record and a diagnostics file."""
    results = root / "fixture"
    cells_dir = results / "cells"
    cells_dir.mkdir(parents=True)
    stages = {f"stage_{name}": {"key": f"stage_{name}", "scenario": "cifar10_toy", "defence_key": name,
                                "defence_name": name, "params": params, "seed": 0, "base_stage": base,
                                "artifact_dir": f"artifacts/{name}", "identity": {"scenario": SCENARIO}}
              for name, params, base in (("at", {}, None), ("carso", {"n_samples": 8}, "stage_at"))}
    planned = []
    for cell in CELLS:
        key, defence, defence_name, attack, attack_name, extra, state = cell
        record_name = f"cifar10_toy.{defence}.{attack}.s0.{key}.json"
        planned.append({"key": key, "grid": "fixture", "block": "main", "scenario": "cifar10_toy",
                        "defence_key": defence, "defence_name": defence_name, "stage_key": f"stage_{defence}",
                        "attack_key": attack, "attack_name": attack_name,
                        "attack_params": _settings(attack_name, extra), "attack_budget": "", "seed": 0,
                        "n_examples": 10, "eval": EVAL, "record_name": record_name})
        if state == "done":
            clean, robust = DRAWS[key]
            record = {**_base_record(cell), "status": "done", "stochastic": defence == "carso",
                      "draws": len(clean[0]), "decision": "single", **_accuracies(clean, "clean"),
                      **_accuracies(robust, "robust"),
                      "per_example": {"index": INDEX, "label": list(range(10)), "clean_draws": clean,
                                      "robust_draws": robust, "perturbation": [EPS] * 10},
                      "counts": {"forward_examples": 400, "backward_examples": 200}, "attack_seconds": 3.0,
                      "wall_seconds": 4.0, "hardware": "cpu", "finished_at": 1.7e9 + 5}
            (cells_dir / record_name).write_text(json.dumps(record))
        elif state == "failed":
            record = {**_base_record(cell), "status": "failed", "wall_seconds": 1.5, "finished_at": 1.7e9 + 2,
                      "error": "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                               "RuntimeError: out of memory\n"}
            (cells_dir / record_name).write_text(json.dumps(record))
        elif state == "partial":
            (cells_dir / f"{record_name}.partial").write_text(json.dumps({"batches": {"0": {"clean": []}}}))
    first = json.loads((cells_dir / f"cifar10_toy.at.aa.s0.{CELLS[0][0]}.json").read_text())
    never_robust = [[0] * len(row) for row in first["per_example"]["robust_draws"]]
    stray = {**first, "key": "stale", **_accuracies(never_robust, "robust"),  # a valid record of an older plan
             "per_example": {**first["per_example"], "robust_draws": never_robust}}
    (cells_dir / "cifar10_toy.at.aa.s0.stale.json").write_text(json.dumps(stray))
    (cells_dir / "cifar10_toy.at.aa.s0.forged.json").write_text('{"status": "done"}')  # quarantined on read
    (results / ".plan").mkdir()
    (results / ".plan" / "plan.json").write_text(json.dumps(
        {"format": 2, "grid": "fixture", "options": {"grid": "fixture"}, "scenarios": {}, "stages": stages,
         "cells": planned}))
    (results / "diagnostics").mkdir()
    (results / "diagnostics" / "cifar10_toy.carso.randaa.s0.json").write_text(json.dumps({
        "scenario": "cifar10_toy", "defence": "carso", "attack": "randaa", "seed": 0, "n": 10, "eps": EPS,
        "norm": "Linf",
        "flags": {"zero_gradients": {"raised": False, "evidence": {"fraction_zero": 0.0}},
                  "eps_not_to_chance": {"raised": True, "evidence": {"acc_at_0.95": 0.3}}},
        "curves": {"eps": {"x": [0.0, EPS, 0.5, 0.95], "acc": [0.8, 0.3, 0.1, 0.05]},
                   "steps": {"x": [10, 20, 40], "acc": [0.4, 0.32, 0.3]},
                   "eot": {"x": [1, 5, 20], "acc": [0.5, 0.35, 0.3]}}}))
    return results


@pytest.fixture
def grid_dir(tmp_path: Path) -> Path:
    return write_grid_fixture(tmp_path)


CARSO_TABLE2 = """\
### CARSO Table 2 layout: the adversarially trained classifier alone (AT) and CARSO on it (C)

| setting | line | AT/Cl | C/Cl | AT/AA | C/randAA | C/PGD+EOT | AT/worst | C/worst |
|:---|:---|---:|---:|---:|---:|---:|---:|---:|
| cifar10_toy | measured | 0.900 [0.596, 0.982] n=10 | 0.800 [0.490, 0.943] n=10 | 0.600 [0.313, 0.832] n=10 | 0.300 [0.108, 0.603] n=10 | failed | 0.500 [0.237, 0.763] n=10 | 0.300 [0.108, 0.603] n=10 (1 of 2 attacks) |
| (a) CIFAR-10, Cui2023Decoupled WRN-28-10 | paper: CARSO (NeurIPS 2024), Table 2 | 0.9216 | 0.8686 | 0.6773 | 0.7613 | 0.7689 | – | – |
|  | measured − paper | -0.022 (in CI) | -0.069 (in CI) | -0.077 (in CI) | -0.461 (outside CI) | – | – | – |

- Paper: CARSO (NeurIPS 2024), Table 2 (n=10000): Clean and AutoAttack accuracy of the adversarially trained \
classifier alone (AT) and of CARSO (C) on it; C/randAA: AutoAttack for randomised defences, end to end; PGD+EOT in \
round brackets in the paper.
- Measured: accuracy [95% Wilson interval] n=examples; for stochastic defences the headline decision over K draws \
(see the cells table). Differences: measured - paper, and whether the paper's value lies in the measured interval.
- AT/Cl: clean accuracy of at
- C/Cl: clean accuracy of carso
- AT/AA: robust accuracy of at × aa
- C/randAA: robust accuracy of carso × randaa
- C/PGD+EOT: robust accuracy of carso × pgd_eot
- AT/worst: per-example worst case over every attack (at this threat model) of at
- C/worst: per-example worst case over every attack (at this threat model) of carso
- The papers' rows for other settings (dataset, architecture or threat model) are in the separate paper-reference \
table below, not beside these measured rows.
"""  # noqa: E501

CARSO_TABLE2_REFERENCE = """\
| (b) CIFAR-100, Cui2023Decoupled WRN-28-10 | CARSO (NeurIPS 2024), Table 2 | 0.7385 | 0.6806 | 0.3918 | 0.6665 | – |
| (c) TinyImageNet-200, Wang2023Better WRN-28-10 | CARSO (NeurIPS 2024), Table 2 | 0.6519 | 0.5632 | 0.3130 | 0.5356 | – |
"""  # noqa: E501

CARSO_TABLE3_ROWS = """\
| cifar10_toy | measured | partial (1/2 batches) | missing | partial (1/2 batches) |
| (a) CIFAR-10 | paper: CARSO (NeurIPS 2024), Table 3 | < 0.047 | – | – |
|  | measured − paper | – | – | – |
"""

CELLS_TABLE = """\
| scenario | defence | attack | target | threat | seed | n | draws | clean [95% CI] | robust [95% CI] | robust single / majority / worst-of-K | status | time (s) |
|:---|:---|:---|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|
| cifar10_toy | at | aa | end_to_end | Linf 8/255 | 0 | 10 | 1 | 0.900 [0.596, 0.982] | 0.600 [0.313, 0.832] | – | done | 4.0 |
| cifar10_toy | at | pgd | end_to_end | Linf 8/255 | 0 | 10 | 1 | 0.900 [0.596, 0.982] | 0.600 [0.313, 0.832] | – | done | 4.0 |
| cifar10_toy | at | aa95 | end_to_end | Linf 0.95 | 0 | 10 | – | – | – | – | missing | – |
| cifar10_toy | at | worst case | – | Linf 8/255 | 0 | 10 | – | – | 0.500 [0.237, 0.763] | – | over aa, pgd | – |
| cifar10_toy | carso | randaa | end_to_end | Linf 8/255 | 0 | 10 | 2 | 0.800 [0.490, 0.943] | 0.300 [0.108, 0.603] | 0.300 / 0.200 / 0.200 | done | 4.0 |
| cifar10_toy | carso | pgd_eot | end_to_end | Linf 8/255 | 0 | 10 | – | – | – | – | failed: RuntimeError: out of memory | 1.5 |
| cifar10_toy | carso | randaa95 | end_to_end | Linf 0.95 | 0 | 10 | – | – | – | – | partial (1/2 batches) | – |
| cifar10_toy | carso | worst case | – | Linf 8/255 | 0 | 10 | – | – | 0.300 [0.108, 0.603] | all draws: 0.200 | over randaa; not included (not done): pgd_eot (failed) | – |
"""  # noqa: E501


def test_wilson_intervals_in_the_expected_text_follow_the_formula():
    # the expected strings above were written from the closed form; check two of them independently
    z = 1.959963984540054
    for successes, n, text in ((9, 10, "[0.596, 0.982]"), (3, 10, "[0.108, 0.603]")):
        p = successes / n
        centre, half = (p + z * z / (2 * n)), z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5)
        denom = 1 + z * z / n
        assert f"[{(centre - half) / denom:.3f}, {(centre + half) / denom:.3f}]" == text


def test_carso_table2_layout_matches_expected_text(grid_dir):
    grid = collect(grid_dir, report_config={})
    built = paper_tables.build(LAYOUTS["carso_table2"], grid, load_paper_numbers())
    table, tidy = built.measured, built.tidy
    assert built.has_cells
    assert to_markdown(table) == CARSO_TABLE2
    # the paper rows of other settings: apart, in their own clearly labelled table, never between measured rows
    reference = to_markdown(built.reference)
    assert reference.startswith("### Paper reference (not comparable with this grid's rows): CARSO Table 2")
    assert CARSO_TABLE2_REFERENCE in reference and "(a) CIFAR-10" not in reference
    # every measured number carries its attack's budget as hover text
    assert table.tooltips[(0, 4)] == "aa (aa, end_to_end): eps=0.03137254901960784, norm=Linf, target=end_to_end"
    # the tidy CSV keeps the numbers: the measured-minus-paper difference of AT/AA is exact
    row = tidy[(tidy["column"] == "AT/AA") & (tidy["paper_row"] == "carso_table2.a")].iloc[0]
    assert row["value"] == pytest.approx(0.6) and row["paper_value"] == pytest.approx(0.6773)
    assert row["difference"] == pytest.approx(0.6 - 0.6773)
    assert row["record_keys"] == "k_at_aa" and row["n"] == 10


def test_carso_table3_shows_partial_missing_and_the_papers_bound(grid_dir):
    grid = collect(grid_dir, report_config={})
    built = paper_tables.build(LAYOUTS["carso_table3"], grid, load_paper_numbers())
    assert built.has_cells
    assert CARSO_TABLE3_ROWS in to_markdown(built.measured)
    assert "| (b) CIFAR-100 | CARSO (NeurIPS 2024), Table 3 | < 0.010 |" in to_markdown(built.reference)


def test_cells_table_shows_every_cell_and_the_worst_cases(grid_dir):
    grid = collect(grid_dir, report_config={})
    table, frame = long_table.build(grid)
    text = to_markdown(table)
    assert CELLS_TABLE in text
    assert "- 6 cells: 3 done, 1 failed, 1 partial, 1 missing" in text
    assert "- 1 record(s) in cells/ belong to no cell of the current plan and are not shown." in text
    worst = frame[frame["row"] == "worst_case"].set_index("defence")
    assert worst.loc["at", "robust_acc"] == pytest.approx(0.5)
    assert worst.loc["carso", "attacks_not_included"] == "pgd_eot (failed)"
    assert list(frame[frame["row"] == "cell"]["status"]) == ["done", "done", "missing", "done", "failed", "partial"]


def test_latex_is_booktabs_with_escaped_text(grid_dir):
    grid = collect(grid_dir, report_config={})
    latex = to_latex(paper_tables.build(LAYOUTS["carso_table2"], grid, load_paper_numbers()).measured)
    lines = latex.splitlines()
    assert lines[1:3] == [r"\begin{table}[htbp]", r"\centering"]
    assert r"\begin{tabular}{llrrrrrrr}" in lines and lines.count(r"\toprule") == 1
    assert lines.count(r"\bottomrule") == 1 and lines[-1] == r"\end{table}"
    assert (r"cifar10\_toy & measured & 0.900 [0.596, 0.982] n=10 & 0.800 [0.490, 0.943] n=10 & "
            r"0.600 [0.313, 0.832] n=10 & 0.300 [0.108, 0.603] n=10 & failed & 0.500 [0.237, 0.763] n=10 & "
            r"0.300 [0.108, 0.603] n=10 (1 of 2 attacks) \\") in lines
    assert (r" & measured $-$ paper & -0.022 (in CI) & -0.069 (in CI) & -0.077 (in CI) & -0.461 (outside CI) & "
            r"-- & -- & -- \\") in lines
    assert r"AT/AA: robust accuracy of at $\times$ aa\par" in lines
    # every row has as many cells as the header
    body = [line for line in lines if line.endswith(r"\\")]
    assert {line.count(" & ") for line in body} == {8}


def test_worst_case_is_the_per_example_and_not_the_minimum_accuracy():
    from bench.reporting.collect import CellResult

    def cell(attack: str, rates: list[float] | None, draws: list[list[int]], index: list[int],
             status: str = "done") -> CellResult:
        record = {"robust_correct": rates, "per_example": {"index": index, "robust_draws": draws},
                  "n_examples": len(index)} if status == "done" else None
        return CellResult(key=attack, scenario="s", defence="d", defence_name="d", attack=attack, attack_name=attack,
                          attack_params={"eps": 0.1, "norm": "Linf"}, seed=0, n_examples=len(index), block="b",
                          status=status, record=record)

    first = cell("a", [0.5, 1.0, 0.0, 1.0], [[1, 0], [1, 1], [0, 0], [1, 1]], [0, 1, 2, 3])
    second = cell("b", [1.0, 0.5, 0.0, 1.0], [[1, 1], [1, 0], [0, 0], [1, 1]], [0, 1, 2, 3])
    missing = cell("m", None, [], [0, 1, 2, 3], status="missing")
    worst = combine([first, second, missing])
    assert worst.correct == [0.5, 0.5, 0.0, 1.0]          # per-example minimum of the single-draw rates
    assert worst.acc == pytest.approx(0.5)                # each attack alone: 0.625
    assert worst.acc_all_draws == pytest.approx(0.25)     # only example 3 survives every draw of both
    assert worst.ci == pytest.approx(wilson_interval(2.0, 4))
    assert worst.attacks == ["a", "b"] and worst.not_done == ["m (missing)"]
    assert worst.coverage_note() == "over a, b; not included (not done): m (missing)"

    # a record on fewer examples (a block with a smaller n_examples): aligned by index, on the shared examples
    nested = cell("c", [0.0, 1.0], [[0, 0], [1, 1]], [1, 3])
    worst = combine([first, second, nested])
    assert worst.index == [1, 3] and worst.correct == [0.0, 1.0]
    assert worst.acc_all_draws == pytest.approx(0.5)
    assert worst.coverage_note() == "over a, b, c on the 2 examples they share"

    # a record with no example in common is left out, and named
    disjoint = cell("e", [0.0, 0.0], [[0, 0], [0, 0]], [10, 11])
    worst = combine([first, disjoint])
    assert worst.attacks == ["a"] and worst.other_subset == ["e"] and worst.n == 4
    assert worst.coverage_note() == "over a; not included (other test subset): e"


def test_report_config_maps_grid_keys_and_rejects_bad_input(grid_dir):
    config = {"carso_table2": {"columns": {"AT/AA": {"defence": "at", "attack": "pgd"}}}, "atop_table8": False}
    grid = collect(grid_dir, report_config=config)
    layouts = {layout.name: (layout, named) for layout, named in configured_layouts(grid.report_config)}
    assert "atop_table8" not in layouts and layouts["carso_table2"][1] is True
    table = paper_tables.build(layouts["carso_table2"][0], grid, load_paper_numbers()).measured
    assert "- AT/AA: robust accuracy of at × pgd" in to_markdown(table)
    with pytest.raises(ReportConfigError, match=r"unknown layout\(s\) \['carso_tabel2'\].*Did you mean 'carso_table2'"):
        configured_layouts({"carso_tabel2": {}})
    with pytest.raises(ReportConfigError, match=r"unknown column 'AT/A'.*Valid: .*AT/AA"):
        configured_layouts({"carso_table2": {"columns": {"AT/A": {"defence": "at"}}}})
    with pytest.raises(ReportConfigError, match=r"unknown key\(s\) \['attacks'\]"):
        configured_layouts({"carso_table2": {"columns": {"AT/AA": {"attacks": "aa"}}}})


def test_paper_numbers_agree_with_the_reference_transcription():
    papers = load_paper_numbers()
    # CARSO Table 2 row (a) and AToP Table 7, as transcribed separately in the project's reference notes
    row_a = papers["carso_table2"].rows["a"].values
    assert [row_a[c].value for c in ("AT/Cl", "C/Cl", "AT/AA", "C/randAA", "C/PGD+EOT")] == \
        [0.9216, 0.8686, 0.6773, 0.7613, 0.7689]
    reference = """RT1 no-FT 93.36 16.60 0.00 0.00 0.00 21.09 | RT1 FT 93.36 91.99 43.55 36.72 39.45 87.89
                   RT2 no-FT 84.18 55.08 72.27 70.90 67.97 87.70 | RT2 FT 90.04 89.84 84.77 84.57 84.38 88.87
                   RT3 no-FT 75.98 67.97 70.51 70.70 70.31 75.20 | RT3 FT 80.02 70.90 73.05 72.07 73.44 76.56"""
    table7 = papers["atop_table7"]
    for entry in reference.replace("\n", "|").split("|"):
        words = entry.split()
        row = table7.rows[f"{words[0].lower()}_{'noft' if words[1] == 'no-FT' else 'ft'}"]
        assert [row.values[c].value for c in table7.columns] == pytest.approx([float(w) / 100 for w in words[-6:]])
    bound = papers["carso_table3"].rows["a"].values["C/randAA eps=0.95"]
    assert (bound.relation, bound.value, bound.text) == ("<", 0.047, "< 0.047")
    assert bound.difference(0.01, None) == "below the bound 0.047"
    assert bound.difference(0.2, None) == "NOT below the bound 0.047"


def test_malformed_paper_numbers_say_what_is_wrong():
    table = {"paper": "p", "table": "Table 1", "columns": ["A"], "rows": {"r": {"values": {"A": "about 3"}}}}
    with pytest.raises(PaperNumbersError, match=r"tables.t.rows.r.values.A: 'about 3' is not valid"):
        parse_paper_numbers({"papers": {"p": {}}, "tables": {"t": table}})
    table["rows"]["r"]["values"] = {"B": 0.5}
    with pytest.raises(PaperNumbersError, match=r"unknown \['B'\], absent \['A'\]"):
        parse_paper_numbers({"papers": {"p": {}}, "tables": {"t": table}})


def test_figures_come_from_records_and_diagnostics(grid_dir, tmp_path):
    grid = collect(grid_dir, report_config={})
    at_cells = [c for c in grid.cells if c.defence == "at"]
    # clean at eps 0, then the per-example worst case over aa and pgd at 8/255 (aa95 has no record)
    points = figures._eps_points(at_cells)
    assert [(x, round(y, 6)) for x, y, _ in points] == [(0.0, 0.9), (pytest.approx(EPS), 0.5)]
    drawn = {f.name: f for f in figures.render_figures(grid, tmp_path / "figs")}
    assert set(drawn) == {"robust_vs_eps", "heatmap", "robust_vs_steps", "robust_vs_eot"}
    for figure in drawn.values():
        assert figure.drawn, figure.reason
        assert figure.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert figure.pdf.read_bytes()[:5] == b"%PDF-"
    # without diagnostics there is no steps / EOT data (each attack was run at one setting only)
    grid.diagnostics = []
    figure = figures.sweep(grid, tmp_path / "figs2", "eot")
    assert not figure.drawn and "no diagnostics curve for EOT samples" in figure.reason


def test_steps_sweep_from_records_of_one_attack(grid_dir):
    grid = collect(grid_dir, report_config={})
    pgd = next(c for c in grid.cells if c.attack == "pgd")

    def longer(steps: int, acc: float, ci: list[float]):
        return type(pgd)(**{**pgd.__dict__, "key": f"k_pgd{steps}", "attack": f"pgd{steps}",
                            "attack_params": {**pgd.attack_params, "steps": steps},
                            "record": {**pgd.record, "robust_acc": acc, "robust_ci": ci}})

    grid.cells.append(longer(40, 0.4, [0.2, 0.6]))
    assert figures._record_sweeps(grid, "steps") == {}  # two points make no curve
    grid.cells.append(longer(80, 0.3, [0.1, 0.6]))
    sweeps = figures._record_sweeps(grid, "steps")
    assert sweeps == {("cifar10_toy", "at/pgd"): [(20.0, pytest.approx(0.6), pgd.record["robust_ci"]),
                                                   (40.0, 0.4, [0.2, 0.6]), (80.0, 0.3, [0.1, 0.6])]}


def test_render_writes_every_output_and_removes_stale_ones(grid_dir):
    (grid_dir / "tables").mkdir()
    (grid_dir / "tables" / "atop_table7.md").write_text("from an earlier grid version")
    written = render(grid_dir, report_config={})
    names = {p.relative_to(grid_dir).as_posix() for p in written}
    assert {"summary.md", "summary.csv", "index.html", "tables/cells.md", "tables/cells.tex",
            "tables/carso_table2.md", "tables/carso_table2.tex", "tables/carso_table2.csv",
            "tables/carso_table3.md", "figures/heatmap.png", "figures/heatmap.pdf"} <= names
    assert not (grid_dir / "tables" / "atop_table7.md").exists()
    summary = (grid_dir / "summary.md").read_text()
    assert CARSO_TABLE2 in summary and CELLS_TABLE in summary
    assert "- failed: cifar10_toy/carso/pgd_eot/seed0: RuntimeError: out of memory" in summary
    page = (grid_dir / "index.html").read_text()
    assert page.count("<details><summary>cifar10_toy/") == 6
    assert "eps_not_to_chance" in page and "1 flag(s) raised" in page


def test_report_section_is_read_from_the_plans_grid_file(grid_dir, tmp_path):
    import yaml

    grid_file = tmp_path / "my_grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "defences": {"at": {"name": "at"}}, "attacks": {"aa": {"name": "aa"}},
        "blocks": [{"name": "b", "scenarios": ["digits"], "defences": ["at"], "attacks": ["aa"]}],
        "report": {"carso_table2": {"columns": {"AT/AA": {"defence": "at", "attack": "pgd"}}}}}))
    plan_path = grid_dir / ".plan" / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["options"]["grid"] = str(grid_file)
    plan_path.write_text(json.dumps(plan))
    grid = collect(grid_dir)
    assert grid.report_config == {"carso_table2": {"columns": {"AT/AA": {"defence": "at", "attack": "pgd"}}}}
    assert grid.config_note == ""
    plan["options"]["grid"] = "no_such_grid"
    plan_path.write_text(json.dumps(plan))
    grid = collect(grid_dir)
    assert grid.report_config == {} and "could not be read" in grid.config_note


def test_command_line_errors_name_the_valid_arguments(tmp_path, capsys):
    from bench.report import main

    assert main(["colour=blue"]) == 2
    assert "valid arguments are grid=NAME and results_dir=PATH" in capsys.readouterr().err
    assert main(["grid=nothing_here", f"results_dir={tmp_path}"]) == 2
    assert "no results at" in capsys.readouterr().err


def test_without_a_plan_every_record_is_a_cell(grid_dir):
    (grid_dir / ".plan" / "plan.json").unlink()
    grid = collect(grid_dir, report_config={})
    assert not grid.has_plan and grid.stray_records == []
    # the older plan's record is a cell of its own; the forged one was quarantined, never a result
    assert grid.counts() == {"done": 4, "failed": 1, "partial": 0, "missing": 0}
    assert next(c for c in grid.cells if c.key == "stale").status == "done"
    assert [p.name.split(".")[4] for p in (grid_dir / "cells" / "quarantine").iterdir()] == ["forged"]
    table, _ = long_table.build(grid)
    assert "| cifar10_toy | carso | pgd_eot | end_to_end | Linf 8/255 | 0 | 10 | – | – | – | – | " \
           "failed: RuntimeError: out of memory | 1.5 |" in to_markdown(table)


def _done_cell(defence: str, params: dict, attack: str, attack_params: dict, clean: list, robust: list):
    from bench.reporting.collect import CellResult

    n = len(clean)
    record = {"status": "done", "n_examples": n, "draws": len(clean[0]), "decision": "single",
              **_accuracies(clean, "clean"), **_accuracies(robust, "robust"),
              "per_example": {"index": list(range(n)), "label": [0] * n, "robust_draws": robust}}
    return CellResult(key=f"{defence}.{attack}", scenario="cifar10_r18", defence=defence, defence_name="atop",
                      attack=attack, attack_name="pgd", attack_params={"eps": EPS, "norm": "Linf", **attack_params},
                      seed=0, n_examples=n, block="b", status="done", record=record, defence_params=params,
                      scenario_info={"dataset": "cifar10", "norm": "Linf", "eps": EPS,
                                     "classifier": "train:preact_resnet18", "arch": "preact_resnet18"})


ATOP_TABLE7_ROWS = """\
| cifar10_r18 · RT2, no fine-tuning | measured | 0.625 [0.219, 0.908] n=4 | not in grid | not in grid | 0.125 [0.013, 0.604] n=4 | not in grid | not in grid | 0.125 [0.013, 0.604] n=4 |
| RT2, no fine-tuning | paper: AToP, Table 7 | 0.8418 | 0.5508 | 0.7227 | 0.7090 | 0.6797 | 0.8770 | – |
|  | measured − paper | -0.217 (in CI) | – | – | -0.584 (outside CI) | – | – | – |
| cifar10_r18 · RT2, AToP fine-tuned | measured | 1.000 [0.510, 1.000] n=4 | not in grid | not in grid | 0.625 [0.219, 0.908] n=4 | not in grid | not in grid | 0.625 [0.219, 0.908] n=4 |
| RT2, AToP fine-tuned | paper: AToP, Table 7 | 0.9004 | 0.8984 | 0.8477 | 0.8457 | 0.8438 | 0.8887 | – |
|  | measured − paper | +0.100 (in CI) | – | – | -0.221 (in CI) | – | – | – |
"""  # noqa: E501


def test_atop_table7_rows_are_defence_variants_under_classifier_only_attacks():
    from bench.reporting.collect import GridResults

    on_classifier = {"name": "pgd", "steps": 20, "target": "classifier"}
    cells = [
        _done_cell("atop_noft", {"transform": "rt2", "finetune": False}, "pgd_cls", on_classifier,
                   [[1, 1], [1, 1], [1, 0], [0, 0]], [[1, 0], [0, 0], [0, 0], [0, 0]]),
        _done_cell("atop_ft", {"transform": "rt2", "finetune": True}, "pgd_cls", on_classifier,
                   [[1, 1]] * 4, [[1, 1], [1, 1], [0, 1], [0, 0]]),
    ]
    grid = GridResults(name="t7", results_dir=Path("."), cells=cells, has_plan=True)
    built = paper_tables.build(LAYOUTS["atop_table7"], grid, load_paper_numbers())
    assert built.has_cells and ATOP_TABLE7_ROWS in to_markdown(built.measured)
    assert "RT1, no fine-tuning" in to_markdown(built.reference)
    # the same cells attacked on the classifier do not fill the end-to-end layout
    assert not paper_tables.build(LAYOUTS["atop_table7_end_to_end"], grid, load_paper_numbers()).has_cells


def test_help_says_what_the_report_writes(capsys):
    from bench.report import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m bench.report grid=NAME") and "index.html" in out


def test_every_number_of_the_cells_table_has_its_budget_on_hover(grid_dir):
    table, _ = long_table.build(collect(grid_dir, report_config={}))
    assert table.tooltips[(1, 9)] == "pgd (pgd, end_to_end): eps=0.03137254901960784, norm=Linf, steps=20, " \
                                     "target=end_to_end"
    worst_row = next(i for i, row in enumerate(table.rows) if row[1] == "at" and row[2] == "worst case")
    assert table.tooltips[(worst_row, 9)].splitlines() == [table.tooltips[(0, 9)], table.tooltips[(1, 9)]]
