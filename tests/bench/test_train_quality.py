"""bench/train_quality.py: the pure parts of the report (which checkpoint reached the recipe, intervals)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from helpers import REPO


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tq():
    return load("train_quality")  # puts bench/ on sys.path for its own imports


@pytest.fixture(scope="module")
def report(tq):
    return sys.modules["train_quality_report"]


def test_first_reaching_is_the_earliest_checkpoint_at_or_above_the_target(report) -> None:
    tq = report
    points = [
        tq.Checkpoint(step=30, wall_s=90.0, path="c", score=0.8),
        tq.Checkpoint(step=10, wall_s=30.0, path="a", score=0.4),
        tq.Checkpoint(step=20, wall_s=60.0, path="b", score=0.7),
        tq.Checkpoint(step=25, wall_s=75.0, path="u", score=None),  # not scored
    ]
    assert tq.first_reaching(points, 0.7).step == 20  # equal counts as reached
    assert tq.first_reaching(points, 0.75).step == 30
    assert tq.first_reaching(points, 0.9) is None
    assert tq.first_reaching(points, None) is None  # no recipe score: nothing to reach
    assert tq.first_reaching([], 0.1) is None


def test_wilson_interval_contains_the_mean_and_stays_in_0_1(tq) -> None:
    for mean, n in [(0.0, 40), (1.0, 40), (0.5, 40), (0.9, 10)]:
        low, high = tq.wilson(mean, n)
        assert 0.0 <= low <= mean <= high <= 1.0
    low, high = tq.wilson(0.5, 100)
    assert high - low == pytest.approx(0.192, abs=0.005)  # the textbook value for 50/100
    assert tq.wilson(0.5, 0) == (0.0, 1.0)
