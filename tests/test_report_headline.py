"""The report's opening tables on fixed records: headline worst case (clean included, one subset per row), what
naive settings overstate, paired comparisons between defences, CE vs margin, purifier decomposition, seeds and
provenance. Expected values are computed by hand from the per-example vectors written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from attacks.stats import wilson_interval
from bench.reporting import comparisons, decomposition, figures, headline, provenance
from bench.reporting.collect import CellResult, GridResults
from bench.reporting.tables import to_markdown
from bench.stats import mcnemar_exact, newcombe_paired_interval

EPS = 0.15


def cell(defence: str, attack: str, clean: list[float], robust: list[float], index: list[int] | None = None,
         seed: int = 0, name: str | None = None, defence_name: str | None = None, commit: str = "abc",
         eps: float = EPS, draws: int = 1, **params) -> CellResult:
    index = list(range(len(robust))) if index is None else index
    n = len(index)
    record = {"status": "done", "n_examples": n, "draws": draws, "decision": "single", "stochastic": draws > 1,
              "clean_acc": sum(clean) / n, "clean_ci": list(wilson_interval(sum(clean), n)), "clean_correct": clean,
              "robust_acc": sum(robust) / n, "robust_ci": list(wilson_interval(sum(robust), n)),
              "robust_correct": robust, "git_commit": commit, "per_example": {"index": index}}
    settings = {"name": name or attack, "eps": eps, "norm": "Linf", **params}
    return CellResult(key=f"{defence}.{attack}.{seed}", scenario="digits", defence=defence,
                      defence_name=defence_name or defence, attack=attack, attack_name=name or attack,
                      attack_params=settings, seed=seed, n_examples=n, block="b", status="done", record=record,
                      scenario_info={"dataset": "digits", "norm": "Linf", "eps": EPS, "arch": "small_cnn"})


def grid_of(cells: list[CellResult], stray: int = 0) -> GridResults:
    return GridResults(name="t", results_dir=Path("."), cells=cells, has_plan=True,
                       stray_records=[{"_path": f"stale{i}.json"} for i in range(stray)])


def test_headline_worst_case_includes_the_clean_judgement_on_one_subset():
    # example 2 survives both attacks but is misclassified without attack: it is not robust
    clean = [1, 1, 0, 1, 1, 1]
    pgd = cell("at", "pgd", clean, [1, 1, 1, 0, 1, 0], loss="ce")
    aa = cell("at", "aa", clean, [1, 0, 1, 0, 1, 1])
    # an adaptive cell on the nested subset {0, 2, 4}: the row uses those 3 examples for clean and worst case
    adaptive = cell("at", "adaptive", [1, 0, 1], [1, 0, 0], index=[0, 2, 4], name="adaptive")
    [item] = headline.headlines(grid_of([pgd, aa, adaptive]))
    worst = item.worst
    assert worst.index == [0, 2, 4] and worst.n == 3
    assert worst.correct == [1.0, 0.0, 0.0]
    assert worst.clean == [1.0, 0.0, 1.0]  # the mean of the three cells' clean judgements
    assert item.adaptive is adaptive
    row = to_markdown(headline.headline_table([item])).splitlines()[4]
    assert row == ("| digits | at | 0 | Linf 0.15 | 3 | 0.667 [0.208, 0.939] | 0.333 [0.061, 0.792] | 0.333 | 0 of 3 | "
                   "pgd, aa, adaptive | examples outside the shared 3 (pgd n=6, aa n=6) | "
                   "1 seed: training variance unmeasured |")
    # without the nested cell: all 6 examples; robust never exceeds clean on any example
    [item] = headline.headlines(grid_of([pgd, aa]))
    assert item.worst.correct == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert all(r <= c for r, c in zip(item.worst.correct, item.worst.clean, strict=True))
    assert item.adaptive is None


def test_headline_counts_the_examples_other_attacks_broke_that_adaptive_did_not():
    clean = [1, 1, 1, 1, 1, 1, 1, 0]
    adaptive = cell("at", "adaptive", clean, [1, 1, 1, 0, 0, 1, 1, 1], name="adaptive")
    pgd = cell("at", "pgd", clean, [0, 1, 1, 1, 0, 1, 1, 1])  # breaks example 0, which adaptive did not
    aa = cell("at", "aa", clean, [1, 0, 1, 1, 1, 0, 1, 1])    # breaks 1 and 5
    # carso: adaptive breaks all that pgd_eot breaks, and more; standard: adaptive not run; atop: adaptive only
    carso = [cell("carso", "adaptive", [1] * 4, [0, 1, 0, 0], name="adaptive"),
             cell("carso", "pgd_eot", [1] * 4, [0, 1, 1, 0])]
    standard = cell("standard", "pgd", [1] * 4, [0, 0, 1, 0])
    alone = cell("atop", "adaptive", [1] * 4, [1, 0, 1, 0], name="adaptive")
    items = headline.headlines(grid_of([adaptive, pgd, aa, *carso, standard, alone]))
    check = items[0].adaptive_check
    # example 7 is clean-wrong (not robust under any attack) and example 3 only adaptive breaks: neither counts
    assert (check.missed, check.examples, check.by_attack, check.exact) == (3, 3, {"pgd": 1, "aa": 2}, True)
    assert check.adaptive_acc == pytest.approx(5 / 8) and check.others_acc == pytest.approx(3 / 8)
    assert check.adaptive_acc - check.missed / check.n == pytest.approx(items[0].worst.acc)  # the worst case's rule
    assert items[1].adaptive_check.missed == 0 and items[2].adaptive_check is None
    assert items[3].adaptive_check is None
    rows = [row[8] for row in headline.headline_table(items).rows]
    assert rows == ["3 of 8 (pgd 1, aa 2)", "0 of 4", "not run", "no other attack"]
    assert headline.adaptive_sentence(items) == (
        "Examples other attacks broke that adaptive did not: digits/at seed 0: 3 of 8 (pgd 1, aa 2). "
        "adaptive broke every example another attack broke on digits/carso seed 0.")
    assert headline.adaptive_sentence(items[2:]) == ""


def test_adaptive_check_on_single_draw_rates_counts_only_differences_beyond_draw_noise():
    clean = [1.0, 1.0, 1.0]
    adaptive = cell("carso", "adaptive", clean, [0.5, 1.0, 0.0], name="adaptive", draws=8)
    pgd_eot = cell("carso", "pgd_eot", clean, [0.25, 1.0, 0.5], draws=8)  # 4 of 8 vs 2 of 8 correct draws: noise
    [item] = headline.headlines(grid_of([adaptive, pgd_eot]))
    check = item.adaptive_check
    assert (check.missed, check.examples, check.expected, check.exact) == (0, 1, 0.25, False)
    assert check.text() == ("0 of 3 beyond noise (per-example Fisher test at 0.01, chance p = 1; expected "
                            "single-draw shortfall 0.25 over 1 example(s))")


def test_overstatement_of_naive_settings_with_paired_intervals():
    clean = [1.0] * 10
    classifier_only = cell("atop", "pgd_cls", clean, [1, 1, 1, 1, 1, 1, 1, 0, 0, 0], target="classifier",
                           loss="ce", draws=8, defence_name="atop")
    end_to_end = cell("atop", "pgd_eot", clean, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0], target="end_to_end",
                      loss="margin", eot=20, draws=8, defence_name="atop")
    bpda = cell("atop", "bpda", clean, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], name="bpda_eot", eot=4, draws=8,
                defence_name="atop")
    [item] = headline.headlines(grid_of([classifier_only, end_to_end, bpda]))
    found = {o.setting: o for o in item.overstatements}
    assert set(found) == {"classifier-only", "CE-only", "single-pass (no EOT)", "BPDA"}
    over = found["classifier-only"].comparison
    # naive 7/10 vs worst 2/10: 5 discordant pairs all one way, 2 both right, 3 both wrong
    assert (over.first_acc, over.second_acc) == pytest.approx((0.7, 0.2))
    assert (over.both, over.first_only, over.second_only, over.neither) == (2, 5, 0, 3)
    assert over.ci == pytest.approx(newcombe_paired_interval(2, 5, 0, 3))
    assert over.p_value == pytest.approx(mcnemar_exact(5, 0)) == pytest.approx(0.0625)
    assert found["BPDA"].comparison.difference == pytest.approx(0.2)
    text = to_markdown(headline.overstatement_table([item]))
    assert "| digits | atop | 0 | classifier-only | pgd_cls | 0.700 | 0.200 | +0.500 [" in text


def test_paired_comparison_between_defences_on_shared_examples():
    at = cell("at", "pgd", [1] * 8, [1, 1, 1, 1, 1, 0, 0, 0], loss="ce", steps=20)
    carso = cell("carso", "pgd", [1] * 6, [1, 0, 0, 0, 1, 0], index=[0, 1, 2, 3, 5, 6], loss="ce", steps=20)
    grid = grid_of([at, carso])
    pairs = comparisons.defence_pairs(grid, headline.headlines(grid))
    assert [p.what for p in pairs] == ["worst case", "pgd"]
    result = pairs[1].comparison
    # shared examples 0,1,2,3,5,6: at 1,1,1,1,0,0; carso 1,0,0,0,1,0
    assert result.n == 6 and (result.both, result.first_only, result.second_only, result.neither) == (1, 3, 1, 1)
    assert result.p_value == pytest.approx(mcnemar_exact(3, 1)) == pytest.approx(0.625)
    assert result.ci == pytest.approx(newcombe_paired_interval(1, 3, 1, 1))
    text = to_markdown(comparisons.pairs_table(pairs))
    assert "| digits | 0 | at | carso | pgd | 6 | 0.667 | 0.333 | +0.333 [" in text and "| 0.625 |" in text
    # a different budget is a different attack: no per-attack comparison
    other = cell("carso", "pgd", [1] * 6, [1, 0, 0, 0, 1, 0], index=[0, 1, 2, 3, 5, 6], loss="ce", steps=10)
    grid = grid_of([at, other])
    assert [p.what for p in comparisons.defence_pairs(grid, headline.headlines(grid))] == ["worst case"]


def test_ce_against_margin_says_gradient_masked_only_beyond_the_intervals():
    clean = [1.0] * 30
    ce = cell("carso", "pgd_eot", clean, [1.0] * 29 + [0.0], name="pgd_eot", loss="ce", steps=10, eot=4)
    margin = cell("carso", "pgd_eot_margin", clean, [1.0] * 6 + [0.0] * 24, name="pgd_eot", loss="margin", steps=10,
                  eot=4)
    [pair] = comparisons.loss_pairs(grid_of([ce, margin]))
    assert pair.masked and pair.ce is ce and pair.other is margin
    assert pair.evidence() == ("pgd_eot (loss ce): 0.967 [0.833, 0.994] n=30 vs "
                               "pgd_eot_margin (loss margin): 0.200 [0.095, 0.373] n=30")
    row = to_markdown(comparisons.loss_table([pair])).splitlines()[4]
    assert row.endswith("| gradient masked for CE |") and "0.967 [0.833, 0.994] n=30" in row
    # close accuracies (intervals overlap): no flag; a different budget: not a pair at all
    close = cell("carso", "pgd_eot_margin", clean, [1.0] * 26 + [0.0] * 4, name="pgd_eot", loss="margin",
                 steps=10, eot=4)
    assert [p.masked for p in comparisons.loss_pairs(grid_of([ce, close]))] == [False]
    longer = cell("carso", "pgd_eot_margin", clean, [0.0] * 30, name="pgd_eot", loss="margin", steps=50, eot=4)
    assert comparisons.loss_pairs(grid_of([ce, longer])) == []


def test_purifier_decomposition_side_by_side_with_the_randomness_audit():
    clean = [1.0] * 4
    cls = cell("carso", "pgd_cls", clean, [1, 1, 1, 0], target="classifier", defence_name="carso", draws=8)
    bpda = cell("carso", "bpda", clean, [1, 1, 0, 0], name="bpda_eot", defence_name="carso", draws=8)
    e2e = cell("carso", "pgd_eot", clean, [1, 0, 0, 0], target="end_to_end", defence_name="carso", draws=8)
    e2e.record["randomness_audit"] = {"clean": {"disagreement": 0.0125, "latent_kl": 3.5},
                                      "adversarial": {"disagreement": 0.25}}
    at = cell("at", "pgd", clean, [1, 1, 0, 0])
    table = decomposition.decomposition_table(headline.headlines(grid_of([cls, bpda, e2e, at])))
    assert [row[1] for row in table.rows] == ["carso"]  # AT has no purifier
    assert table.rows[0][5:] == ["0.750 (pgd_cls)", "0.500 (bpda)", "0.250 (pgd_eot)", "0.250 [0.046, 0.699]",
                                 "disagreement 0.013; latent_kl 3.500", "disagreement 0.250"]
    del e2e.record["randomness_audit"]
    table = decomposition.decomposition_table(headline.headlines(grid_of([cls, e2e])))
    assert table.rows[0][6:] == ["not run", "0.250 (pgd_eot)", "0.250 [0.046, 0.699]", "not measured",
                                 "not measured"]


def test_several_seeds_report_mean_and_spread():
    cells = [cell("at", "pgd", [1] * 4, robust, seed=seed) for seed, robust in
             ((0, [1, 1, 0, 0]), (1, [1, 1, 1, 0]), (2, [1, 0, 0, 0]))]
    cells += [cell("at", "aa", [1] * 4, [1, 1, 1, 1], seed=seed) for seed in (0, 1, 2)]
    table = headline.seed_table(headline.headlines(grid_of(cells)))
    assert table.rows == [["digits", "at", "0, 1, 2", "1.000 ± 0.000 [1.000, 1.000]",
                           "0.500 ± 0.250 [0.250, 0.750]"]]
    assert headline.seed_table(headline.headlines(grid_of(cells[:1]))) is None


def test_headline_shows_the_spread_over_training_seeds_beside_each_row_or_says_it_is_unmeasured():
    cells = [cell("at", "pgd", [1] * 4, robust, seed=seed) for seed, robust in
             ((0, [1, 1, 0, 0]), (1, [1, 1, 1, 0]), (2, [1, 0, 0, 0]))]
    cells += [cell("std", "pgd", [1] * 4, [0, 0, 0, 1], seed=0)]
    items = headline.headlines(grid_of(cells))
    table = headline.headline_table(items)
    column = table.columns.index("worst case over training seeds")
    # at: worst cases 0.5, 0.75, 0.25 over seeds 0-2; sd of (0.5, 0.75, 0.25) is 0.25
    assert [row[column] for row in table.rows] == ["3 seeds: 0.250–0.750, sd 0.250"] * 3 + [
        "1 seed: training variance unmeasured"]
    assert headline.seed_sentence(items) == ("Trained with a single seed (training variance unmeasured): "
                                             "digits/std; the others show the spread of their worst case over "
                                             "seeds beside each row.")
    single = headline.headlines(grid_of([cells[0], cells[3]]))
    assert headline.seed_sentence(single).startswith("Every defence was trained with a single seed (0): training "
                                                     "variance is unmeasured")
    assert headline.seed_sentence(headline.headlines(grid_of(cells[:3]))) == ""


def test_provenance_warns_about_mixed_commits_dirty_trees_and_stale_records():
    cells = [cell("at", "pgd", [1], [1], commit="abcdef0123456789"),
             cell("at", "aa", [1], [1], commit="fedcba9876543210-dirty")]
    warnings, _ = provenance.warnings(grid_of(cells, stray=2))
    assert warnings[0].startswith("The records come from 2 different commits: abcdef0123 (1), fedcba9876-dirty (1)")
    assert warnings[1].startswith("1 record(s) come from a dirty working tree (fedcba9876-dirty)")
    assert warnings[2].startswith("2 stale record(s) in cells/")
    clean = [cell("at", "pgd", [1], [1], commit="abcdef0123456789")]
    warnings, summary = provenance.warnings(grid_of(clean))
    assert warnings == [] and provenance.describe(summary) == "All records come from commit abcdef0123."


def test_eps_curves_need_three_measured_points(tmp_path):
    two = [cell("at", "pgd", [1] * 4, [1, 1, 0, 0])]
    figure = figures.robust_vs_eps(grid_of(two), tmp_path)
    assert not figure.drawn and "3 or more eps values" in figure.reason
    three = two + [cell("at", "pgd_big", [1] * 4, [0, 0, 0, 0], eps=0.3)]
    points = figures._eps_points(three)
    assert [(x, y) for x, y, _ in points] == [(0.0, 1.0), (EPS, 0.5), (0.3, 0.0)]
    assert figures.robust_vs_eps(grid_of(three), tmp_path).drawn


def test_a_paper_column_with_ce_and_margin_cells_shows_the_papers_setting_and_names_the_other():
    from bench.reporting import paper_tables
    from bench.reporting.layouts import LAYOUTS

    clean = [1.0] * 30
    ce = cell("carso", "pgd_eot", clean, [1.0] * 29 + [0.0], name="pgd_eot", loss="ce", target="end_to_end",
              defence_name="carso")
    margin = cell("carso", "pgd_eot_margin", clean, [1.0] * 6 + [0.0] * 24, name="pgd_eot", loss="margin",
                  target="end_to_end", defence_name="carso")
    column = LAYOUTS["carso_table2"].column("C/PGD+EOT")
    slot = paper_tables.resolve(column, column.defence, [ce, margin], ("Linf", EPS))
    assert slot.text() == "0.967 [0.833, 0.994] n=30 (paper's loss, CE; margin: 0.200)"
    assert slot.cells == [ce, margin]
    # two cells that differ in more than the loss stay ambiguous
    longer = cell("carso", "pgd_eot_long", clean, [0.0] * 30, name="pgd_eot", loss="margin", steps=99,
                  target="end_to_end", defence_name="carso")
    assert paper_tables.resolve(column, column.defence, [ce, longer], ("Linf", EPS)).status == "ambiguous"


def test_rendered_report_says_gradient_masked_for_ce_above_the_headline(tmp_path):
    import json

    from bench.report import render

    cells_dir = tmp_path / "g" / "cells"
    cells_dir.mkdir(parents=True)
    clean = [1.0] * 30
    for attack, loss, robust in (("pgd_eot", "ce", [1.0] * 29 + [0.0]),
                                 ("pgd_eot_m", "margin", [1.0] * 6 + [0.0] * 24)):
        made = cell("carso", attack, clean, robust, name="pgd_eot", loss=loss, defence_name="carso")
        record = {**made.record, "schema_version": 1, "grid": "g", "key": attack, "scenario": "digits",
                  "defence": "carso", "defence_name": "carso",
                  "attack": attack, "attack_name": "pgd_eot", "attack_settings": made.attack_params, "seed": 0,
                  "eps": EPS, "norm": "Linf", "target": "end_to_end", "wall_seconds": 1.0, "packages": {},
                  "per_example": {"index": list(range(30)), "robust_draws": [[int(r)] for r in robust]}}
        (cells_dir / f"digits.carso.{attack}.s0.{attack}.json").write_text(json.dumps(record))
    render(tmp_path / "g", report_config={})
    summary = (tmp_path / "g" / "summary.md").read_text()
    headline_at = summary.index("## Headline")
    evidence = ("Gradient masked for CE on digits/carso: pgd_eot (loss ce): 0.967 [0.833, 0.994] n=30 vs "
                "pgd_eot_m (loss margin): 0.200 [0.095, 0.373] n=30")
    assert summary.index(evidence) > headline_at
    assert summary.index(evidence) < summary.index("### Headline: clean accuracy")
    assert "| gradient masked for CE |" in summary


def test_rendered_report_says_what_adaptive_missed_in_markdown_and_html(tmp_path):
    import json

    from bench.report import render

    cells_dir = tmp_path / "g" / "cells"
    cells_dir.mkdir(parents=True)
    clean = [1.0] * 6
    for attack, name, robust in (("adaptive", "adaptive", [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]),
                                 ("pgd", "pgd", [0.0, 1.0, 0.0, 1.0, 1.0, 0.0])):
        made = cell("at", attack, clean, robust, name=name)
        record = {**made.record, "schema_version": 1, "grid": "g", "key": attack, "scenario": "digits",
                  "defence": "at", "defence_name": "at", "attack": attack, "attack_name": name,
                  "attack_settings": made.attack_params, "seed": 0, "eps": EPS, "norm": "Linf",
                  "target": "end_to_end", "wall_seconds": 1.0, "packages": {},
                  "per_example": {"index": list(range(6)), "robust_draws": [[int(r)] for r in robust]}}
        (cells_dir / f"digits.at.{attack}.s0.{attack}.json").write_text(json.dumps(record))
    render(tmp_path / "g", report_config={})
    sentence = "Examples other attacks broke that adaptive did not: digits/at seed 0: 2 of 6 (pgd 2)."
    summary = (tmp_path / "g" / "summary.md").read_text()
    assert summary.index("## Headline") < summary.index(sentence) < summary.index("### Headline: clean accuracy")
    assert "| broken by others, not by adaptive |" in summary and "| 0.667 | 2 of 6 (pgd 2) |" in summary
    page = (tmp_path / "g" / "index.html").read_text()
    assert "broken by others, not by adaptive" in page and "2 of 6 (pgd 2)" in page and sentence in page
