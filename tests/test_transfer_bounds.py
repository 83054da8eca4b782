"""Galanti et al. (2022) CDNV bound on m-shot NCC error: closed form on a simplex ETF, brute-force CDNV."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ncbounds.errors import UsageError
from ncbounds.transfer.bounds import cdnv_from_moments, class_moments, galanti2022_transfer


def _etf(k, r):
    m = np.eye(k) - 1.0 / k
    return m / np.linalg.norm(m, axis=1, keepdims=True) * r


def test_closed_form_on_a_simplex_etf():
    # isotropic σ²I in d dimensions: v_c = σ²d, ‖μ_i − μ_j‖² = 2r²K/(K−1)  ⇒  CDNV = σ²d(K−1)/(2r²K)
    k, d, r, sigma2 = 6, 6, 3.0, 0.05
    cdnv = sigma2 * d * (k - 1) / (2 * r * r * k)
    out = galanti2022_transfer(_etf(k, r), np.full(k, sigma2 * d), shots=[1, 5], ways=5, split="test")
    assert out["cdnv"] == pytest.approx(cdnv, rel=1e-12)
    assert out["per_m"][1] == pytest.approx(8 * 4 * cdnv * 2, rel=1e-12)  # 8·(C'−1)·CDNV·(1 + 1/m), C' = 5
    assert out["value"] == out["per_m"][1]
    assert out["per_m"][5] == pytest.approx(8 * 4 * cdnv * 1.2, rel=1e-12)
    assert out["status"] == "plug-in" and out["constant"] == 8 and out["uses_test_data"] and out["vacuous"] is False


def test_cdnv_from_features_matches_brute_force():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    x = rng.normal(size=(4, 5))[y] * 3 + rng.normal(size=(200, 5)) * rng.uniform(0.5, 2, 4)[y, None]
    means, var = class_moments(x, y)
    terms = []
    for i, j in itertools.combinations(range(4), 2):
        vi = np.mean(np.sum((x[y == i] - x[y == i].mean(0)) ** 2, 1))
        vj = np.mean(np.sum((x[y == j] - x[y == j].mean(0)) ** 2, 1))
        terms.append((vi + vj) / (2 * np.sum((x[y == i].mean(0) - x[y == j].mean(0)) ** 2)))
    assert cdnv_from_moments(means, var) == pytest.approx(np.mean(terms), rel=1e-12)


def test_coinciding_means_and_bad_arguments():
    out = galanti2022_transfer(np.zeros((3, 2)), np.ones(3), shots=5)
    assert out["value"] is None and out["cdnv"] is None and out["vacuous"] is None
    with pytest.raises(UsageError):
        galanti2022_transfer(_etf(3, 1.0), np.ones(3), shots=5, ways=4)
    with pytest.raises(UsageError):
        galanti2022_transfer(_etf(3, 1.0), np.ones(3), shots=0)
