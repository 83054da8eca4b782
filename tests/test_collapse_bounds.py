"""Neural-collapse bounds (Galanti 2022, Luthra et al. old/new), the fourth-moment replay and the
collapse predictors: published values, limits, closed forms, brute-force references, not-applicable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_models import bound_settings

from ncbounds.bounds import collapse_bounds as cb
from ncbounds.bounds import predictors as pr
from ncbounds.bounds.base import REGISTRY, REPLAY, ReplayInfo
from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.bounds.replay.moments import ClassMoments
from ncbounds.metrics.collapse import collapse_metrics
from ncbounds.stats import ClassStats, ProjectedStats

ALPHA, BETA = 0.0728605240583419, 1.672136664390564
PUBLISHED_OLD = {1: 29.11436, 5: 8.19605, 10: 5.66635, 20: 4.16672, 50: 2.94537, 100: 2.33454, 200: 1.88640, 500: 1.45917}


# ------------------------------------------------------------------------------------------------
# synthetic statistics
# ------------------------------------------------------------------------------------------------
def _features(K, D, counts, seed, scale=3.0, anisotropic=True):
    """Gaussian classes around random means; per-class anisotropic covariances (or isotropic)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D)) * scale
    xs, ys = [], []
    for c, n in enumerate(counts):
        if anisotropic:
            A = rng.normal(size=(D, D)) * rng.uniform(0.2, 1.0, size=D)
            z = rng.normal(size=(n, D)) @ A.T
        else:
            z = rng.normal(size=(n, D))
        xs.append(means[c] + z + 5.0)  # offset: distances must not depend on the origin
        ys.append(np.full(n, c))
    h, y = np.concatenate(xs), np.concatenate(ys)
    perm = rng.permutation(len(y))
    return h[perm], y[perm]


def _summary(h, y, K, projected=True, moments=True, scatter_mode="none", batch=37):
    stats = ClassStats(K, h.shape[1], scatter_mode)
    for s in range(0, len(y), batch):
        stats.update(h[s:s + batch], y[s:s + batch])
    extras = {}
    proj = ProjectedStats(stats.means, stats.counts) if projected else None
    mom = ClassMoments(stats) if moments else None
    for s in range(0, len(y), batch):
        hb, yb = torch.as_tensor(h[s:s + batch]), torch.as_tensor(y[s:s + batch])
        if proj is not None:
            proj.update(hb, yb)
        if mom is not None:
            mom.update(hb, yb)
    if mom is not None:
        extras[cb.MOMENTS_KEY] = mom
    metrics = collapse_metrics(stats, projected=proj)
    return SplitSummary(n=len(y), errors=None, margins=None, stats=stats, projected=proj, metrics=metrics, extras=extras)


def _ctx(train, test, K, shots=None, layerwise=None, layer_fuzziness=None, bound=None):
    return BoundContext(num_classes=K, train=train, test=test,
                        options=BoundOptions(shots=shots, bound=bound_settings(bound)),
                        layerwise=layerwise or {}, layer_fuzziness=layer_fuzziness or [])


def _standard_ctx(K=4, D=6, shots=(10,), seed=0, **kw):
    h, y = _features(K, D, [60 + 7 * c for c in range(K)], seed)
    ht, yt = _features(K, D, [50 + 5 * c for c in range(K)], seed)  # same means (same seed), other counts
    return _ctx(_summary(h, y, K), _summary(ht, yt, K, **kw), K, shots=shots), (ht, yt)


# ------------------------------------------------------------------------------------------------
# independent references, written out from the formulas
# ------------------------------------------------------------------------------------------------
def _thm41_reference(h, y, m):
    """Luthra et al. 2026 Thm 4.1 from raw features with loops (unbiased Σ, v; M4 plain mean)."""
    classes = sorted(set(y.tolist()))
    mu = {c: h[y == c].mean(0) for c in classes}
    cov = {c: np.cov(h[y == c], rowvar=False, ddof=1) for c in classes}
    v = {c: float(np.trace(cov[c])) for c in classes}
    m4 = {c: float(np.mean(np.sum((h[y == c] - mu[c]) ** 2, 1) ** 2)) for c in classes}
    total = 0.0
    for i in classes:
        for j in classes:
            if i == j:
                continue
            diff = mu[j] - mu[i]
            dist2 = float(diff @ diff)
            u = diff / math.sqrt(dist2)
            vt = float(u @ cov[i] @ u) / dist2
            V = (v[i] + v[j]) / dist2
            theta = (m4[i] + m4[j]) / dist2**2
            e1 = 4.0 / m * (V * V + V / 4.0)
            e2 = V / m
            e3 = (theta + 2.0 * (m - 1) * V * V) / m**3
            total += (4.0 * vt + (math.sqrt(e1) + math.sqrt(e2) + math.sqrt(e3)) ** 2) / (1.0 + (v[j] - v[i]) / (m * dist2)) ** 2
    return total / len(classes)


def _old_aggregates(h, y):
    """(directional CDNV, CDNV) with biased variances, as in the authors' geometry.py."""
    classes = sorted(set(y.tolist()))
    mu = {c: h[y == c].mean(0) for c in classes}
    var = {c: float(np.mean(np.sum((h[y == c] - mu[c]) ** 2, 1))) for c in classes}
    dirs, cd = [], []
    for i in classes:
        for j in classes:
            if i == j:
                continue
            diff = mu[j] - mu[i]
            dist2 = float(diff @ diff)
            proj = (h[y == i] - mu[i]) @ (diff / math.sqrt(dist2))
            dirs.append(float(np.mean(proj**2)) / dist2)
            if i < j:
                cd.append((var[i] + var[j]) / (2 * dist2))
    return float(np.mean(dirs)), float(np.mean(cd))


# ------------------------------------------------------------------------------------------------
# Luthra et al. "old" bound
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,expected", sorted(PUBLISHED_OLD.items()))
def test_luthra_old_reproduces_published_values(m, expected):
    assert cb.luthra_old_bound(ALPHA, BETA, m) == pytest.approx(expected, abs=1e-4)
    assert cb.luthra_old_bound(ALPHA, BETA, m, classes=7) == pytest.approx(6 * cb.luthra_old_bound(ALPHA, BETA, m), rel=1e-14)


def test_luthra_old_vectorised_matches_scalar():
    ms = np.array(sorted(PUBLISHED_OLD))
    np.testing.assert_allclose(cb.luthra_old_bound(ALPHA, BETA, ms), [PUBLISHED_OLD[m] for m in ms], atol=1e-4)


@pytest.mark.parametrize("alpha,beta,m", [(ALPHA, BETA, 10), (ALPHA, BETA, 500), (1.0, 0.01, 100), (0.5, 1e-4, 1000),
                                          (0.01, 3.0, 2), (2.0, 0.2, 50)])
def test_luthra_old_closed_form_a_is_the_minimiser(alpha, beta, m):
    A = 2 + 2**1.5 / m
    B = 0.25 * (2 * math.sqrt(beta / m) + 2 * beta / math.sqrt(m) + beta / m)

    def E(a):
        return alpha * (0.5 - A / a) ** -2 + B * a

    a_star = cb.luthra_old_optimal_a(alpha, beta, m)
    lo = max(5.0, 2 * A) * (1 + 1e-9)
    grid = np.concatenate([np.linspace(lo, lo + 50, 200_001), np.geomspace(lo + 50, 1e7, 200_001)])
    assert cb.luthra_old_bound(alpha, beta, m) == pytest.approx(E(a_star), rel=1e-12)
    assert E(a_star) <= E(grid).min() * (1 + 1e-9)
    if a_star > 5:  # interior stationary point: derivative B − 16αA·a/(a − 2A)³ vanishes
        assert B - 16 * alpha * A * a_star / (a_star - 2 * A) ** 3 == pytest.approx(0.0, abs=1e-9 * B)


def test_luthra_old_both_cubic_branches_are_exercised():
    def disc(alpha, beta, m):
        A = 2 + 2**1.5 / m
        B = 0.25 * (2 * math.sqrt(beta / m) + 2 * beta / math.sqrt(m) + beta / m)
        return A * A - 8 * (2 * alpha * A / B) / 27

    assert disc(ALPHA, BETA, 10) > 0 and disc(1.0, 0.01, 100) < 0


def test_luthra_old_limits():
    assert cb.luthra_old_bound(0.1, 0.0, 10) == pytest.approx(0.4)  # β = 0: a* → ∞, E → 4α
    A = 2 + 2**1.5 / 20
    B = 0.25 * (2 * math.sqrt(0.3 / 20) + 2 * 0.3 / math.sqrt(20) + 0.3 / 20)
    assert cb.luthra_old_bound(0.0, 0.3, 20) == pytest.approx(B * max(5.0, 2 * A))
    tail = cb.luthra_old_bound(ALPHA, BETA, np.array([1e6, 1e9, 1e12]))  # slow (≈ m^(-1/6)) approach to 4α from above
    assert np.all(np.diff(tail) < 0) and np.all(tail > 4 * ALPHA) and tail[-1] == pytest.approx(4 * ALPHA, rel=2e-2)


# ------------------------------------------------------------------------------------------------
# Luthra et al. "new" Theorem 4.1
# ------------------------------------------------------------------------------------------------
def _random_pairs(C, seed):
    rng = np.random.default_rng(seed)
    P = C * (C - 1)
    return dict(vtilde=rng.uniform(0.01, 0.3, P), V=rng.uniform(0.1, 3.0, P), theta=rng.uniform(0.1, 20.0, P),
                v_i=rng.uniform(0.5, 2.0, P), v_j=rng.uniform(0.5, 2.0, P), d2=rng.uniform(1.0, 4.0, P))


@pytest.mark.parametrize("C", [2, 3, 7])
def test_luthra_new_tends_to_four_mean_directional_cdnv(C):
    p = _random_pairs(C, C)
    limit = cb.luthra_new_bound(**p, m=1e9)
    assert limit == pytest.approx(np.sum(4 * p["vtilde"]) / C, rel=1e-6)
    assert limit == pytest.approx(4 * (C - 1) * np.mean(p["vtilde"]), rel=1e-6)  # (C'−1)/C' normalisation
    assert cb.luthra_new_bound(**p, m=1e9, classes=C) == limit
    if C == 2:
        assert limit == pytest.approx(4 * np.mean(p["vtilde"]), rel=1e-6)
    # finite m is larger than the limit when all variances are equal (denominator 1)
    q = dict(p, v_j=p["v_i"])
    assert cb.luthra_new_bound(**q, m=10) > cb.luthra_new_bound(**q, m=1e9)


def test_luthra_new_rejects_pair_count_that_is_not_c_times_c_minus_1():
    p = {k: v[:5] for k, v in _random_pairs(3, 0).items()}
    with pytest.raises(ValueError):
        cb.luthra_new_bound(**p, m=10)


def _etf_sq_distance(K, r):
    # simplex-ETF means of norm r: ‖μ_i − μ_j‖² = 2r²·K/(K − 1)
    return 2 * r * r * K / (K - 1)


@pytest.mark.parametrize("K,D,sigma,r,m", [(2, 3, 0.3, 1.0, 10), (5, 16, 0.55, 1.0, 20), (10, 64, 0.05, 2.0, 5)])
def test_luthra_new_isotropic_gaussian_etf_closed_form(K, D, sigma, r, m):
    """Population inputs for isotropic Gaussians on a simplex ETF vs the formula written out here."""
    dist2 = _etf_sq_distance(K, r)
    vt = sigma**2 / dist2  # u Σ u = σ² in every direction
    v = sigma**2 * D
    m4 = sigma**4 * (D * D + 2 * D)  # E‖z‖⁴ for z ~ N(0, σ²I_D)
    V = 2 * v / dist2
    theta = 2 * m4 / dist2**2
    e1, e2, e3 = 4 / m * (V**2 + V / 4), V / m, (theta + 2 * (m - 1) * V**2) / m**3
    expected = (K - 1) * (4 * vt + (math.sqrt(e1) + math.sqrt(e2) + math.sqrt(e3)) ** 2)
    P = K * (K - 1)
    got = cb.luthra_new_bound(np.full(P, vt), np.full(P, V), np.full(P, theta), np.full(P, v), np.full(P, v),
                              np.full(P, dist2), m)
    assert got == pytest.approx(expected, rel=1e-13)


def test_luthra_new_unequal_variances_use_the_margin_denominator():
    # two classes, σ_0 ≠ σ_1: pair (0,1) has denominator (1 + (v1 − v0)/(m d²))², pair (1,0) the reverse
    D, m, dist2, s0, s1 = 4, 12, 2.0, 0.3, 0.8
    v = [s0**2 * D, s1**2 * D]
    m4 = [s**4 * (D * D + 2 * D) for s in (s0, s1)]
    vt = [s0**2 / dist2, s1**2 / dist2]
    V = (v[0] + v[1]) / dist2
    theta = (m4[0] + m4[1]) / dist2**2
    corr = (math.sqrt(4 / m * (V**2 + V / 4)) + math.sqrt(V / m) + math.sqrt((theta + 2 * (m - 1) * V**2) / m**3)) ** 2
    expected = ((4 * vt[0] + corr) / (1 + (v[1] - v[0]) / (m * dist2)) ** 2
                + (4 * vt[1] + corr) / (1 + (v[0] - v[1]) / (m * dist2)) ** 2) / 2
    got = cb.luthra_new_bound(vt, [V, V], [theta, theta], v, v[::-1], [dist2, dist2], m)
    assert got == pytest.approx(expected, rel=1e-13)


def test_luthra_new_nonpositive_margin_gives_inf_pair_term():
    terms = cb.luthra_new_pair_terms([0.1, 0.1], [1.0, 1.0], [1.0, 1.0], [5.0, 1.0], [1.0, 5.0], [1.0, 1.0], 2)
    assert np.isinf(terms[0]) and np.isfinite(terms[1])


# ------------------------------------------------------------------------------------------------
# the fourth-moment replay
# ------------------------------------------------------------------------------------------------
def test_class_moments_equal_bruteforce_numpy():
    K, D = 5, 7
    h, y = _features(K, D, [30, 1, 44, 0, 25], 3)  # a single-sample class and an absent class
    stats = ClassStats(K, D, "none").update(h, y)
    parts = [ClassMoments(stats) for _ in range(3)]
    for part, idx in zip(parts, np.array_split(np.arange(len(y)), 3), strict=True):
        part.update(torch.as_tensor(h[idx]), torch.as_tensor(y[idx]))
    whole = ClassMoments(stats).update(h, y)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for acc in (whole, merged):
        assert acc.complete
        m4 = acc.fourth_moment().numpy()
        for c in range(K):
            x = h[y == c]
            if len(x) == 0:
                assert np.isnan(m4[c])
                continue
            r2 = np.sum((x - x.mean(0)) ** 2, 1)
            assert m4[c] == pytest.approx(np.mean(r2**2), rel=1e-12, abs=1e-300)
            assert float(acc.sum_sq[c]) == pytest.approx(float(stats.sq_dev[c]), rel=1e-10, abs=1e-12)
    assert not ClassMoments(stats).update(h[:10], y[:10]).complete


def test_class_moments_state_round_trip_and_float32_input():
    h, y = _features(3, 4, [20, 20, 20], 1)
    stats = ClassStats(3, 4, "none").update(h, y)
    acc = ClassMoments(stats).update(torch.as_tensor(h, dtype=torch.float32), torch.as_tensor(y))
    back = ClassMoments.from_state(acc.state())
    torch.testing.assert_close(back.sum_fourth, acc.sum_fourth, rtol=0, atol=0)
    assert back.complete


def test_replay_is_registered_for_luthra_new():
    spec = REPLAY[cb.MOMENTS_KEY]
    assert "luthra_new" in spec.needed_by and set(spec.splits) == {"train", "test"}
    h, y = _features(3, 4, [5, 5, 5], 2)
    assert isinstance(spec.factory(ClassStats(3, 4, "none").update(h, y), ReplayInfo(split="test")), ClassMoments)


def test_registry_entries():
    for name in ("galanti2022", "luthra_old", "luthra_new"):
        assert REGISTRY[name].group == "collapse"
    assert REGISTRY["galanti2022"].status == "up-to-constants"
    assert REGISTRY["luthra_old"].status == REGISTRY["luthra_new"].status == "plug-in"
    for name in ("nc1_test", "cdnv_test", "collapse_gap", "layerwise_rho"):
        assert REGISTRY[name].group == "predictors" and REGISTRY[name].status == "predictor"
        assert REGISTRY[name].func.__doc__


# ------------------------------------------------------------------------------------------------
# bounds from statistics
# ------------------------------------------------------------------------------------------------
def test_luthra_new_from_statistics_matches_bruteforce():
    ctx, (ht, yt) = _standard_ctx(shots=(10, 25, 1000))
    res = cb.luthra_new(ctx)
    assert res.status == "plug-in" and res.inputs["split"] == "test" and res.inputs["classes"] == 4
    for m in (10, 25, 1000):
        assert res.details["per_m"][str(m)]["value"] == pytest.approx(_thm41_reference(ht, yt, m), rel=1e-9)
        assert res.details["per_m"][str(m)]["pairs_without_margin"] == 0
    assert res.value == res.details["per_m"]["10"]["value"]
    assert res.reason is None  # all m ≥ 10


def test_luthra_new_same_value_from_per_class_scatter():
    ctx, (ht, yt) = _standard_ctx(shots=(15,))
    K = 4
    full = _summary(ht, yt, K, projected=False, scatter_mode="per-class")
    ctx2 = _ctx(ctx.train, full, K, shots=(15,))
    assert cb.luthra_new(ctx2).value == pytest.approx(cb.luthra_new(ctx).value, rel=1e-10)


def test_luthra_new_sampled_isotropic_etf_approaches_population_closed_form():
    K, D, sigma, r, m, n = 4, 8, 0.4, 1.0, 20, 20_000
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(D, K)))
    etf = math.sqrt(K / (K - 1)) * (np.eye(K) - 1.0 / K) @ q.T * r  # rows: ETF means of norm r
    y = np.repeat(np.arange(K), n)
    h = etf[y] + sigma * rng.normal(size=(K * n, D))
    summ = _summary(h, y, K, batch=4096)
    got = cb.luthra_new(_ctx(summ, summ, K, shots=(m,))).value
    dist2 = _etf_sq_distance(K, r)
    v, m4 = sigma**2 * D, sigma**4 * (D * D + 2 * D)
    P = K * (K - 1)
    population = cb.luthra_new_bound(np.full(P, sigma**2 / dist2), np.full(P, 2 * v / dist2), np.full(P, 2 * m4 / dist2**2),
                                     np.full(P, v), np.full(P, v), np.full(P, dist2), m)
    assert got == pytest.approx(population, rel=0.03)


def test_luthra_old_and_galanti_from_statistics():
    ctx, (ht, yt) = _standard_ctx(shots=(5, 50))
    alpha, beta = _old_aggregates(ht, yt)
    old = cb.luthra_old(ctx)
    assert old.inputs["directional_cdnv"] == pytest.approx(alpha, rel=1e-10)
    assert old.inputs["cdnv"] == pytest.approx(beta, rel=1e-10)
    for m in (5, 50):
        two = cb.luthra_old_bound(alpha, beta, m)
        assert old.details["per_m"][str(m)]["two_way"] == pytest.approx(two, rel=1e-9)
        assert old.details["per_m"][str(m)]["value"] == pytest.approx(3 * two, rel=1e-9)
    assert old.value == old.details["per_m"]["5"]["value"]
    assert "m = 5" in old.reason  # below the (unconfirmed) m ≥ 10 condition: flagged, not hidden
    gal = cb.galanti2022(ctx)
    assert gal.status == "up-to-constants" and gal.reason
    assert gal.value == pytest.approx(3 * beta * (1 + 1 / 5), rel=1e-10)
    assert gal.details["per_m"]["50"] == pytest.approx(3 * beta * (1 + 1 / 50), rel=1e-10)


def test_default_shots_are_the_smallest_training_class_count():
    ctx, _ = _standard_ctx(shots=None)
    assert ctx.samples_per_class == 60
    for func in (cb.galanti2022, cb.luthra_old, cb.luthra_new):
        assert func(ctx).inputs["shots"] == [60]


def test_training_split_can_be_chosen():
    ctx, _ = _standard_ctx()
    ctx.options.bound["luthra_new"] = cb.CollapseBoundOptions(split="train")
    res = cb.luthra_new(ctx)
    assert res.inputs["split"] == "train" and res.value is not None
    ctx.options.bound["luthra_new"] = cb.CollapseBoundOptions(split="valid")
    assert cb.luthra_new(ctx).status == "not-applicable"


def test_pair_without_positive_margin_is_bounded_by_one():
    # class 0 very wide, class 1 very tight and close: with m = 1 the expected margin of (0 → 1) is negative
    rng = np.random.default_rng(0)
    D = 3
    h = np.concatenate([rng.normal(size=(200, D)) * 3.0, 0.5 + rng.normal(size=(200, D)) * 0.01])
    y = np.repeat([0, 1], 200)
    summ = _summary(h, y, 2)
    res = cb.luthra_new(_ctx(summ, summ, 2, shots=(1,)))
    per = res.details["per_m"]["1"]
    assert per["pairs_without_margin"] == 1 and np.isfinite(res.value)
    assert res.reason and "m = 1" in res.reason


# ------------------------------------------------------------------------------------------------
# predictors
# ------------------------------------------------------------------------------------------------
def test_predictors_pick_the_right_numbers():
    ctx, _ = _standard_ctx()
    ctx.layerwise = {"train": {"layerwise_rho": 0.5, "layerwise_r": -0.9}, "test": {"layerwise_rho": 0.7, "layerwise_r": -0.8}}
    ctx.layer_fuzziness = [3.0, 2.0, 1.0]
    assert pr.nc1_test(ctx).value == pytest.approx(ctx.test.metrics["nc1"], rel=1e-12)
    assert pr.cdnv_test(ctx).value == pytest.approx(ctx.test.metrics["cdnv"], rel=1e-12)
    gap = pr.collapse_gap(ctx)
    assert gap.value == pytest.approx(ctx.test.metrics["nc1"] / ctx.train.metrics["nc1"], rel=1e-12)
    rho = pr.layerwise_rho(ctx)
    assert rho.value == 0.7 and rho.inputs["split"] == "test" and rho.details["layerwise_r"] == -0.8
    ctx.layerwise["test"] = {"layerwise_rho": None, "layerwise_r": None}
    assert pr.layerwise_rho(ctx).value == 0.5
    for res in (pr.nc1_test(ctx), gap, rho):
        assert res.status == "predictor" and not res.vacuous


# ------------------------------------------------------------------------------------------------
# not applicable, never an exception
# ------------------------------------------------------------------------------------------------
ALL = (cb.galanti2022, cb.luthra_old, cb.luthra_new, pr.nc1_test, pr.cdnv_test, pr.collapse_gap, pr.layerwise_rho)


def _assert_na(res, *words):
    assert res.status == "not-applicable" and res.value is None and res.reason, res
    for w in words:
        assert w in res.reason, res.reason


def test_not_applicable_without_second_order_statistics():
    h, y = _features(3, 5, [40, 40, 40], 4)
    summ = _summary(h, y, 3, projected=False)
    ctx = _ctx(summ, summ, 3, shots=(10,))
    _assert_na(cb.luthra_old(ctx), "directional")
    _assert_na(cb.luthra_new(ctx), "directional")
    _assert_na(pr.nc1_test(ctx))
    _assert_na(pr.collapse_gap(ctx))
    assert cb.galanti2022(ctx).value is not None and pr.cdnv_test(ctx).value is not None


def test_not_applicable_without_moments():
    ctx, _ = _standard_ctx(moments=False)
    _assert_na(cb.luthra_new(ctx), "class_moments")
    assert cb.luthra_old(ctx).value is not None


def test_not_applicable_with_fewer_than_two_classes():
    h, y = _features(3, 4, [30, 0, 0], 6)
    summ = _summary(h, y, 3)
    ctx = _ctx(summ, summ, 3, shots=(10,))
    for func in ALL:
        res = func(ctx)
        assert res.status == "not-applicable" and res.value is None, (func.__name__, res)


def test_not_applicable_with_single_sample_class_or_coinciding_means():
    h, y = _features(3, 4, [30, 1, 30], 7)
    summ = _summary(h, y, 3)
    _assert_na(cb.luthra_new(_ctx(summ, summ, 3, shots=(10,))), "single sample")
    h2 = np.concatenate([h, h[y == 0]])
    y2 = np.concatenate([y, np.full(int((y == 0).sum()), 1)])
    keep = ~((y2 == 1) & (np.arange(len(y2)) < len(y)))
    summ2 = _summary(h2[keep], y2[keep], 3)  # class 1 = an exact copy of class 0
    for func in (cb.galanti2022, cb.luthra_old, cb.luthra_new):
        _assert_na(func(_ctx(summ2, summ2, 3, shots=(10,))), "coincide")


def test_layerwise_rho_with_a_single_layer_suggests_all_layers():
    ctx, _ = _standard_ctx()
    ctx.layerwise = {"train": {"layerwise_rho": None, "layerwise_r": None}, "test": {"layerwise_rho": None, "layerwise_r": None}}
    ctx.layer_fuzziness = [1.0]
    _assert_na(pr.layerwise_rho(ctx), "--layers all")
    ctx.layerwise, ctx.layer_fuzziness = {}, []
    _assert_na(pr.layerwise_rho(ctx), "--layers all")
    ctx.layer_fuzziness = [1.0, None]
    _assert_na(pr.layerwise_rho(ctx), "undefined")


def test_invalid_shots_are_not_applicable():
    ctx, _ = _standard_ctx(shots=(0,))
    for func in (cb.galanti2022, cb.luthra_old, cb.luthra_new):
        _assert_na(func(ctx), "positive")
