"""NC certificates: decision-axis replay, sample-split certificate coverage, exact m-shot NCC moments.

The accumulators are fed directly (no pipeline): a test builds ClassStats for its splits, calls the
replay factories with the ``info`` dict the pipeline would pass, feeds features in batches and puts
the result in ``SplitSummary.extras``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.stats import norm

from ncbounds.bounds import nc_certificates as nc
from ncbounds.bounds.base import REGISTRY, REPLAY, ReplayInfo
from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.bounds.replay.decision_axes import AffineRule, DecisionAxisStats, decision_axes_factory
from ncbounds.bounds.replay.pair_moments import PairMoments, pair_moments_factory
from ncbounds.stats.class_stats import ClassStats

# ------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Small tensors: intra-op threading only adds overhead (and stalls badly on a loaded machine)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _summary(stats: ClassStats, extras: dict | None = None) -> SplitSummary:
    return SplitSummary(n=stats.total, errors=None, margins=None, stats=stats, projected=None, metrics={},
                        extras=extras or {})


def _feed(acc, x, y, rng=None, max_batch=None):
    """Feed ``acc`` in batches of random sizes (some tiny, so batches miss classes)."""
    rng = rng or np.random.default_rng(0)
    max_batch = max_batch or max(97, len(y) // 8)
    start = 0
    while start < len(y):
        size = int(rng.integers(1, max_batch))
        acc.update(torch.as_tensor(x[start:start + size]), torch.as_tensor(y[start:start + size]))
        start += size
    return acc


def _context(K, train_stats, test_stats, extras, delta=0.05, shots=None, head=None) -> BoundContext:
    return BoundContext(num_classes=K, train=_summary(train_stats), test=_summary(test_stats, extras),
                        options=BoundOptions(delta=delta, shots=shots), head=head)


def _brute_t(x, dw, db, center):
    """t = g/(‖x − o‖ + |g(o)|/‖Δw‖) with g = Δwᵀx + Δb evaluated directly (the docstring's formula)."""
    g = x @ dw + db
    g_o = center @ dw + db
    return g / (np.linalg.norm(x - center, axis=1) + abs(g_o) / np.linalg.norm(dw)), g


# ------------------------------------------------------------------------------------------------
# decision-axis statistics


@pytest.mark.parametrize("K,d", [(2, 3), (4, 6), (7, 5)])
def test_decision_axis_stats_equal_bruteforce_and_merge(K, d):
    rng = np.random.default_rng(K * 10 + d)
    n = 600
    y = rng.integers(0, K, n)
    if K > 2:
        y[y == K - 1] = 0  # the last class is absent from the split
    means = rng.normal(size=(K, d)) * 3 + 20.0      # large common offset
    x = means[y] + rng.normal(size=(n, d)) * rng.uniform(0.3, 2.0, size=d)
    W, b = rng.normal(size=(K, d)), rng.normal(size=K)
    train_means = means + rng.normal(size=(K, d)) * 0.3
    stats = ClassStats(K, d, "none").update(x, y)
    info = ReplayInfo("test", head=(torch.as_tensor(W), torch.as_tensor(b)), reference_means=torch.as_tensor(train_means))
    whole = _feed(decision_axes_factory(stats, info), x, y, np.random.default_rng(1))
    parts = [decision_axes_factory(stats, info) for _ in range(3)]
    for part, idx in zip(parts, np.array_split(np.arange(n), 3), strict=True):
        _feed(part, x[idx], y[idx], np.random.default_rng(2))
    merged = parts[0].merge(parts[1]).merge(parts[2])
    center = train_means.mean(0)
    np.testing.assert_array_equal(whole.class_counts.numpy(), np.bincount(y, minlength=K))
    for rule in ("head", "ncc"):
        for acc in (whole, merged):
            mean, var, cnt = acc.pair_mean[rule].numpy(), acc.pair_variance(rule).numpy(), acc.pair_count[rule].numpy()
            for i in range(K):
                sel = x[y == i]
                assert np.all(cnt[i] == len(sel))
                for j in range(K):
                    if i == j or len(sel) == 0:
                        continue
                    if rule == "head":
                        dw, db = W[i] - W[j], b[i] - b[j]
                    else:
                        dw = 2 * (train_means[i] - train_means[j])
                        db = train_means[j] @ train_means[j] - train_means[i] @ train_means[i]
                    t, _ = _brute_t(sel, dw, db, center)
                    assert mean[i, j] == pytest.approx(t.mean(), rel=1e-10, abs=1e-10)
                    if len(sel) >= 2:
                        assert var[i, j] == pytest.approx(t.var(ddof=1), rel=1e-10, abs=1e-12)
                    else:
                        assert np.isnan(var[i, j])
    # a saved and reloaded accumulator gives the same tables
    back = DecisionAxisStats.from_state(whole.state())
    for rule in ("head", "ncc"):
        torch.testing.assert_close(back.pair_m2[rule], whole.pair_m2[rule], rtol=0, atol=0)


def test_t_is_bounded_by_dw_norm_and_keeps_the_sign_of_the_margin():
    rng = np.random.default_rng(3)
    K, d, n = 5, 8, 4000
    W = rng.normal(size=(K, d)) * rng.uniform(0.01, 10, size=(K, 1))
    W[4] = W[3]                               # Δw = 0 for the pair (3, 4)
    b = rng.normal(size=K) * 5
    center = rng.normal(size=d) * 3
    x = np.concatenate([rng.normal(size=(n, d)) * rng.uniform(0.001, 100, size=(n, 1)) + rng.normal(size=d) * 50,
                        np.repeat(center[None], 10, 0)])  # includes x = o exactly
    y = rng.integers(0, K, len(x))
    rule = AffineRule(W, b, center=center)
    t = rule.values(x, y).numpy()
    R = rule.dw_norm.numpy()[y]
    assert np.all(np.abs(t) <= R * (1 + 1e-12) + 1e-300)
    for j in range(K):
        dw, db = W[y] - W[j], b[y] - b[j]
        g = (x * dw).sum(1) + db
        ok = (y != j) & (np.linalg.norm(dw, axis=1) > 0)
        scale = np.abs(x * dw).sum(1) + np.abs(db)
        clear = ok & (np.abs(g) > 1e-9 * scale)  # away from float ties
        assert np.all(np.sign(t[clear, j]) == np.sign(g[clear]))
        # the stored values equal the direct formula (bounded by Cauchy–Schwarz, see module docstring)
        for i in range(K):
            sel = clear & (y == i)
            if i != j and sel.any() and not (i in (3, 4) and j in (3, 4)):
                tb, _ = _brute_t(x[sel], W[i] - W[j], b[i] - b[j], center)
                np.testing.assert_allclose(t[sel, j], tb, rtol=1e-9, atol=1e-12 * R.max())
    assert np.all(t[y == 3, 4] == 0) and np.all(t[y == 4, 3] == 0)
    assert bool(rule.degenerate[3, 4]) and bool(rule.degenerate[4, 3])


def test_worst_case_mixture_is_the_exact_supremum():
    rng = np.random.default_rng(4)
    for _ in range(30):
        K = int(rng.integers(2, 8))
        pi_hat = rng.dirichlet(np.ones(K))
        pi_hat[rng.integers(0, K)] = 0.0
        pi_hat /= pi_hat.sum()
        B = rng.uniform(size=K)
        eps = float(rng.uniform(0, 1.5))
        # LP over (π, s) with s ≥ |π − π̂|, Σ s ≤ ε, π in the simplex: maximise Bᵀπ
        c = np.concatenate([-B, np.zeros(K)])
        I = np.eye(K)
        A_ub = np.block([[I, -I], [-I, -I], [np.zeros((1, K)), np.ones((1, K))]])
        b_ub = np.concatenate([pi_hat, -pi_hat, [eps]])
        A_eq = np.concatenate([np.ones(K), np.zeros(K)])[None]
        lp = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=[1.0], bounds=[(0, None)] * (2 * K))
        assert nc.worst_case_mixture(pi_hat, B, eps) == pytest.approx(-lp.fun, abs=1e-8)
        assert nc.worst_case_mixture(pi_hat, B, eps) <= pi_hat @ B + eps / 2 * (B.max() - B.min()) + 1e-12


# ------------------------------------------------------------------------------------------------
# sample-split certificate: coverage against closed-form population errors


def _two_gaussians(seed):
    """K = 2 isotropic Gaussian classes, a fixed head, exact population errors (head and its own NCC)."""
    d, sigma = 4, 1.0
    mu = np.array([[1.8, 3.0, 3.0, 3.0], [-1.8, 3.0, 3.0, 3.0]])  # common offset off the decision axis
    pi = np.array([0.35, 0.65])
    W = np.array([[1.0, 0.3, -0.2, 0.1], [-1.0, 0.1, 0.2, -0.1]])
    b = np.array([0.4, -0.1])
    return d, sigma, mu, pi, W, b


def _exact_linear_error(mu, pi, sigma, dws, dbs):
    """K = 2: Σ_i π_i Φ(−(Δw_iᵀμ_i + Δb_i)/(σ‖Δw_i‖)) for x ~ N(μ_i, σ²I)."""
    return sum(pi[i] * norm.cdf(-(dws[i] @ mu[i] + dbs[i]) / (sigma * np.linalg.norm(dws[i]))) for i in range(2))


def test_split_certificate_covers_the_population_error_of_a_fixed_head_and_ncc():
    d, sigma, mu, pi, W, b = _two_gaussians(0)
    delta, seeds, n = 0.05, 50, 2000
    head_err = _exact_linear_error(mu, pi, sigma, [W[0] - W[1], W[1] - W[0]], [b[0] - b[1], b[1] - b[0]])
    assert 0.01 < head_err < 0.2
    # true s_ij, σ²_ij of the head's normalized margins (for checking the individual confidence steps)
    rng_mc = np.random.default_rng(123)
    center = mu.mean(0)
    true_s, true_v = np.zeros((2, 2)), np.zeros((2, 2))
    for i in range(2):
        x = mu[i] + sigma * rng_mc.normal(size=(1_000_000, d))
        t, _ = _brute_t(x, W[i] - W[1 - i], b[i] - b[1 - i], center)
        true_s[i, 1 - i], true_v[i, 1 - i] = t.mean(), t.var()
    fails = {"head": 0, "ncc": 0, "mean_step": 0, "var_step": 0}
    values = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        ytr = rng.choice(2, size=60, p=pi)
        xtr = mu[ytr] + sigma * rng.normal(size=(60, d))
        train = ClassStats(2, d, "none").update(xtr, ytr)
        y = rng.choice(2, size=n, p=pi)
        x = mu[y] + sigma * rng.normal(size=(n, d))
        test = ClassStats(2, d, "none").update(x, y)
        info = ReplayInfo("test", head=(torch.as_tensor(W), torch.as_tensor(b)), reference_means=train.means,
                          reference_present=train.counts > 0)
        das = _feed(decision_axes_factory(test, info), x, y, rng, max_batch=n)  # centre: mean of the training means
        ctx = _context(2, train, test, {"decision_axes": das}, delta=delta, head=info.head)
        r_head, r_ncc = nc.nc_split_certificate(ctx), nc.nc_split_certificate_ncc(ctx)
        assert r_head.status == "certificate" and r_ncc.status == "certificate"
        assert r_head.delta == delta
        assert r_head.inputs["delta_priors"] + r_head.inputs["delta_estimates"] == pytest.approx(delta)
        assert r_head.inputs["n_estimates"] * r_head.inputs["delta_per_estimate"] == pytest.approx(r_head.inputs["delta_estimates"])
        m = train.means.numpy()
        ncc_err = _exact_linear_error(mu, pi, sigma, [2 * (m[0] - m[1]), 2 * (m[1] - m[0])],
                                      [m[1] @ m[1] - m[0] @ m[0], m[0] @ m[0] - m[1] @ m[1]])
        fails["head"] += r_head.value < head_err
        fails["ncc"] += r_ncc.value < ncc_err
        # the individual confidence steps, with the centre fixed at the true means' centre
        steps = DecisionAxisStats({"head": AffineRule(W, b, center=center)}).update(x, y)
        tab = nc.split_certificate(steps, "head", delta)
        for i in range(2):
            fails["mean_step"] += tab["s_lower"][i, 1 - i] > true_s[i, 1 - i]
            fails["var_step"] += (tab["s_lower"][i, 1 - i] > 0) and tab["var_upper"][i, 1 - i] < true_v[i, 1 - i]
        values.append(r_head.value)
    for key, count in fails.items():
        assert count / seeds <= delta, (key, count)
    assert np.median(values) < 0.75  # informative (its n → ∞ limit is the population Cantelli bound ≈ 0.24)


def test_split_certificate_k3_absent_test_class_and_degenerate_pair():
    rng = np.random.default_rng(7)
    K, d = 3, 3
    mu = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    W = mu.copy()
    W[1] = W[0]                   # classes 0 and 1 share a weight row: constant margin b_0 − b_1 > 0
    b = np.array([0.5, 0.0, 0.0])
    y = rng.choice([0, 1], size=4000)  # class 2 absent from the test split
    x = mu[y] + rng.normal(size=(4000, d))
    test = ClassStats(K, d, "none").update(x, y)
    train = ClassStats(K, d, "none").update(mu, np.arange(K))
    info = ReplayInfo("test", head=(torch.as_tensor(W), torch.as_tensor(b)), reference_means=torch.as_tensor(mu))
    das = _feed(decision_axes_factory(test, info), x, y, rng, max_batch=800)
    ctx = _context(K, train, test, {"decision_axes": das}, head=info.head)
    res = nc.nc_split_certificate(ctx)
    tab = nc.split_certificate(das, "head", 0.05)
    assert tab["pair_term"][0, 1] == 0.0 and tab["pair_term"][1, 0] == 1.0  # decided without data
    assert tab["class_bound"][1] == 1.0 and tab["class_bound"][2] == 1.0     # class 2 never seen
    # estimates: pairs (0,2), (1,2) only (rows 0, 1 seen; (0,1), (1,0) degenerate), each mean + variance
    assert tab["n_estimates"] == 4
    assert res.status == "certificate" and 0 < res.value <= 1
    assert res.details["class_bound"][2] == 1.0
    ncc = nc.nc_split_certificate_ncc(ctx)
    assert ncc.status == "certificate" and ncc.value < 1.0


def test_ncc_certificate_with_a_class_absent_from_training():
    rng = np.random.default_rng(8)
    K, d, n = 3, 3, 3000
    mu = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    ytr = rng.choice([0, 1], size=300)  # class 2 absent from training: its mean stays 0
    train = ClassStats(K, d, "none").update(mu[ytr] + rng.normal(size=(300, d)), ytr)
    y = rng.integers(0, K, n)
    x = mu[y] + rng.normal(size=(n, d))
    test = ClassStats(K, d, "none").update(x, y)
    info = ReplayInfo("test", reference_means=train.means, reference_present=train.counts > 0)
    with_mask = decision_axes_factory(test, info).update(x, y)
    rule = with_mask.rules["ncc"]
    assert rule.active.tolist() == [True, True, False]
    tab = nc.split_certificate(with_mask, "ncc", 0.05)
    assert tab["class_bound"][2] == 1.0 and np.all(tab["pair_term"][:, 2] == 0)  # never predicted
    assert tab["class_bound"][0] < 1.0
    # without the mask the zero row is both a competitor and uncertified (conservative both ways)
    no_mask = decision_axes_factory(test, ReplayInfo("test", reference_means=train.means)).update(x, y)
    assert no_mask.rules["ncc"].active.all() and no_mask.rules["ncc"].certify.tolist() == [True, True, False]
    tab2 = nc.split_certificate(no_mask, "ncc", 0.05)
    assert tab2["class_bound"][2] == 1.0 and np.all(tab2["pair_term"][:2, 2] > 0)
    assert tab2["value"] >= tab["value"] - 1e-12


# ------------------------------------------------------------------------------------------------
# m-shot NCC: exact moments and Cantelli bound versus Monte Carlo


def _skewed_point_sets(rng, K=3, d=4, n=250, sep=2.2):
    """Finite, skewed, correlated class distributions (uniform on fixed point sets)."""
    pts, labels = [], []
    for c in range(K):
        A = rng.normal(size=(d, d)) * (0.5 + 0.4 * c)
        noise = rng.exponential(size=(n + 40 * c, d)) - 1.0
        if c == 1:
            noise = noise ** 2 - 2.0        # heavier right tail
        p = sep * rng.normal(size=d) + noise @ A.T
        pts.append(p)
        labels.append(np.full(len(p), c))
    return pts, np.concatenate(pts), np.concatenate(labels)


def _pair_moments_of(x, y, K):
    stats = ClassStats(K, x.shape[1], "none").update(x, y)
    pm = _feed(pair_moments_factory(stats, {}), x, y, np.random.default_rng(5))
    return stats, pm


def _mc_z(pts, i, j, m, N, rng):
    P, Q = pts[i], pts[j]
    xs = P[rng.integers(0, len(P), N)]
    mi = P[rng.integers(0, len(P), (N, m))].mean(1)
    mj = Q[rng.integers(0, len(Q), (N, m))].mean(1)
    return ((xs - mj) ** 2).sum(1) - ((xs - mi) ** 2).sum(1)


@pytest.mark.parametrize("m", [1, 3])
def test_mshot_moments_match_monte_carlo_on_skewed_classes(m):
    rng = np.random.default_rng(11)
    K = 3
    pts, x, y = _skewed_point_sets(rng, K)
    _, pm = _pair_moments_of(x, y, K)
    E, Var, present = nc.mshot_ncc_moments(pm.moments(), m)
    assert present.all()
    N = 300_000
    for i in range(K):
        for j in range(K):
            if i == j:
                continue
            z = _mc_z(pts, i, j, m, N, rng)
            mean, var = z.mean(), z.var()
            se_mean = math.sqrt(var / N)
            se_var = math.sqrt(max(((z - mean) ** 4).mean() - var**2, 0.0) / N)
            assert abs(E[i, j] - mean) < 5 * se_mean, (i, j, E[i, j], mean, se_mean)
            assert abs(Var[i, j] - var) < 5 * se_var, (i, j, Var[i, j], var, se_var)
    # the third-moment term matters here: dropping it moves Var by many MC standard errors
    assert np.abs(pm.moments()["third_pair"]).max() > 0.1


def test_cantelli_bound_exceeds_the_monte_carlo_mshot_ncc_error():
    rng = np.random.default_rng(12)
    K, m = 3, 2
    pts, x, y = _skewed_point_sets(rng, K, sep=8.0)  # separated enough for a non-vacuous bound
    stats, pm = _pair_moments_of(x, y, K)
    ctx = _context(K, stats, stats, {"pair_moments": pm}, shots=(m, 1, 10))
    res = nc.nc_cantelli(ctx)
    assert res.status == "plug-in" and res.inputs["m"] == m
    assert set(res.details["per_shots"]) == {"2", "1", "10"}
    counts = np.array([len(p) for p in pts], float)
    N = 200_000
    errs = []
    for i in range(K):
        xs = pts[i][rng.integers(0, len(pts[i]), N)]
        centers = np.stack([pts[c][rng.integers(0, len(pts[c]), (N, m))].mean(1) for c in range(K)], 1)
        dist = ((xs[:, None, :] - centers) ** 2).sum(2)
        errs.append(np.mean(dist.argmin(1) != i))
    mc = float(counts @ np.array(errs) / counts.sum())
    assert mc <= res.value < 1.0, (res.value, mc)
    assert 0.01 < mc < 0.5
    g = nc.gaussian_ncc(ctx)
    assert g.status == "predictor" and not g.vacuous and g.value <= res.value


def test_gaussian_ncc_is_close_to_monte_carlo_for_gaussian_classes():
    rng = np.random.default_rng(13)
    K, d, m, n = 2, 16, 5, 20_000
    mu = np.zeros((K, d))
    mu[0, 0], mu[1, 0] = 1.1, -1.1
    scales = [np.full(d, 1.0), np.linspace(0.5, 1.5, d)]
    y = np.repeat(np.arange(K), n)
    x = mu[y] + rng.normal(size=(K * n, d)) * np.stack(scales)[y]
    stats, pm = _pair_moments_of(x, y, K)
    ctx = _context(K, stats, stats, {"pair_moments": pm}, shots=(m,))
    pred = nc.gaussian_ncc(ctx).value
    N = 200_000
    errs = []
    for i in range(K):
        xs = mu[i] + rng.normal(size=(N, d)) * scales[i]
        centers = np.stack([mu[c] + rng.normal(size=(N, m, d)).mean(1) * scales[c] for c in range(K)], 1)
        errs.append(np.mean(((xs[:, None] - centers) ** 2).sum(2).argmin(1) != i))
    mc = float(np.mean(errs))
    print(f"gaussian_ncc {pred:.4f}  Monte Carlo {mc:.4f}")
    assert 0.05 < mc < 0.3
    assert abs(pred - mc) < 0.1 * mc, (pred, mc)
    assert nc.nc_cantelli(ctx).value >= mc


# ------------------------------------------------------------------------------------------------
# not-applicable cases and registration


def test_registration_and_not_applicable_cases():
    for name in ("nc_split_certificate", "nc_split_certificate_ncc", "nc_cantelli", "gaussian_ncc"):
        assert REGISTRY[name].group == "collapse"
    assert REGISTRY["nc_split_certificate"].status == "certificate"
    assert REGISTRY["nc_cantelli"].status == "plug-in" and REGISTRY["gaussian_ncc"].status == "predictor"
    assert REPLAY["decision_axes"].splits == ("test",) and REPLAY["pair_moments"].splits == ("test",)
    assert set(REPLAY["decision_axes"].needed_by) == {"nc_split_certificate", "nc_split_certificate_ncc"}
    assert set(REPLAY["pair_moments"].needed_by) == {"nc_cantelli", "gaussian_ncc"}

    rng = np.random.default_rng(9)
    K, d = 3, 4
    y = rng.integers(0, K, 300)
    x = rng.normal(size=(K, d))[y] * 3 + rng.normal(size=(300, d))
    stats = ClassStats(K, d, "none").update(x, y)
    # no head: only the NCC variant
    das = _feed(decision_axes_factory(stats, ReplayInfo("test", reference_means=stats.means)), x, y)
    assert set(das.rules) == {"ncc"}
    pm = _feed(pair_moments_factory(stats, {}), x, y)
    ctx = _context(K, stats, stats, {"decision_axes": das, "pair_moments": pm})
    head = nc.nc_split_certificate(ctx)
    assert head.status == "not-applicable" and head.value is None and "no linear head" in head.reason
    assert nc.nc_split_certificate_ncc(ctx).status == "certificate"
    assert decision_axes_factory(stats, ReplayInfo("test")) is None
    # nothing collected
    bare = _context(K, stats, stats, {})
    for f in (nc.nc_split_certificate, nc.nc_split_certificate_ncc, nc.nc_cantelli, nc.gaussian_ncc):
        r = f(bare)
        assert r.status == "not-applicable" and r.reason
    # per-class covariances over the memory budget
    assert pair_moments_factory(stats, {}, budget_bytes=K * d * d * 8 - 1) is None
    big = ClassStats(2, 6000, "none")
    assert pair_moments_factory(big, {}) is None
    r = nc.nc_cantelli(_context(2, big, big, {}))
    assert r.status == "not-applicable" and r.reason.startswith("needs per-class covariances: K·d² too large")
    # K < 2
    one = ClassStats(1, d, "none").update(x[:10], np.zeros(10, int))
    ctx1 = _context(1, one, one, {"pair_moments": _feed(pair_moments_factory(one, {}), x[:10], np.zeros(10, int))})
    for f in (nc.nc_split_certificate, nc.nc_split_certificate_ncc, nc.nc_cantelli, nc.gaussian_ncc):
        r = f(ctx1)
        assert r.status == "not-applicable" and "K ≥ 2" in r.reason
    # only one class present in the test split
    only = ClassStats(K, d, "none").update(x[y == 0], y[y == 0])
    pm1 = _feed(pair_moments_factory(only, {}), x[y == 0], y[y == 0])
    r = nc.nc_cantelli(_context(K, stats, only, {"pair_moments": pm1}))
    assert r.status == "not-applicable" and "at least 2 classes" in r.reason


def test_pair_moments_merge_and_state():
    rng = np.random.default_rng(10)
    K, d = 3, 5
    y = rng.integers(0, K, 400)
    x = rng.normal(size=(K, d))[y] * 4 + rng.exponential(size=(400, d))
    stats = ClassStats(K, d, "none").update(x, y)
    whole = _feed(PairMoments(stats.means), x, y)
    a, b = PairMoments(stats.means), PairMoments(stats.means)
    _feed(a, x[:150], y[:150])
    _feed(b, x[150:], y[150:])
    a.merge(b)
    back = PairMoments.from_state(whole.state())
    for acc in (a, back):
        for key, val in whole.moments().items():
            np.testing.assert_allclose(acc.moments()[key], val, rtol=1e-12, atol=1e-12)
    mom = whole.moments()
    for c in range(K):
        e = x[y == c] - x[y == c].mean(0)
        cov = e.T @ e / len(e)
        assert mom["trace_sq"][c] == pytest.approx(np.trace(cov @ cov), rel=1e-10)
        assert mom["fourth"][c] == pytest.approx(np.mean((e * e).sum(1) ** 2), rel=1e-10)
    assert whole.mean_residual() < 1e-12
