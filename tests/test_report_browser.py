"""The HTML report page opened in a real headless browser (Debian's chromium): tables present, figures loaded,
and the layout a reader sees at 1400 px: no horizontal overflow, the headline table in the first screen.

The page marks each figure `data-loaded="true"` once the image has decoded (naturalWidth > 0) and writes its
layout facts on <body> (`data-scroll-width`, `data-headline-top`, `data-viewport`); chromium's `--dump-dom`
prints the DOM after the page's load event, so the test reads what a user's browser shows. A screenshot of the
first screen is checked too: 1400 px wide, and not blank where the headline table is.
Install chromium with `apt-get update && apt-get install -y chromium`; without it these tests are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import write_grid_fixture

from bench.report import render

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get update && apt-get install -y chromium)")


WIDTH, HEIGHT = 1400, 900


def _chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=5000", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def dump_dom(page: Path, profile: Path) -> str:
    return _chromium(profile, "--dump-dom", page.resolve().as_uri()).stdout


def body_attribute(dom: str, name: str) -> str:
    return re.search(rf'<body [^>]*{name}="([^"]*)"', dom).group(1)


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    grid_dir = write_grid_fixture(tmp_path)
    render(grid_dir, report_config={})
    return grid_dir


def test_page_shows_tables_and_loads_every_figure(rendered, tmp_path):
    dom = dump_dom(rendered / "index.html", tmp_path / "profile")
    # the paper layouts and the cells table, with the failed and unfinished cells marked as such
    for table_id in ("headline", "overstatement", "paired", "carso_table2", "carso_table2-paper", "carso_table3",
                     "cells"):
        assert re.search(rf'<table class="results" id="{table_id}">', dom), table_id
    assert '<td class="failed">failed: RuntimeError: out of memory</td>' in dom
    assert '<td class="unfinished">partial (1/2 batches)</td>' in dom
    assert '<td class="nowrap">0.9216</td>' in dom and '<td class="nowrap">-0.461 (outside CI)</td>' in dom
    # every figure is an <img> that the browser decoded
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 6  # overstatement, paired differences, eps, heatmap, steps, EOT
    assert all('data-loaded="true"' in tag for tag in images), images
    assert 'data-figures-checked="6"' in dom and 'data-figures-broken="0"' in dom
    # the page opens with the provenance line and the headline table, in that order, before the paper layouts
    order = [dom.index(marker) for marker in ('id="provenance"', 'id="headline"', 'id="overstatement"',
                                              'id="carso_table2"', 'id="cells"')]
    assert order == sorted(order)
    # every measured number of the headline has its attacks' budgets one hover away
    assert re.search(r'<td class="nowrap" title="aa \(aa, end_to_end\): [^"]*\npgd \(pgd, end_to_end\)[^"]*">'
                     r"0.500 ", dom)
    # each cell's settings and provenance, and the diagnostics flags
    assert dom.count("<details><summary>cifar10_toy/") == 6
    assert "eps_not_to_chance" in dom and "abc123" in dom


def test_layout_at_1400_px_has_no_overflow_and_the_headline_on_the_first_screen(rendered, tmp_path):
    dom = dump_dom(rendered / "index.html", tmp_path / "profile")
    viewport_width, viewport_height = map(int, body_attribute(dom, "data-viewport").split("x"))
    assert viewport_width == WIDTH
    assert int(body_attribute(dom, "data-scroll-width")) <= WIDTH
    assert 0 < int(body_attribute(dom, "data-headline-top")) < viewport_height - 100  # its first rows show too
    # the screenshot a reader gets: full width, and the headline area is not blank
    from PIL import Image

    shot = tmp_path / "first_screen.png"
    _chromium(tmp_path / "profile2", f"--screenshot={shot}", (rendered / "index.html").resolve().as_uri())
    image = Image.open(shot).convert("L")
    assert image.size == (WIDTH, HEIGHT)
    top = int(body_attribute(dom, "data-headline-top"))
    band = image.crop((0, top, WIDTH // 2, min(HEIGHT, top + 100)))
    assert band.getextrema()[0] < 100  # dark text of the table's caption and cells, not an empty band


def test_page_reports_a_missing_figure_file(rendered, tmp_path):
    (rendered / "figures" / "heatmap.png").unlink()
    dom = dump_dom(rendered / "index.html", tmp_path / "profile")
    heatmap = re.search(r'<img [^>]*data-figure="heatmap"[^>]*>', dom).group(0)
    assert 'data-loaded="false"' in heatmap
    assert 'data-figures-broken="1"' in dom
    assert "figure file not found: figures/heatmap.png" in dom
