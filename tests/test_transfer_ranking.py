"""Ranking statistics (against scipy and brute-force definitions) and the NCTI combination."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from ncbounds.errors import DataError
from ncbounds.transfer.ranking import (
    kendall_tau,
    ncti_combine,
    ncti_normalize,
    pearson_r,
    ranking_summary,
    top_k_hit,
    weighted_tau,
)


def brute_kendall_tau_a(x, y):
    pairs = list(itertools.combinations(range(len(x)), 2))
    return sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs) / len(pairs)


def brute_weighted_tau(x, y):
    """Vigna (2015) weighted τ without ties: pair weight 1/(r_i+1) + 1/(r_j+1), r the 0-based decreasing rank;
    averaged over the ranking by x and the ranking by y (scipy's rank=True)."""
    def one(rank_by):
        r = np.empty(len(rank_by), dtype=int)
        r[np.argsort(-rank_by)] = np.arange(len(rank_by))
        num = den = 0.0
        for i, j in itertools.combinations(range(len(x)), 2):
            w = 1 / (r[i] + 1) + 1 / (r[j] + 1)
            num += w * np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            den += w
        return num / den
    return (one(x) + one(y)) / 2


def test_kendall_and_weighted_tau_equal_scipy_and_the_definitions():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.normal(size=12), rng.normal(size=12)
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-14)
        assert kendall_tau(x, y) == pytest.approx(brute_kendall_tau_a(x, y), abs=1e-12)  # no ties: τ-a = τ-b
        assert weighted_tau(x, y) == pytest.approx(stats.weightedtau(x, y).statistic, abs=1e-14)
        assert weighted_tau(x, y) == pytest.approx(brute_weighted_tau(x, y), abs=1e-12)
        assert pearson_r(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)


def test_orientation_against_an_error_column():
    score = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    error = np.array([0.10, 0.12, 0.30, 0.20, 0.50, 0.45])  # lower is better
    tau = kendall_tau(score, error, target_lower_is_better=True)
    assert tau > 0 and tau == pytest.approx(-stats.kendalltau(score, error).statistic)
    # weighted τ is not odd under negating one side: the orientation decides which end is weighted
    assert weighted_tau(score, error, target_lower_is_better=True) == pytest.approx(stats.weightedtau(score, -error).statistic)
    assert weighted_tau(score, error, target_lower_is_better=True) != pytest.approx(-stats.weightedtau(score, error).statistic)
    assert weighted_tau(-score, error, score_lower_is_better=True, target_lower_is_better=True) == pytest.approx(
        stats.weightedtau(score, -error).statistic)


def test_top_k_hits_and_missing_values():
    score = [0.9, None, 0.7, 0.8, 0.1]
    acc = [0.50, 0.99, 0.60, 0.70, 0.65]  # model 1 is missing a score and is dropped
    assert top_k_hit(score, acc, 1) == 0.0  # score's best is model 0, the best complete model is model 3
    assert top_k_hit(score, acc, 2) == 1.0
    summary = ranking_summary(score, acc)
    assert summary["n"] == 4 and summary["top1_hit"] == 0.0 and summary["top3_hit"] == 1.0
    assert summary["kendall_tau"] == pytest.approx(stats.kendalltau([0.9, 0.7, 0.8, 0.1], [0.5, 0.6, 0.7, 0.65]).statistic)
    assert kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert weighted_tau([1.0], [2.0]) is None
    with pytest.raises(DataError):
        kendall_tau([1.0, 2.0], [1.0, 2.0, 3.0])


def test_ncti_normalization_on_a_hand_made_batch():
    seli = [10.0, 20.0, 30.0, 15.0]
    ncc = [0.50, 0.90, 0.70, 0.60]
    vc = [1.0, 3.0, 2.0, 1.5]
    # by hand: seli' = 0, .5, 1, .25; ncc' = 0, 1, .5, .25; vc' = 0, 1, .5, .25
    assert ncti_normalize(seli) == pytest.approx([0.0, 0.5, 1.0, 0.25])
    assert ncti_combine(seli, ncc, vc) == pytest.approx([0.0, 0.5, 1.0, 0.25])
    # a model missing a term is left out of the min/max and gets None
    out = ncti_combine(seli + [100.0], ncc + [None], vc + [0.0])
    assert out[:4] == pytest.approx([0.0, 0.5, 1.0, 0.25]) and out[4] is None
    # constant term: contributes 0; a single model: undefined
    assert ncti_combine([1.0, 1.0], [0.2, 0.4], [3.0, 3.0]) == pytest.approx([0.0, 1.0])
    assert ncti_combine([1.0], [0.2], [3.0]) == [None]
