"""Tests for ncbounds.stats.binomial: kl, kl⁻¹ (true end points), Clopper–Pearson, binomial-kl."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ncbounds.stats.binomial import (
    binomial_kl_upper,
    clopper_pearson,
    clopper_pearson_upper,
    kl_bernoulli,
    kl_inverse_lower,
    kl_inverse_upper,
)

PUBLISHED = [  # DESIGN §6
    (0.0, 0.01, 0.009950166251),
    (0.01, 0.01, 0.031125881450),
    (0.05, 0.1, 0.206401407806),
    (0.2, 0.5, 0.685261925018),
]


def _random_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 5, size=n)
    q = np.where(
        kind == 0,
        rng.uniform(0, 1, n),
        np.where(kind == 1, 10.0 ** rng.uniform(-14, -1, n),
                 np.where(kind == 2, 1 - 10.0 ** rng.uniform(-14, -1, n), rng.uniform(0, 1, n))),
    )
    q[kind == 3] = rng.choice([0.0, 1.0, 0.5], size=int(np.sum(kind == 3)))
    c = 10.0 ** rng.uniform(-25, 1.5, n)
    return q, c


# --------------------------------------------------------------------------- kl


def test_kl_conventions():
    assert kl_bernoulli(0.0, 0.0) == 0.0
    assert kl_bernoulli(1.0, 1.0) == 0.0
    assert kl_bernoulli(0.3, 0.3) == 0.0
    assert kl_bernoulli(0.0, 0.5) == pytest.approx(math.log(2), rel=1e-15)
    assert kl_bernoulli(1.0, 0.25) == pytest.approx(math.log(4), rel=1e-15)
    for q, p in [(0.5, 0.0), (0.5, 1.0), (1.0, 0.0), (0.0, 1.0)]:
        assert kl_bernoulli(q, p) == math.inf
    with pytest.raises(ValueError):
        kl_bernoulli(1.5, 0.2)
    with pytest.raises(ValueError):
        kl_bernoulli(0.5, -0.1)


@pytest.fixture
def mp():
    """mpmath at 60 significant digits (restored afterwards); skips if mpmath is absent.

    The inverse test has c >= 1e-25, where kl near the root needs ~15 digits beyond the
    cancellation of its two terms."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        yield mpmath


def test_kl_matches_mpmath_including_near_diagonal(mp):
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 1, 300)
    step = rng.choice([-1, 1], 300) * 10.0 ** rng.uniform(-12, -0.5, 300)
    p = np.clip(q + step, 1e-300, 1 - 1e-16)
    got = kl_bernoulli(q, p)
    for qi, pi, gi in zip(q, p, got, strict=True):
        qm, pm = mp.mpf(float(qi)), mp.mpf(float(pi))
        ref = qm * mp.log(qm / pm) + (1 - qm) * mp.log((1 - qm) / (1 - pm))
        assert abs(gi - ref) <= 1e-13 * ref + 1e-300


def test_kl_vectorised_shape():
    out = kl_bernoulli(np.array([[0.1], [0.2]]), np.array([0.3, 0.4, 0.5]))
    assert out.shape == (2, 3)
    assert isinstance(kl_bernoulli(0.1, 0.2), float)


# --------------------------------------------------------------------------- kl⁻¹


@pytest.mark.parametrize("q,c,expected", PUBLISHED)
def test_kl_inverse_published_values(q, c, expected):
    assert kl_inverse_upper(q, c) == pytest.approx(expected, abs=1e-9)


def test_kl_inverse_published_values_vectorised():
    q, c, expected = map(np.array, zip(*PUBLISHED, strict=True))
    np.testing.assert_allclose(kl_inverse_upper(q, c), expected, atol=1e-9, rtol=0)


def test_kl_inverse_edge_cases():
    assert kl_inverse_upper(0.3, 0.0) == 0.3
    assert kl_inverse_upper(0.3, -1.0) == 0.3
    assert kl_inverse_upper(0.3, math.inf) == 1.0
    assert kl_inverse_upper(0.3, 1e300) == 1.0
    assert kl_inverse_upper(1.0, 0.1) == 1.0
    assert kl_inverse_upper(0.0, math.inf) == 1.0
    assert kl_inverse_lower(0.3, 0.0) == 0.3
    assert kl_inverse_lower(0.3, math.inf) == 0.0
    assert kl_inverse_lower(0.3, 1e300) == 0.0
    assert kl_inverse_lower(0.0, 0.1) == 0.0
    # kl(1‖p) = -ln p  ->  lower inverse exp(-c);  kl(0‖p) = -ln(1-p)  ->  upper 1 - exp(-c)
    assert kl_inverse_lower(1.0, 0.7) == pytest.approx(math.exp(-0.7), rel=1e-13)
    assert kl_inverse_lower(1.0, 0.7) <= math.exp(-0.7)
    assert kl_inverse_upper(0.0, 0.7) == pytest.approx(-math.expm1(-0.7), rel=1e-13)
    assert kl_inverse_upper(0.0, 0.7) >= -math.expm1(-0.7)
    with pytest.raises(ValueError):
        kl_inverse_upper(0.3, math.nan)
    with pytest.raises(ValueError):
        kl_inverse_upper(-0.1, 0.1)
    out = kl_inverse_upper(np.array([[0.1, 0.2]]), np.array([[0.01], [0.1]]))
    assert out.shape == (2, 2)


def test_kl_inverse_upper_is_true_upper_end_float_checks():
    q, c = _random_pairs(2000, seed=1)
    p = kl_inverse_upper(q, c)
    assert np.all(p >= q) and np.all(p <= 1)
    # p is infeasible (kl > c, up to float rounding of kl) unless it is 1 ...
    kl_p = kl_bernoulli(q, p)
    assert np.all((p == 1.0) | (kl_p >= c * (1 - 1e-12)))
    # ... and a slightly smaller point is feasible: p is not far above the inverse.
    p_minus = np.maximum(q, p - np.maximum(1e-6 * (p - q), 8 * np.spacing(p)))
    assert np.all(kl_bernoulli(q, p_minus) <= c)
    # mirror image for the lower end
    lo = kl_inverse_lower(q, c)
    assert np.all(lo <= q) and np.all(lo >= 0)
    assert np.all((lo == 0.0) | (kl_bernoulli(q, lo) >= c * (1 - 1e-12)))
    lo_plus = np.minimum(q, lo + np.maximum(1e-6 * (q - lo), 8 * np.spacing(lo)))
    assert np.all(kl_bernoulli(q, lo_plus) <= c)


def _mp_kl(mp, q, p):
    t1 = q * mp.log(q / p) if q > 0 else mp.mpf(0)
    t2 = (1 - q) * mp.log((1 - q) / (1 - p)) if q < 1 else mp.mpf(0)
    return t1 + t2


def test_kl_inverse_matches_high_precision_reference_and_is_never_inside(mp):
    """Bracket the exact end points with 60-digit kl evaluations: kl(q‖·) is monotone on each side
    of q, so kl(q‖u) > c ≥ kl(q‖u − 1e-12) proves sup{p : kl(q‖p) ≤ c} ∈ (u − 1e-12, u)."""
    tol = mp.mpf("1e-12")
    q, c = _random_pairs(2000, seed=2)
    up = kl_inverse_upper(q, c)
    lo = kl_inverse_lower(q, c)
    for qi, ci, ui, li in zip(q, c, up, lo, strict=True):
        qm, cm = mp.mpf(float(qi)), mp.mpf(float(ci))
        um, lm = mp.mpf(float(ui)), mp.mpf(float(li))
        # upper end: never below the sup, and within 1e-12 of it
        if ui < 1:
            assert _mp_kl(mp, qm, um) > cm, (qi, ci, ui)
        assert _mp_kl(mp, qm, max(qm, um - tol)) <= cm, (qi, ci, ui)
        # lower end: never above the inf, and within 1e-12 of it
        if li > 0:
            assert _mp_kl(mp, qm, lm) > cm, (qi, ci, li)
        assert _mp_kl(mp, qm, min(qm, lm + tol)) <= cm, (qi, ci, li)


# --------------------------------------------------------------------------- Clopper–Pearson


@pytest.mark.parametrize("n", [1, 7, 100, 10_000])
@pytest.mark.parametrize("delta", [0.01, 0.05, 0.2])
def test_clopper_pearson_closed_forms(n, delta):
    # k = 0: one-sided upper 1 - delta^(1/n); two-sided upper 1 - (delta/2)^(1/n), lower 0
    assert clopper_pearson_upper(0, n, delta) == pytest.approx(1 - delta ** (1 / n), rel=1e-12)
    lo, hi = clopper_pearson(0, n, alpha=delta)
    assert lo == 0.0 and hi == pytest.approx(1 - (delta / 2) ** (1 / n), rel=1e-12)
    # k = n: upper 1; two-sided lower (delta/2)^(1/n); one-sided lower delta^(1/n)
    lo, hi = clopper_pearson(n, n, alpha=delta)
    assert hi == 1.0 and lo == pytest.approx((delta / 2) ** (1 / n), rel=1e-12)
    lo, hi = clopper_pearson(n, n, alpha=delta, side="lower")
    assert hi == 1.0 and lo == pytest.approx(delta ** (1 / n), rel=1e-12)
    assert clopper_pearson_upper(n, n, delta) == 1.0


def test_clopper_pearson_is_binomial_tail_inversion():
    for k, n, a in [(3, 50, 0.05), (17, 200, 0.01), (1, 10, 0.1), (99, 100, 0.05)]:
        hi = clopper_pearson_upper(k, n, a)
        assert stats.binom.cdf(k, n, hi) == pytest.approx(a, rel=1e-8)
        lo, _ = clopper_pearson(k, n, alpha=a, side="lower")
        assert stats.binom.sf(k - 1, n, lo) == pytest.approx(a, rel=1e-8)
        lo2, hi2 = clopper_pearson(k, n, alpha=a)
        assert lo2 <= k / n <= hi2 and lo2 < lo <= hi < hi2


def test_clopper_pearson_input_validation_and_vectorised():
    with pytest.raises(ValueError):
        clopper_pearson(5, 4)
    with pytest.raises(ValueError):
        clopper_pearson(1.5, 4)
    with pytest.raises(ValueError):
        clopper_pearson(1, 4, alpha=1.0)
    with pytest.raises(ValueError):
        clopper_pearson(1, 4, side="both")
    lo, hi = clopper_pearson(np.array([0, 5, 10]), 10)
    assert lo.shape == hi.shape == (3,) and lo[0] == 0.0 and hi[2] == 1.0


def test_clopper_pearson_coverage_simulation():
    rng = np.random.default_rng(12345)
    p_true, n, reps = 0.1, 200, 500
    k = rng.binomial(n, p_true, size=reps)
    lo, hi = clopper_pearson(k, n, alpha=0.05)
    assert np.mean((lo <= p_true) & (p_true <= hi)) >= 0.93
    # one-sided certificates at delta = 0.05
    assert np.mean(clopper_pearson_upper(k, n, 0.05) >= p_true) >= 0.93
    assert np.mean(binomial_kl_upper(k, n, 0.05) >= p_true) >= 0.93


# --------------------------------------------------------------------------- binomial-kl


def test_binomial_kl_upper_definition_and_ordering():
    for k, n, d in [(0, 100, 0.05), (5, 100, 0.05), (37, 1000, 0.01), (10, 10, 0.1), (1, 3, 0.5)]:
        b = binomial_kl_upper(k, n, d)
        assert b == kl_inverse_upper(k / n, math.log(1 / d) / n)
        assert b >= k / n
        assert clopper_pearson_upper(k, n, d) >= k / n
        # the Chernoff relaxation is never tighter than the exact tail inversion
        assert b >= clopper_pearson_upper(k, n, d) * (1 - 1e-12)
    # k = 0: kl(0‖p) = -ln(1-p)  ->  1 - delta^(1/n) as well
    assert binomial_kl_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-12)
    with pytest.raises(ValueError):
        binomial_kl_upper(3, 10, 0.0)
