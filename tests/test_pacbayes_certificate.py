"""Pure PAC-Bayes certificate functions (ncbounds.bounds.pacbayes_certificate).

Checks: both two-step certificates against an independent 50-digit mpmath implementation at random
inputs; the limits (KL = 0 and M → ∞ give kl⁻¹(ê, ln(2√n/δ)/n)); monotonicity in n, M, KL; ≥ ê and
≤ 1; the λ grid (its weights sum to one, the scan equals a brute-force minimum over j); the Gaussian
KL against torch.distributions; the coverage of the per-example Monte-Carlo step and of the
disagreement bound in simulation (and that the plain estimate does not cover, so the simulation can
fail); the deployed-network certificate arithmetic; input validation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncbounds.bounds.pacbayes_certificate import (
    best_lambda_on_grid,
    deterministic_certificate,
    disagreement_upper_bound,
    gaussian_kl_isotropic_prior,
    lambda_grid_index,
    lambda_grid_value,
    lambda_union_cost,
    maurer_log_term,
    mc_upper_per_example,
    pac_bayes_kl_certificate,
    pac_bayes_kl_certificate_per_example,
)
from ncbounds.errors import UsageError

mpmath = pytest.importorskip("mpmath")

# ------------------------------------------------------------------------------------------------
# independent reference (mpmath, 50 digits), written from the formulas of the papers
# ------------------------------------------------------------------------------------------------


def mp_kl(q, p):
    q, p = mpmath.mpf(q), mpmath.mpf(p)
    out = mpmath.mpf(0)
    if q > 0:
        out += q * mpmath.log(q / p)
    if q < 1:
        out += (1 - q) * mpmath.log((1 - q) / (1 - p))
    return out


def mp_kl_inv(q, c):
    """sup{p ≥ q : kl(q‖p) ≤ c} by 200 bisection halvings at 50 digits."""
    with mpmath.workdps(50):
        q, c = mpmath.mpf(q), mpmath.mpf(c)
        if c <= 0:
            return q
        lo, hi = q, mpmath.mpf(1)
        if q == 1 or mp_kl(q, 1 - mpmath.mpf(10) ** -45) <= c:
            return mpmath.mpf(1) if q == 1 else 1 - mpmath.mpf(10) ** -45
        for _ in range(200):
            mid = (lo + hi) / 2
            if mp_kl(q, mid) <= c:
                lo = mid
            else:
                hi = mid
        return hi


def ref_full_pass(e, M, kl, n, delta, delta_mc, cost=0.0):
    with mpmath.workdps(50):
        e_up = mp_kl_inv(e, mpmath.log(2 / mpmath.mpf(delta_mc)) / M)
        budget = (mpmath.mpf(kl) + mpmath.log(2 * mpmath.sqrt(n) / mpmath.mpf(delta)) + cost) / n
        return float(e_up), float(mp_kl_inv(e_up, budget))


def ref_per_example(e, T, kl, n, delta, delta_mc, cost=0.0):
    with mpmath.workdps(50):
        e_up = mp_kl_inv(e, mpmath.log(1 / mpmath.mpf(delta_mc)) / T)
        budget = (mpmath.mpf(kl) + mpmath.log(2 * mpmath.sqrt(n) / mpmath.mpf(delta)) + cost) / n
        return float(e_up), float(mp_kl_inv(e_up, budget))


def random_inputs(count, seed):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(8, 200_000))
        M = int(rng.integers(1, 5000))
        e = float(rng.choice([0.0, rng.uniform(0, 1), 10 ** rng.uniform(-5, -0.5), 1 - 10 ** rng.uniform(-4, -0.5)]))
        kl = float(rng.choice([0.0, 10 ** rng.uniform(-3, 5)]))
        delta = float(10 ** rng.uniform(-4, -0.3))
        delta_mc = float(10 ** rng.uniform(-4, -0.3))
        yield e, M, kl, n, delta, delta_mc


# ------------------------------------------------------------------------------------------------
# the certificates against the reference
# ------------------------------------------------------------------------------------------------


def test_full_pass_certificate_matches_independent_reference():
    for e, M, kl, n, delta, delta_mc in random_inputs(60, 1):
        got = pac_bayes_kl_certificate(e, M, kl, n, delta, delta_mc)
        e_up, want = ref_full_pass(e, M, kl, n, delta, delta_mc)
        assert got["mc_upper"] >= e_up - 1e-15 and got["mc_upper"] == pytest.approx(e_up, abs=1e-11)
        assert got["value"] >= want - 1e-15, (e, M, kl, n, delta, delta_mc)  # a true upper end
        assert got["value"] == pytest.approx(want, abs=1e-10)
        assert got["log_term"] == pytest.approx(math.log(2 * math.sqrt(n) / delta), rel=1e-14)
        assert got["n"] == n and got["mc_samples"] == M and got["gibbs_error"] == e


def test_per_example_certificate_matches_independent_reference():
    for e, M, kl, n, delta, delta_mc in random_inputs(60, 2):
        passes = 1 + M % 7
        T = n * passes
        got = pac_bayes_kl_certificate_per_example(e, T, kl, n, delta, delta_mc)
        e_up, want = ref_per_example(e, T, kl, n, delta, delta_mc)
        assert got["mc_upper"] == pytest.approx(e_up, abs=1e-11)
        assert got["value"] >= want - 1e-15
        assert got["value"] == pytest.approx(want, abs=1e-10)
        assert got["passes"] == passes and got["trials"] == T


def test_union_cost_enters_like_extra_kl():
    a = pac_bayes_kl_certificate(0.1, 100, 50.0, 1000, 0.05, 0.01, union_cost=7.0)
    b = pac_bayes_kl_certificate(0.1, 100, 57.0, 1000, 0.05, 0.01)
    assert a["value"] == pytest.approx(b["value"], rel=1e-13)
    _, want = ref_full_pass(0.1, 100, 50.0, 1000, 0.05, 0.01, cost=7.0)
    assert a["value"] == pytest.approx(want, abs=1e-10)


# ------------------------------------------------------------------------------------------------
# limits and monotonicity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("e", [0.0, 0.02, 0.3, 0.9])
def test_kl_zero_and_infinite_mc_reduce_to_single_step(e):
    n, delta = 5000, 0.03
    single = float(mp_kl_inv(e, math.log(2 * math.sqrt(n) / delta) / n))
    huge_m = 10**15
    got = pac_bayes_kl_certificate(e, huge_m, 0.0, n, delta, 0.01)["value"]
    got_pe = pac_bayes_kl_certificate_per_example(e, n * 10**11, 0.0, n, delta, 0.01)["value"]
    assert got == pytest.approx(single, abs=1e-6) and got >= single - 1e-15
    assert got_pe == pytest.approx(single, abs=1e-6) and got_pe >= single - 1e-15


def test_monotone_in_n_m_kl_and_range():
    rng = np.random.default_rng(3)
    for _ in range(12):
        e = float(rng.uniform(0, 0.95))
        kl = float(10 ** rng.uniform(-1, 4))
        delta, dmc = 0.05, 0.01
        ns = np.sort(rng.integers(8, 100_000, size=6))
        vals = [pac_bayes_kl_certificate(e, 500, kl, int(n), delta, dmc)["value"] for n in ns]
        assert all(a >= b for a, b in zip(vals, vals[1:], strict=False)), "must not grow with n"
        Ms = np.sort(rng.integers(1, 100_000, size=6))
        vals = [pac_bayes_kl_certificate(e, int(M), kl, 2000, delta, dmc)["value"] for M in Ms]
        assert all(a >= b for a, b in zip(vals, vals[1:], strict=False)), "must not grow with M"
        kls = np.sort(10 ** rng.uniform(-2, 4, size=6))
        vals = [pac_bayes_kl_certificate(e, 500, float(k), 2000, delta, dmc)["value"] for k in kls]
        assert all(a <= b for a, b in zip(vals, vals[1:], strict=False)), "must not shrink as KL grows"
        for fn, count in ((pac_bayes_kl_certificate, 500), (pac_bayes_kl_certificate_per_example, 2000 * 3)):
            v = fn(e, count, kl, 2000, delta, dmc)["value"]
            assert e <= v <= 1.0
    assert pac_bayes_kl_certificate(0.5, 10, 1e6, 100, 0.05, 0.01)["value"] == 1.0


def test_per_example_mc_step_is_cheaper_than_full_pass_at_equal_forward_passes():
    # M = 10 whole-sample draws over n = 4000 vs 10 per-example passes: same number of predictions
    full = pac_bayes_kl_certificate(0.1, 10, 500.0, 4000, 0.025, 0.01)
    per = pac_bayes_kl_certificate_per_example(0.1, 40_000, 500.0, 4000, 0.025, 0.01)
    assert per["mc_upper"] < full["mc_upper"] and per["value"] < full["value"]


# ------------------------------------------------------------------------------------------------
# λ grid, Gaussian KL
# ------------------------------------------------------------------------------------------------


def test_lambda_grid_weights_sum_to_one_and_index_inverts():
    j = np.arange(1, 2_000_001, dtype=np.float64)
    total = float(np.sum(np.exp(-lambda_union_cost(j))))
    assert total == pytest.approx(1.0 - 6 / (math.pi**2 * 2_000_000), abs=1e-9)  # Σ_{j>J} 1/j² ≈ 1/J
    assert lambda_union_cost(1) == pytest.approx(math.log(math.pi**2 / 6))
    assert lambda_union_cost(7, grid_size=20) == pytest.approx(math.log(20))
    for jj in (1, 5, 250, 1234):
        lam = lambda_grid_value(jj, 10.0, 100.0)
        assert lam == pytest.approx(10.0 * math.exp(-jj / 100.0))
        assert lambda_grid_index(lam, 10.0, 100.0) == pytest.approx(jj, rel=1e-12)
    with pytest.raises(UsageError):
        lambda_union_cost(0)
    with pytest.raises(UsageError):
        lambda_union_cost(21, grid_size=20)


def _kl_gauss_ref(sq, var, logvar, P, lam):
    """Textbook KL of diagonal Gaussians, written out per coordinate-sum (independent of the library)."""
    return 0.5 * (sq / lam + var / lam - P - logvar + P * math.log(lam))


@pytest.mark.parametrize("grid_size", [None, 40, 3000])
def test_best_lambda_equals_brute_force_minimum(grid_size):
    rng = np.random.default_rng(4 if grid_size is None else grid_size)
    for _ in range(8):
        P = int(rng.integers(10, 5000))
        s2 = rng.uniform(1e-4, 0.3, size=P)
        sq = float(rng.uniform(0, 5) * P * 0.01)
        var, logvar = float(s2.sum()), float(np.log(s2).sum())
        n, delta, e_up = int(rng.integers(100, 20000)), 0.02, float(rng.uniform(0, 0.6))
        got = best_lambda_on_grid(e_up, sq, var, logvar, P, n, delta, 10.0, 100.0, grid_size)
        top = grid_size or 5000
        best = None
        for j in range(1, top + 1):
            lam = 10.0 * math.exp(-j / 100.0)
            cost = math.log(grid_size) if grid_size else 2 * math.log(j) + math.log(math.pi**2 / 6)
            budget = (_kl_gauss_ref(sq, var, logvar, P, lam) + math.log(2 * math.sqrt(n) / delta) + cost) / n
            if best is None or budget < best[1]:
                best = (j, budget)
        assert got["j"] == best[0]
        assert got["pb_budget"] == pytest.approx(best[1], rel=1e-10)
        assert got["value"] == pytest.approx(float(mp_kl_inv(e_up, best[1])), abs=1e-10)


def test_gaussian_kl_matches_torch_distributions():
    rng = np.random.default_rng(5)
    mu, w0 = rng.normal(size=50), rng.normal(size=50)
    s = rng.uniform(0.01, 1.0, size=50)
    lam = 0.37
    q = torch.distributions.Normal(torch.tensor(mu), torch.tensor(s))
    p = torch.distributions.Normal(torch.tensor(w0), torch.full((50,), math.sqrt(lam), dtype=torch.float64))
    want = float(torch.distributions.kl_divergence(q, p).sum())
    got = gaussian_kl_isotropic_prior(float(((mu - w0) ** 2).sum()), float((s**2).sum()), float(np.log(s**2).sum()), 50, lam)
    assert got == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# coverage in simulation
# ------------------------------------------------------------------------------------------------


def test_per_example_mc_step_covers_non_identical_bernoullis():
    """Independent Bernoulli(p_i) with unequal p_i: Ê ≥ mean(p) in ≥ 1 − δ_mc of repetitions."""
    rng = np.random.default_rng(6)
    n, reps, dmc = 400, 4000, 0.1
    p = rng.beta(0.3, 2.0, size=n)  # very unequal per-example error probabilities
    target = p.mean()
    errors = (rng.random((reps, n)) < p).sum(1)
    values, where = np.unique(errors, return_inverse=True)  # the bound depends on the count only
    upper = np.array([mc_upper_per_example(int(k) / n, n, dmc) for k in values])[where]
    fail = float(np.mean(upper < target))
    assert fail <= dmc
    naive = float(np.mean(errors / n < target))  # the plain estimate fails about half the time
    assert naive > 0.3


def test_disagreement_bound_covers_in_simulation():
    rng = np.random.default_rng(7)
    m, D, d = 500, 0.07, 0.1
    counts = rng.binomial(m, D, size=4000)
    values, where = np.unique(counts, return_inverse=True)
    upper = np.array([disagreement_upper_bound(int(k), m, d)["value"] for k in values])[where]
    assert float(np.mean(upper < D)) <= d
    assert float(np.mean(counts / m < D)) > 0.3
    # several passes per input: per-input averages of 3 draws, mean D
    per_input = rng.binomial(3, D, size=(2000, m)).sum(1)
    values, where = np.unique(per_input, return_inverse=True)
    upper3 = np.array([disagreement_upper_bound(int(k), m, d, passes=3)["value"] for k in values])[where]
    assert float(np.mean(upper3 < D)) <= d


# ------------------------------------------------------------------------------------------------
# deployed network, validation
# ------------------------------------------------------------------------------------------------


def test_deterministic_certificate_adds_the_disagreement_bound():
    out = deterministic_certificate(0.31, 0.03, 12, 1000, 0.02)
    u = float(mp_kl_inv(12 / 1000, math.log(1 / 0.02) / 1000))
    assert out["disagreement_upper"] == pytest.approx(u, abs=1e-10)
    assert out["value"] == pytest.approx(0.31 + u, abs=1e-10)
    assert out["delta"] == pytest.approx(0.05)
    assert deterministic_certificate(0.95, 0.03, 500, 1000, 0.02)["value"] == 1.0
    full = disagreement_upper_bound(12 * 50, 1000, 0.02, mc_samples=50)
    u1 = float(mp_kl_inv(12 / 1000, math.log(2 / 0.02) / 1000))
    assert full["value"] == pytest.approx(float(mp_kl_inv(u1, math.log(4 / 0.02) / 50)), abs=1e-10)


def test_input_validation():
    ok = dict(gibbs_error=0.1, mc_samples=100, kl=1.0, n=100, delta=0.05, delta_mc=0.01)
    for key, bad in [("gibbs_error", 1.2), ("mc_samples", 0), ("kl", -1.0), ("kl", math.inf), ("n", 7),
                     ("delta", 0.0), ("delta_mc", 1.0), ("mc_samples", 2.5)]:
        with pytest.raises(UsageError):
            pac_bayes_kl_certificate(**{**ok, key: bad})
    with pytest.raises(UsageError, match="whole number of passes"):
        pac_bayes_kl_certificate_per_example(0.1, 150, 1.0, 100, 0.05, 0.01)
    with pytest.raises(UsageError):
        disagreement_upper_bound(11, 10, 0.05)
    assert maurer_log_term(100, 0.05) == pytest.approx(math.log(2 * 10 / 0.05))
