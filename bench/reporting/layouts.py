"""The papers' table layouts as data, and the grid's `report:` section that maps its cells onto them.

A layout has columns (a metric - clean, robust or worst-case - of a defence, under an attack) and, for
tables whose rows are defence variants (AToP Table 7: transform x fine-tuning), row variants. Each column
and variant carries a default *selector* by registry name and parameters (e.g. defence `{name: carso}`,
attack `{name: randaa, target: end_to_end}`), so a grid that uses the usual names fills the layout with
no configuration. A grid names its own keys in its `report:` section:

    report:
      carso_table2:
        columns:
          AT/AA: {defence: at, attack: aa}        # grid keys (or a selector mapping)
          C/randAA: {defence: carso, attack: randaa}
        paper_rows: {cifar10_cui2023: [a]}        # scenario -> paper row ids (default: same setting)
      atop_table7:
        rows: {rt2_ft: {defence: atop_ft}}
      atop_table8: false                          # do not render this layout

Selector mappings match `key` (the grid key), `name` (the registry name), `target` (attacks) and any
resolved parameter (e.g. `steps: 20`, `finetune: true`); a list means any of its values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from attacks.registry import closest_hint
from defences.atop.transforms import TRANSFORMS as ATOP_TRANSFORMS

METRICS = ("clean", "robust", "worst")


class ReportConfigError(ValueError):
    """A grid's `report:` section is malformed; the message says what was wrong and what is valid."""


@dataclass(frozen=True)
class Column:
    label: str
    metric: str
    defence: dict[str, Any] | None = None
    attack: dict[str, Any] | None = None
    paper: str | None = None  # the paper table's column; None: the harness's own column (no paper value)
    explicit_attack: bool = False  # a grid named the attack: no threat-model filter

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"column {self.label!r}: metric {self.metric!r} is not valid; valid: {METRICS}")


@dataclass(frozen=True)
class Variant:
    id: str  # also the id of the paper row it corresponds to
    label: str
    defence: dict[str, Any]


@dataclass(frozen=True)
class Layout:
    name: str
    title: str
    paper_tables: tuple[str, ...]
    columns: tuple[Column, ...]
    variants: tuple[Variant, ...] = ()
    norm: str | None = None  # the threat model of its attacks; None: each scenario's own
    eps: float | None = None
    note: str = ""
    paper_rows: dict[str, list[str]] = field(default_factory=dict)

    def column(self, label: str) -> Column:
        return next(c for c in self.columns if c.label == label)


def _e2e(name: str | list[str], **params: Any) -> dict[str, Any]:
    return {"name": name, "target": "end_to_end", **params}


def _atop_variants() -> tuple[Variant, ...]:
    """AToP's rows: each of its random transforms (the defence's own list), without and with fine-tuning."""
    return tuple(
        Variant(f"{t}_{'ft' if ft else 'noft'}", f"{t.upper()}, {'AToP fine-tuned' if ft else 'no fine-tuning'}",
                {"name": "atop", "transform": t, "finetune": ft})
        for t in ATOP_TRANSFORMS for ft in (False, True))


def _atop_table7(name: str, target: str, title: str, note: str) -> Layout:
    def attack(attack_name: str, **params: Any) -> dict[str, Any]:
        return {"name": attack_name, "target": target, **params}

    return Layout(
        name=name, title=title, paper_tables=("atop_table7",), variants=_atop_variants(), note=note,
        columns=(Column("Standard", "clean", paper="Standard"),
                 Column("FGSM", "robust", attack=attack("fgsm"), paper="FGSM"),
                 Column("PGD-10", "robust", attack=attack("pgd", steps=10), paper="PGD-10"),
                 Column("PGD-20", "robust", attack=attack("pgd", steps=20), paper="PGD-20"),
                 Column("PGD-1000", "robust", attack=attack("pgd", steps=1000), paper="PGD-1000"),
                 Column("CW-100", "robust", attack=attack("cw", steps=100), paper="CW-100"),
                 Column("worst case", "worst")))


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout(
        name="carso_table2", paper_tables=("carso_table2",),
        title="CARSO Table 2 layout: the adversarially trained classifier alone (AT) and CARSO on it (C)",
        columns=(Column("AT/Cl", "clean", defence={"name": "at"}, paper="AT/Cl"),
                 Column("C/Cl", "clean", defence={"name": "carso"}, paper="C/Cl"),
                 Column("AT/AA", "robust", defence={"name": "at"}, attack=_e2e("aa"), paper="AT/AA"),
                 Column("C/randAA", "robust", defence={"name": "carso"}, attack=_e2e("randaa"), paper="C/randAA"),
                 Column("C/PGD+EOT", "robust", defence={"name": "carso"}, attack=_e2e("pgd_eot"),
                        paper="C/PGD+EOT"),
                 Column("AT/worst", "worst", defence={"name": "at"}),
                 Column("C/worst", "worst", defence={"name": "carso"}))),
    Layout(
        name="carso_table3", paper_tables=("carso_table3",), norm="Linf", eps=0.95,
        title="CARSO Table 3 layout: accuracy at eps = 0.95 (Linf), which must fall below chance",
        columns=(Column("C/randAA eps=0.95", "robust", defence={"name": "carso"}, attack=_e2e(["randaa", "aa"]),
                        paper="C/randAA eps=0.95"),
                 Column("AT/AA eps=0.95", "robust", defence={"name": "at"}, attack=_e2e("aa")),
                 Column("C/worst eps=0.95", "worst", defence={"name": "carso"}))),
    Layout(
        name="carso_preprint_table1", paper_tables=("carso_preprint_table1",),
        title="CARSO preprint Table 1 layout: clean training (Cl), adversarial training (AT), CARSO on AT (C+AT)",
        columns=(Column("Cl/Cl", "clean", defence={"name": "standard"}, paper="Cl/Cl"),
                 Column("Cl/AA", "robust", defence={"name": "standard"}, attack=_e2e("aa"), paper="Cl/AA"),
                 Column("AT/Cl", "clean", defence={"name": "at"}, paper="AT/Cl"),
                 Column("C+AT/Cl", "clean", defence={"name": "carso"}, paper="C+AT/Cl"),
                 Column("AT/AA", "robust", defence={"name": "at"}, attack=_e2e("aa"), paper="AT/AA"),
                 Column("C+AT/AA", "robust", defence={"name": "carso"},
                        attack={"name": ["aa", "randaa"], "target": "classifier"}, paper="C+AT/AA"),
                 Column("C+AT/E2E", "robust", defence={"name": "carso"}, attack=_e2e("randaa"),
                        paper="C+AT/E2E"))),
    _atop_table7("atop_table7", "classifier",
                 "AToP Table 7 layout: transform x fine-tuning, attacks on the classifier alone (the paper's setting)",
                 "Attacks are crafted on the classifier alone and evaluated through the whole defence."),
    _atop_table7("atop_table7_end_to_end", "end_to_end",
                 "AToP Table 7 layout, attacked end to end (not the paper's setting)",
                 "The paper's numbers beside these are for attacks on the classifier alone; end-to-end attacks "
                 "differentiate through the random transform and the purifier."),
    Layout(
        name="atop_table8", paper_tables=("atop_table8",), variants=_atop_variants(), norm="L2", eps=1.0,
        title="AToP Table 8 layout: transform x fine-tuning under PGD+EOT, L2 eps 1.0",
        columns=(Column("Standard", "clean", paper="Standard"),
                 Column("PGD-10", "robust", attack=_e2e("pgd_eot", steps=10), paper="PGD-10"),
                 Column("PGD-20", "robust", attack=_e2e("pgd_eot", steps=20), paper="PGD-20"),
                 Column("worst case", "worst"))),
    Layout(
        name="atop_tables_2_4", paper_tables=("atop_table2", "atop_table4"), norm="Linf", eps=8 / 255,
        title="AToP Tables 2 and 4 layout: RT2 + GAN purifier, fine-tuned, AutoAttack (with EOT) Linf 8/255",
        columns=(Column("Standard", "clean", defence={"name": "atop", "finetune": True}, paper="Standard"),
                 Column("AA Linf 8/255", "robust", defence={"name": "atop", "finetune": True},
                        attack=_e2e("randaa"), paper="AA Linf 8/255"),
                 Column("worst case", "worst", defence={"name": "atop", "finetune": True}))),
    Layout(
        name="atop_table3", paper_tables=("atop_table3",), norm="L2", eps=0.5,
        title="AToP Table 3 layout: RT2 + GAN purifier, fine-tuned, AutoAttack (with EOT) L2 0.5",
        columns=(Column("Standard", "clean", defence={"name": "atop", "finetune": True}, paper="Standard"),
                 Column("AA L2 0.5", "robust", defence={"name": "atop", "finetune": True}, attack=_e2e("randaa"),
                        paper="AA L2 0.5"),
                 Column("worst case", "worst", defence={"name": "atop", "finetune": True}))),
)}


def _selector(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"key": value}
    if isinstance(value, dict) and value:
        return dict(value)
    raise ReportConfigError(f"{where}: {value!r} is not valid; give a grid key (e.g. at) or a selector mapping "
                            "(e.g. {name: carso})")


def _check_keys(entry: Any, valid: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ReportConfigError(f"{where} must be a mapping with keys among {list(valid)}, got {entry!r}")
    unknown = sorted(set(entry) - set(valid))
    if unknown:
        raise ReportConfigError(f"{where}: unknown key(s) {unknown}. {closest_hint(unknown[0], valid)}")
    return entry


def configure(layout: Layout, entry: dict[str, Any]) -> Layout:
    """The layout with a grid's `report.<layout>` entry applied (grid keys replace default selectors)."""
    where = f"report.{layout.name}"
    entry = _check_keys(entry, ("columns", "rows", "paper_rows"), where)
    columns = {c.label: c for c in layout.columns}
    for label, spec in (entry.get("columns") or {}).items():
        if label not in columns:
            raise ReportConfigError(f"{where}.columns: unknown column {label!r}. {closest_hint(label, columns)}")
        spec = _check_keys(spec, ("defence", "attack"), f"{where}.columns.{label}")
        column = columns[label]
        if "defence" in spec:
            column = replace(column, defence=_selector(spec["defence"], f"{where}.columns.{label}.defence"))
        if "attack" in spec:
            column = replace(column, attack=_selector(spec["attack"], f"{where}.columns.{label}.attack"),
                             explicit_attack=True)
        columns[label] = column
    variants = {v.id: v for v in layout.variants}
    for variant_id, spec in (entry.get("rows") or {}).items():
        if variant_id not in variants:
            valid = list(variants) or ["(this layout has one row per scenario; use columns)"]
            raise ReportConfigError(f"{where}.rows: unknown row {variant_id!r}. {closest_hint(variant_id, valid)}")
        spec = _check_keys(spec, ("defence",), f"{where}.rows.{variant_id}")
        variants[variant_id] = replace(variants[variant_id],
                                       defence=_selector(spec["defence"], f"{where}.rows.{variant_id}.defence"))
    paper_rows = {}
    for scenario, rows in (entry.get("paper_rows") or {}).items():
        paper_rows[str(scenario)] = [str(r) for r in (rows if isinstance(rows, list) else [rows])]
    return replace(layout, columns=tuple(columns.values()), variants=tuple(variants.values()),
                   paper_rows=paper_rows)


def configured_layouts(report_config: dict[str, Any]) -> list[tuple[Layout, bool]]:
    """Every layout with the grid's settings applied, and whether the grid named it; disabled ones left out."""
    if not isinstance(report_config, dict):
        raise ReportConfigError(f"report: must be a mapping from layout names to settings, got {report_config!r}")
    unknown = sorted(set(report_config) - set(LAYOUTS))
    if unknown:
        raise ReportConfigError(f"report: unknown layout(s) {unknown}. {closest_hint(unknown[0], LAYOUTS)}")
    chosen = []
    for name, layout in LAYOUTS.items():
        entry = report_config.get(name)
        if entry is False:
            continue
        named = name in report_config
        chosen.append((configure(layout, entry) if isinstance(entry, dict) else layout, named))
    return chosen


def validate_report_config(report_config: dict[str, Any]) -> None:
    """Raise ReportConfigError if a grid's `report:` section is malformed (for checking at grid load time)."""
    configured_layouts(report_config)
