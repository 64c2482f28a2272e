"""Count settings of the attacks (steps, queries, draws, ...) below 1 are refused with the setting's name."""

from __future__ import annotations

import pytest

import attacks
from attacks.base import require_at_least_one
from attacks.diagnostics import Budget


@pytest.mark.parametrize(("name", "setting"), [
    ("aa", "target_classes"), ("aa", "square_queries"), ("randaa", "eot"), ("adaptive", "pgd_steps"),
    ("adaptive", "selection_draws"),
])
def test_attack_refuses_a_count_below_one(name, setting):
    with pytest.raises(ValueError, match=rf"^{setting} must be >= 1, got 0$"):
        attacks.build(name, eps=0.1, norm="Linf", **{setting: 0})


def test_optional_counts_take_none_but_not_zero():
    Budget(eot=None, draws=None)
    with pytest.raises(ValueError, match=r"^draws must be >= 1 \(or None for the default\), got 0$"):
        Budget(draws=0)
    with pytest.raises(ValueError, match=r"^steps must be >= 1, got -3$"):
        Budget(steps=-3)


def test_require_at_least_one_names_the_first_offender():
    class Settings:
        steps, eot, draws = 5, 0, -1

    with pytest.raises(ValueError, match="^eot must be >= 1"):
        require_at_least_one(Settings(), ("steps", "eot", "draws"))
    require_at_least_one(Settings(), ("steps",))
