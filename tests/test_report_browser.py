"""The HTML report page opened in a real headless browser (Debian's chromium): tables present, figures loaded.

The page marks each figure `data-loaded="true"` once the image has decoded (naturalWidth > 0); chromium's
`--dump-dom` prints the DOM after the page's load event, so the test reads what a user's browser shows.
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


def dump_dom(page: Path, profile: Path) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    grid_dir = write_grid_fixture(tmp_path)
    render(grid_dir, report_config={})
    return grid_dir


def test_page_shows_tables_and_loads_every_figure(rendered, tmp_path):
    dom = dump_dom(rendered / "index.html", tmp_path / "profile")
    # the paper layouts and the cells table, with the failed and unfinished cells marked as such
    for table_id in ("carso_table2", "carso_table3", "cells"):
        assert re.search(rf'<table class="results" id="{table_id}">', dom), table_id
    assert '<td class="failed">failed: RuntimeError: out of memory</td>' in dom
    assert '<td class="unfinished">partial (1/2 batches)</td>' in dom
    assert "<td>0.9216</td>" in dom and "<td>-0.461 (outside CI)</td>" in dom
    # every figure is an <img> that the browser decoded
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 4
    assert all('data-loaded="true"' in tag for tag in images), images
    assert 'data-figures-checked="4"' in dom and 'data-figures-broken="0"' in dom
    # each cell's settings and provenance, and the diagnostics flags
    assert dom.count("<details><summary>cifar10_toy/") == 6
    assert "eps_not_to_chance" in dom and "abc123" in dom


def test_page_reports_a_missing_figure_file(rendered, tmp_path):
    (rendered / "figures" / "heatmap.png").unlink()
    dom = dump_dom(rendered / "index.html", tmp_path / "profile")
    heatmap = re.search(r'<img [^>]*data-figure="heatmap"[^>]*>', dom).group(0)
    assert 'data-loaded="false"' in heatmap
    assert 'data-figures-broken="1"' in dom
    assert "figure file not found: figures/heatmap.png" in dom
