"""Numerics of the float64 class statistics: strong collapse, shard merging, save/load.

Why centered scatter (Chan et al.) and never raw second moments
------------------------------------------------------------------
Under strong collapse the features sit at ‖h‖ ≈ 50 (a common offset) while the within-class spread
is σ = 1e-6. Raw moments compute Σ_c = E[hhᵀ] − μμᵀ from two numbers of size ‖h‖² ≈ 2500 whose
difference is σ² = 1e-12: float64 keeps ≈16 digits, so each entry of E[hhᵀ] carries an absolute
rounding error ≈ 2500 · 2.2e-16 ≈ 5e-13 — the same order as σ² itself. The result is garbage:
already at σ = 1e-6 the "covariance" is indefinite (negative eigenvalues), and at σ = 1e-8 NC1
computed from it is negative (see ``test_raw_second_moments_fail_under_strong_collapse``).
Centering first (h − μ_c, error ≈ 50·2.2e-16 ≈ 1e-14 against a spread of 1e-6 or 1e-8) keeps
~6–8 correct digits, which is what the 1 % check below needs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

try:  # tests/ is not a package today; keep working if it becomes one
    from tests.reference_collapse import (
        class_statistics,
        closed_forms,
        exact_isotropic_etf_data,
        pinv_psd,
        reference_metrics,
    )
except ImportError:  # pragma: no cover - depends on how pytest set up sys.path
    from reference_collapse import (
        class_statistics,
        closed_forms,
        exact_isotropic_etf_data,
        pinv_psd,
        reference_metrics,
    )


def _ClassStats():
    return pytest.importorskip("ncbounds.stats").ClassStats


def _collapse_metrics():
    return pytest.importorskip("ncbounds.metrics.collapse").collapse_metrics


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _rel(a, b) -> float:
    """Norm-wise relative difference ‖a − b‖ / ‖b‖ (exact 0 when both vanish)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    diff = np.linalg.norm(a - b)
    return diff if nb == 0 else diff / nb


# ------------------------------------------------------------------------------------------------
# strong collapse
# ------------------------------------------------------------------------------------------------

K_SC, D_SC, R_SC, OFFSET_NORM = 10, 32, 1.0, 50.0


def strong_collapse_data(sigma, seed=1):
    """ETF means of norm 1, within-class covariance exactly σ²I, common offset of norm 50."""
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(D_SC)
    offset *= OFFSET_NORM / np.linalg.norm(offset)
    h, y, Mt, offset = exact_isotropic_etf_data(K_SC, D_SC, sigma, R_SC, offset=offset, rng=rng)
    return h, y, Mt, offset


SIGMAS = [1e-6, 1e-8]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_strong_collapse_reference(sigma):
    """The two-pass reference recovers the closed forms (validates the construction)."""
    h, y, _, _ = strong_collapse_data(sigma)
    ref = reference_metrics(h, y, K_SC)
    for key, value in closed_forms(K_SC, D_SC, sigma, R_SC).items():
        assert ref[key] > 0
        assert ref[key] == pytest.approx(value, rel=1e-6, abs=0), key


@pytest.mark.parametrize("sigma", SIGMAS)
def test_strong_collapse_library_stats(sigma):
    """ClassStats fed in batches of 3 (heavy merging) → NC1 within 1 % of σ²(K−1)²/(K r²), > 0."""
    ClassStats = _ClassStats()
    collapse_metrics = _collapse_metrics()
    h, y, _, _ = strong_collapse_data(sigma)
    stats = ClassStats(num_classes=K_SC, dim=D_SC)
    for i in range(0, len(y), 3):
        stats.update(torch.as_tensor(h[i:i + 3]), torch.as_tensor(y[i:i + 3]))
    got = collapse_metrics(stats)
    expected = closed_forms(K_SC, D_SC, sigma, R_SC)
    for key, value in expected.items():
        v = float(got[key])
        assert v > 0, f"{key} = {v} must be positive under strong collapse"
        assert v == pytest.approx(value, rel=0.01, abs=0), key
    # the per-class scatter itself must stay PSD and ≈ n_c σ² I
    scatter = _np(stats.scatter)
    counts = _np(stats.counts)
    for c in range(K_SC):
        lam = np.linalg.eigvalsh(0.5 * (scatter[c] + scatter[c].T)) / counts[c]
        assert lam.min() > 0.98 * sigma**2 and lam.max() < 1.02 * sigma**2


@pytest.mark.parametrize("sigma", SIGMAS)
def test_strong_collapse_library_functional(sigma):
    F = pytest.importorskip("ncbounds.metrics.functional")
    h, y, _, _ = strong_collapse_data(sigma)
    got = F.metrics_from_features(h, y, num_classes=K_SC, batch_size=3)
    for key, value in closed_forms(K_SC, D_SC, sigma, R_SC).items():
        assert float(got[key]) > 0, key
        assert float(got[key]) == pytest.approx(value, rel=0.01, abs=0), key


def test_raw_second_moments_fail_under_strong_collapse():
    """Demonstration (numpy only) of why the library must not use E[hhᵀ] − μμᵀ.

    Σ_c^raw = (1/n_c) Σ h hᵀ − μ_c μ_cᵀ subtracts two ≈2500-sized numbers to get ≈σ².
    """
    # σ = 1e-6: raw covariance already indefinite although the true one is σ²I
    h, y, Mt, _ = strong_collapse_data(1e-6)
    raw_min_eig = []
    for c in range(K_SC):
        hc = h[y == c]
        mu = hc.mean(axis=0)
        raw = hc.T @ hc / len(hc) - np.outer(mu, mu)
        raw_min_eig.append(np.linalg.eigvalsh(raw).min())
    assert min(raw_min_eig) < 0

    # σ = 1e-8: NC1 from raw moments is wildly wrong (negative here); centered is right
    sigma = 1e-8
    h, y, Mt, _ = strong_collapse_data(sigma)
    N = len(y)
    Sigma_W_raw = np.zeros((D_SC, D_SC))
    for c in range(K_SC):
        hc = h[y == c]
        mu = hc.mean(axis=0)
        Sigma_W_raw += (hc.T @ hc - len(hc) * np.outer(mu, mu)) / N
    Sigma_B = Mt.T @ Mt / K_SC
    nc1_raw = np.trace(Sigma_W_raw @ pinv_psd(Sigma_B)) / K_SC
    nc1_true = closed_forms(K_SC, D_SC, sigma, R_SC)["nc1"]
    assert not (0.5 * nc1_true < nc1_raw < 2 * nc1_true)
    assert reference_metrics(h, y, K_SC)["nc1"] == pytest.approx(nc1_true, rel=1e-6, abs=0)


# ------------------------------------------------------------------------------------------------
# shard merging
# ------------------------------------------------------------------------------------------------

K_M, D_M = 7, 11
SHARD_SIZES = [1, 23, 76, 200]  # unequal; the 1-sample shard lacks most classes


def merge_data(seed=4):
    rng = np.random.default_rng(seed)
    N = sum(SHARD_SIZES)
    y = rng.integers(0, K_M, size=N)
    y[:K_M] = np.arange(K_M)  # every class present overall
    rng.shuffle(y)
    means = 3.0 * rng.standard_normal((K_M, D_M)) + 10.0  # offset ≈ 10 to stress cancellation
    h = means[y] + rng.standard_normal((N, D_M)) * rng.uniform(0.2, 2.0, size=D_M)
    return h, y


def _shard_stats(h, y, batch=13):
    ClassStats = _ClassStats()
    shards = []
    start = 0
    for size in SHARD_SIZES:
        s = ClassStats(num_classes=K_M, dim=D_M)
        for i in range(start, start + size, batch):
            stop = min(i + batch, start + size)
            s.update(h[i:stop], y[i:stop])
        shards.append(s)
        start += size
    return shards


def _one_pass(h, y):
    s = _ClassStats()(num_classes=K_M, dim=D_M)
    s.update(h, y)
    return s


def _assert_stats_equal(a, b, rtol=1e-12):
    np.testing.assert_array_equal(_np(a.counts), _np(b.counts))
    ma, mb = _np(a.means), _np(b.means)
    sa, sb = _np(a.scatter), _np(b.scatter)
    for c in range(K_M):
        assert _rel(ma[c], mb[c]) <= rtol, f"means of class {c}: rel {_rel(ma[c], mb[c]):.2e}"
        assert _rel(sa[c], sb[c]) <= rtol, f"scatter of class {c}: rel {_rel(sa[c], sb[c]):.2e}"


MERGE_ORDERS = {
    "sequential": lambda s: s[0].merge(s[1]).merge(s[2]).merge(s[3]),
    "reversed": lambda s: s[3].merge(s[2]).merge(s[1]).merge(s[0]),
    "shuffled": lambda s: s[2].merge(s[0]).merge(s[3]).merge(s[1]),
    "tree": lambda s: s[0].merge(s[1]).merge(s[2].merge(s[3])),
    "tree_swapped": lambda s: s[3].merge(s[1]).merge(s[2].merge(s[0])),
}


def test_one_pass_stats_match_reference():
    h, y = merge_data()
    s = _one_pass(h, y)
    counts, means, covs = class_statistics(h, y, K_M)
    np.testing.assert_array_equal(_np(s.counts), counts)
    assert _np(s.means).dtype == np.float64
    assert _np(s.scatter).dtype == np.float64
    assert _np(s.scatter).shape == (K_M, D_M, D_M)
    for c in range(K_M):
        assert _rel(_np(s.means)[c], means[c]) <= 1e-12
        assert _rel(_np(s.scatter)[c], counts[c] * covs[c]) <= 1e-12


@pytest.mark.parametrize("order", list(MERGE_ORDERS))
def test_shard_merge_equals_one_pass(order):
    h, y = merge_data()
    ref = _one_pass(h, y)
    shards = _shard_stats(h, y)
    assert (_np(shards[0].counts) == 0).sum() >= K_M - 1  # really has absent classes
    merged = MERGE_ORDERS[order](shards)
    _assert_stats_equal(merged, ref)
    # and against the store-everything reference
    counts, means, covs = class_statistics(h, y, K_M)
    np.testing.assert_array_equal(_np(merged.counts), counts)
    for c in range(K_M):
        assert _rel(_np(merged.means)[c], means[c]) <= 1e-12
        assert _rel(_np(merged.scatter)[c], counts[c] * covs[c]) <= 1e-12


def test_merge_with_empty_stats():
    """A worker that saw no data contributes nothing, on either side of merge."""
    ClassStats = _ClassStats()
    h, y = merge_data()
    ref = _one_pass(h, y)
    left = ClassStats(num_classes=K_M, dim=D_M).merge(_one_pass(h, y))
    right = _one_pass(h, y).merge(ClassStats(num_classes=K_M, dim=D_M))
    _assert_stats_equal(left, ref, rtol=1e-14)
    _assert_stats_equal(right, ref, rtol=1e-14)


def test_update_numpy_torch_and_float32_inputs():
    h, y = merge_data()
    ClassStats = _ClassStats()
    a = ClassStats(num_classes=K_M, dim=D_M)
    a.update(h, y)
    b = ClassStats(num_classes=K_M, dim=D_M)
    b.update(torch.as_tensor(h), torch.as_tensor(y))
    _assert_stats_equal(a, b, rtol=1e-14)
    # float32 features accumulate into float64 statistics (of the float32-rounded values)
    h32 = h.astype(np.float32)
    c = ClassStats(num_classes=K_M, dim=D_M)
    c.update(torch.as_tensor(h32), torch.as_tensor(y))
    assert _np(c.means).dtype == np.float64
    counts, means, covs = class_statistics(h32.astype(np.float64), y, K_M)
    for k in range(K_M):
        assert _rel(_np(c.means)[k], means[k]) <= 1e-12
        assert _rel(_np(c.scatter)[k], counts[k] * covs[k]) <= 1e-12


# ------------------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------------------


def test_save_load_round_trip_exact(tmp_path):
    ClassStats = _ClassStats()
    h, y = merge_data()
    s = ClassStats(num_classes=K_M, dim=D_M)
    s.update(h[:150], y[:150])
    path = tmp_path / "stats.pt"
    s.save(path)
    t = ClassStats.load(path)
    assert isinstance(t, ClassStats)
    for name in ("counts", "means", "scatter"):
        a, b = getattr(s, name), getattr(t, name)
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), name
        assert torch.as_tensor(a).dtype == torch.as_tensor(b).dtype, name
    # nothing is lost: continuing to stream into both gives bit-identical statistics
    s.update(h[150:], y[150:])
    t.update(h[150:], y[150:])
    for name in ("counts", "means", "scatter"):
        assert torch.equal(torch.as_tensor(getattr(s, name)), torch.as_tensor(getattr(t, name)))
    # and the loaded object still merges correctly
    u = ClassStats.load(path).merge(_one_pass(h[150:], y[150:]))
    _assert_stats_equal(u, _one_pass(h, y))
