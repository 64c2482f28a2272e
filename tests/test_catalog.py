"""`python -m bench.run list`: every grid, scenario, defence, attack and executor with its one-line description."""

from __future__ import annotations

import attacks
import defences
from bench.catalog import render
from bench.conffiles import available
from bench.run import main


def test_list_names_everything_with_one_line_each(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sections = {}
    for block in out.split("\n\n"):
        head, *lines = block.strip().splitlines()
        sections[head] = {line.split()[0]: line.split(None, 1)[1] for line in lines if line.startswith("  ")}
    assert set(sections["grids:"]) == set(available("grid"))
    assert set(sections["scenarios:"]) == set(available("scenario"))
    assert set(sections["defences:"]) == set(defences.names())
    assert set(sections["attacks:"]) == set(attacks.names())
    assert sections["grids:"]["demo"].startswith("digits demo")           # the grid file's description
    assert sections["attacks:"]["pgd_eot"].startswith("PGD+EOT")         # the class docstring's first line
    assert sections["executors:"]["slurm"].startswith("SLURM executor")  # the module docstring when no class one
    assert not any("(no description)" in line for s in sections.values() for line in s.values())


def test_help_mentions_list(capsys):
    assert main(["--help"]) == 0
    assert "python -m bench.run list" in capsys.readouterr().out


def test_render_aligns_columns():
    text = render({"grids": [("a", "first"), ("longer", "second")]})
    assert text.splitlines()[:3] == ["grids:", "  a       first", "  longer  second"]
