"""results/<grid>/index.html: one self-contained page (inline CSS, no network): the provenance banner, the
report's sections in order (headline first), then status, diagnostics flags and each cell's settings and
provenance. Every measured number carries its attacks' budgets as hover text (the table cell's title).
Figures are linked by relative path, so the page
opens from the results folder; a small script marks figures that failed to load (`data-loaded`).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from bench import layout
from bench.reporting.collect import CellResult, GridResults
from bench.reporting.figures import FigureFile
from bench.reporting.sections import Section
from bench.reporting.tables import to_html

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table.results, table.kv { border-collapse: collapse; margin: 0.6em 0; font-size: 0.86em; }
table.results caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
table.results th, table.results td, table.kv th, table.kv td { border: 1px solid #ddd; padding: 0.25em 0.5em; }
table.results th { background: #f3f3f3; } table.kv th { text-align: left; background: #fafafa; }
tr.group-start td { border-top: 2px solid #888; }
td.failed { background: #fde2e2; color: #8a1010; } td.unfinished { background: #f1f1f1; color: #666; }
ul.notes { font-size: 0.82em; color: #444; } .raised { color: #8a1010; font-weight: 600; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 0.82em; max-width: 60em; }
details { margin: 0.2em 0; } summary { cursor: pointer; } pre { background: #f7f7f7; padding: 0.5em;
overflow-x: auto; font-size: 0.8em; } .broken { color: #8a1010; font-weight: 600; }
.counts span { margin-right: 1em; }
h1 { margin-top: 0; } p.lede { margin: 0.2em 0 0.5em 0; font-size: 0.9em; } nav { font-size: 0.85em; }
.provenance { padding: 0.3em 0.8em; margin: 0.4em 0; font-size: 0.85em; border-radius: 4px; }
.provenance.warn { background: #fff4d6; border: 1px solid #e0b84c; } .provenance.ok { background: #eef7ee; }
.provenance ul { margin: 0.2em 0; padding-left: 1.4em; } p.files { font-size: 0.8em; color: #555; }
td[title] { cursor: help; text-decoration: underline dotted #999; }
div.wide { overflow-x: auto; max-width: 100%; } table.results th, td.nowrap { white-space: nowrap; }
"""

# Marks every figure once the page has loaded: data-loaded="true" when the image decoded (naturalWidth > 0),
# "false" with a visible note when the file is missing (e.g. the page was copied without its figures/).
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img[data-figure]");
  var broken = 0;
  images.forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    img.setAttribute("data-loaded", ok ? "true" : "false");
    if (!ok) {
      broken += 1;
      var note = document.createElement("p");
      note.className = "broken";
      note.textContent = "figure file not found: " + img.getAttribute("src");
      img.parentNode.insertBefore(note, img);
    }
  });
  document.body.setAttribute("data-figures-checked", String(images.length));
  document.body.setAttribute("data-figures-broken", String(broken));
  // layout facts for the browser tests: horizontal overflow and where the headline table starts
  var headline = document.getElementById("headline");
  document.body.setAttribute("data-scroll-width", String(document.documentElement.scrollWidth));
  document.body.setAttribute("data-viewport", window.innerWidth + "x" + window.innerHeight);
  if (headline) {
    document.body.setAttribute("data-headline-top", String(Math.round(headline.getBoundingClientRect().top)));
  }
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _stamp(seconds: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds)) if isinstance(seconds, int | float) else "–"


def _json(value: Any) -> str:
    return f"<pre>{_e(json.dumps(value, indent=1, sort_keys=True, default=str))}</pre>"


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _links(relative_paths: list[str]) -> str:
    return " · ".join(f'<a href="{_e(p)}">{_e(Path(p).suffix[1:] or p)}</a>' for p in relative_paths)


def _cell_details(cell: CellResult) -> str:
    record = cell.record or {}
    rows = [("key", _e(cell.key)), ("status", _e(cell.status_text())), ("block", _e(cell.block)),
            ("record file", _e(f"{layout.CELLS}/{cell.record_name}" if cell.record_name else "–")),
            ("scenario", _json(cell.scenario_info) if cell.scenario_info else _e(cell.scenario)),
            ("defence", _e(f"{cell.defence} ({cell.defence_name})")),
            ("defence parameters", _json(cell.defence_params) if cell.defence_params else "–"),
            ("attack", _e(f"{cell.attack} ({cell.attack_name})")), ("attack settings", _json(cell.attack_params)),
            ("evaluation", _json(record.get("eval_settings") or cell.eval_settings))]
    if record:
        counts = record.get("counts") or {}
        rows += [("stage", _e(record.get("stage", "–"))),
                 ("draws / decision", _e(f"{record.get('draws', '–')} / {record.get('decision', '–')}")),
                 ("forward / backward examples",
                  _e(f"{counts.get('forward_examples', '–')} / {counts.get('backward_examples', '–')}")),
                 ("attack time (s)", _e(f"{record['attack_seconds']:.1f}" if "attack_seconds" in record else "–")),
                 ("wall time (s)", _e(f"{record['wall_seconds']:.1f}" if "wall_seconds" in record else "–")),
                 ("started / finished",
                  _e(f"{_stamp(record.get('started_at'))} / {_stamp(record.get('finished_at'))}")),
                 ("git commit", _e(record.get("git_commit") or "–")), ("host", _e(record.get("host") or "–")),
                 ("hardware", _e(record.get("hardware") or "–")),
                 ("SLURM job", _e(record.get("slurm_job_id") or "–")), ("log", _e(record.get("log") or "–")),
                 ("packages", _json(record.get("packages") or {}))]
    if cell.status == "failed":
        rows.append(("error", f"<pre>{_e(record.get('error', ''))}</pre>"))
    summary = f"{_e(cell.label)} — {_e(cell.status_text())}"
    return f"<details><summary>{summary}</summary>{_kv(rows)}</details>"


def _diagnostics(grid: GridResults) -> str:
    if not grid.diagnostics:
        return (f"<p>No diagnostics files in <code>{layout.DIAGNOSTICS}/</code>. Run <code>python -m bench.diagnose "
                f"grid={_e(grid.name)} cell=&lt;scenario/defence/attack&gt;</code> to check a cell for gradient "
                "masking and attack convergence.</p>")
    parts = []
    for report in grid.diagnostics:
        flags = report.get("flags") or {}
        raised = [name for name, flag in flags.items() if isinstance(flag, dict) and flag.get("raised")]
        title = (f"{report.get('scenario', '?')}/{report.get('defence', '?')}/{report.get('attack', '?')}"
                 f"/seed{report.get('seed', '?')} (n={report.get('n', '?')}, {report.get('norm', '?')} "
                 f"eps={report.get('eps', '?')})")
        verdict = (f'<span class="raised">{len(raised)} flag(s) raised: {_e(", ".join(raised))}</span>' if raised
                   else "no flag raised")
        rows = "".join(
            f'<tr><td>{_e(name)}</td><td class="{"failed" if flag.get("raised") else ""}">'
            f'{"raised" if flag.get("raised") else "ok"}</td><td><details><summary>evidence</summary>'
            f'{_json(flag.get("evidence", {}))}</details></td></tr>'
            for name, flag in flags.items() if isinstance(flag, dict))
        budget = (f"<details><summary>diagnostics budget</summary>{_json(report['budget'])}</details>"
                  if report.get("budget") else "")
        file = f"{layout.DIAGNOSTICS}/{report['_path']}"
        parts.append(f"<h3>{_e(title)}</h3><p>{verdict} · file <code>{_e(file)}</code></p>"
                     f"{budget}"
                     f'<table class="results"><thead><tr><th>flag</th><th>state</th><th>evidence</th></tr></thead>'
                     f"<tbody>{rows}</tbody></table>")
    return "\n".join(parts)


def _figures(figures: list[FigureFile], results_dir: Path) -> str:
    parts = []
    for figure in figures:
        if not figure.drawn:
            parts.append(f"<p><b>{_e(figure.title)}</b>: not drawn — {_e(figure.reason)}.</p>")
            continue
        png = figure.png.relative_to(results_dir).as_posix()
        pdf = figure.pdf.relative_to(results_dir).as_posix()
        parts.append(f'<figure><img src="{_e(png)}" alt="{_e(figure.title)}" data-figure="{_e(figure.name)}">'
                     f"<figcaption><b>{_e(figure.title)}.</b> {_e(figure.caption)} "
                     f'<a href="{_e(png)}">PNG</a> · <a href="{_e(pdf)}">PDF</a></figcaption></figure>')
    return "\n".join(parts)


def _status(grid: GridResults) -> str:
    counts = grid.counts()
    spans = "".join(f"<span>{v} {_e(k)}</span>" for k, v in counts.items())
    parts = [f'<p class="counts"><b>{len(grid.cells)} cells:</b> {spans}</p>']
    if not grid.has_plan:
        parts.append("<p>No plan file (.plan/plan.json): the cells shown are the records found.</p>")
    if grid.config_note:
        parts.append(f"<p>{_e(grid.config_note)}</p>")
    failed = [c for c in grid.cells if c.status == "failed"]
    if failed:
        items = "".join(f"<li>{_e(c.label)}: {_e(c.error_line())} (log: {_e((c.record or {}).get('log') or '–')})"
                        "</li>" for c in failed)
        parts.append(f"<p>Failed cells (no result; see their details below):</p><ul>{items}</ul>")
    unfinished = [c for c in grid.cells if c.status in ("missing", "partial")]
    if unfinished:
        items = "".join(f"<li>{_e(c.label)}: {_e(c.status_text())}</li>" for c in unfinished)
        parts.append(f"<p>Cells without a record yet:</p><ul>{items}</ul>")
    if grid.stray_records:
        names = ", ".join(Path(r.get("_path", "?")).name for r in grid.stray_records)
        parts.append(f"<p>Records not in the current plan (not shown): {_e(names)}</p>")
    return "\n".join(parts)


def _section_html(section: Section, results_dir: Path) -> str:
    parts = [f"<p>{_e(section.text)}</p>"] if section.text else []
    tables = [f'<div class="wide">{to_html(table)}</div><p class="files">Files: {_links(files)}</p>'
              for table, files in section.tables]
    figures = [_figures(section.figures, results_dir)] if section.figures else []
    parts += figures + tables if section.figures_first else tables + figures
    return "\n".join(parts + ([section.html] if section.html else []))


def _banner(warnings: list[str], line: str) -> str:
    if not warnings:
        return f'<p class="provenance ok" id="provenance">{_e(line)}</p>'
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return f'<div class="provenance warn" id="provenance"><b>Provenance warning</b><ul>{items}</ul></div>'


def write_page(grid: GridResults, sections: list[Section], warnings: list[str], provenance_line: str,
               path: Path) -> Path:
    """Write index.html: the provenance banner, then `sections` in order, then status, diagnostics and cells."""
    sections = [*sections,
                Section("status", "Status", html=_status(grid)),
                Section("diagnostics", "Diagnostics", html=_diagnostics(grid)),
                Section("cell-details", "Cell settings and provenance",
                        html="\n".join(_cell_details(c) for c in grid.cells))]
    nav = " · ".join(f'<a href="#{s.anchor}">{_e(s.title)}</a>' for s in sections)
    body = "\n".join(f'<h2 id="{s.anchor}">{_e(s.title)}</h2>\n{_section_html(s, path.parent)}' for s in sections)
    counts = ", ".join(f"{v} {k}" for k, v in grid.counts().items() if v)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>Grid {_e(grid.name)}: results</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>Grid {_e(grid.name)}</h1>\n<p class=\"lede\">{len(grid.cells)} cells ({_e(counts)}), rendered from "
            f"the records in <code>cells/</code> by <code>python -m bench.report grid={_e(grid.name)}</code>. "
            f"Hover a number for its attacks' budgets.</p>\n{_banner(warnings, provenance_line)}\n"
            f"<nav>{nav}</nav>\n{body}\n<script>{SCRIPT}</script>\n</body>\n</html>\n")
    path.write_text(page, encoding="utf-8")
    return path
