"""Held-out gains with their paired standard errors."""

from __future__ import annotations

import math

import pytest

from mergesearch.search.optimize.significance import Gain, paired_gain


def items(scores: list[float]) -> list[list[float]]:
    return [[i, s] for i, s in enumerate(scores)]


def test_paired_error_is_the_error_of_the_per_item_differences():
    ours = [1, 1, 0, 1, 0, 1, 1, 0]
    theirs = [1, 0, 0, 1, 0, 0, 1, 0]
    gain = paired_gain({"t": items(ours)}, {"t": items(theirs)}, {"t": 1.0})
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    mean = sum(diffs) / 8
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 7)
    assert gain.value == pytest.approx(0.25)
    assert gain.stderr == pytest.approx(sd / math.sqrt(8))


def test_a_weighted_sum_adds_means_and_variances_by_weight():
    a = {"x": items([1, 0, 1, 1]), "y": items([0, 0, 1, 0])}
    b = {"x": items([0, 0, 1, 0]), "y": items([0, 1, 1, 0])}
    one_x = paired_gain({"x": a["x"]}, {"x": b["x"]}, {"x": 1.0})
    one_y = paired_gain({"y": a["y"]}, {"y": b["y"]}, {"y": 1.0})
    both = paired_gain(a, b, {"x": 0.5, "y": -0.5})
    assert both.value == pytest.approx(0.5 * one_x.value - 0.5 * one_y.value)
    assert both.stderr == pytest.approx(math.sqrt(0.25 * one_x.stderr**2 + 0.25 * one_y.stderr**2))


def test_only_documents_both_were_scored_on_count():
    gain = paired_gain({"t": [[0, 1.0], [5, 1.0]]}, {"t": [[5, 0.0], [9, 0.0]]}, {"t": 1.0})
    assert gain.value == 1.0 and gain.stderr == 0.0
    assert paired_gain({"t": [[0, 1.0]]}, {"t": [[1, 1.0]]}, {"t": 1.0}) is None


def test_a_gain_under_two_standard_errors_is_called_not_significant():
    assert Gain(0.05, 0.02).significant is True
    assert Gain(0.03, 0.02).significant is False
    assert "not significant" in Gain(0.03, 0.02).describe()
    assert "not significant" not in Gain(0.05, 0.02).describe()
    assert Gain(0.05).significant is None and Gain(0.05).describe() == "+0.050"
