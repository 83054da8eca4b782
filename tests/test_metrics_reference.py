"""Library collapse metrics against the independent store-everything reference.

Three groups of tests:

* the reference itself against DESIGN §5 closed forms (exact-covariance simplex-ETF data) and
  known identities — these need no library;
* ``metrics_from_features`` (streamed in small batches) and ``collapse_metrics`` (stats built by
  several ``update`` calls) against the reference on random data, every key, ≤ 1e-9 relative;
* invariances (rotation, translation, scaling, class permutation), run on both implementations.

Library modules are imported lazily with ``pytest.importorskip`` so the file collects before the
library exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

try:  # tests/ is not a package today; keep working if it becomes one
    from tests.reference_collapse import (
        CLASSIFIER_KEYS,
        FEATURE_KEYS,
        LOGIT_KEYS,
        NCC_KEYS,
        closed_forms,
        exact_isotropic_etf_data,
        random_orthogonal,
        reference_metrics,
        simplex_etf_means,
    )
except ImportError:  # pragma: no cover - depends on how pytest set up sys.path
    from reference_collapse import (
        CLASSIFIER_KEYS,
        FEATURE_KEYS,
        LOGIT_KEYS,
        NCC_KEYS,
        closed_forms,
        exact_isotropic_etf_data,
        random_orthogonal,
        reference_metrics,
        simplex_etf_means,
    )

RTOL = 1e-9
ZERO_ATOL = 1e-12  # only used where the reference value is (numerically) exactly zero
ALL_KEYS = FEATURE_KEYS + NCC_KEYS + CLASSIFIER_KEYS + LOGIT_KEYS


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _functional():
    return pytest.importorskip("ncbounds.metrics.functional")


def _collapse():
    return pytest.importorskip("ncbounds.metrics.collapse")


def _stats_module():
    return pytest.importorskip("ncbounds.stats")


def _to_float(v) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().cpu().item())
    return float(v)


def assert_close_value(key, got, want, rtol=RTOL, zero_atol=ZERO_ATOL, atol=0.0):
    got = _to_float(got)
    assert np.isfinite(got), f"{key}: got non-finite {got}"
    if abs(want) <= zero_atol:
        assert abs(got) <= zero_atol, f"{key}: got {got!r}, expected 0 (|x| <= {zero_atol})"
    else:
        assert abs(got - want) <= rtol * abs(want) + atol, (
            f"{key}: got {got!r}, reference {want!r}, rel. err {abs(got - want) / abs(want):.3e}"
        )


def assert_metrics_match(got: dict, want: dict, keys, **kw):
    missing = [k for k in keys if k not in got]
    assert not missing, f"library result lacks keys {missing}; has {sorted(got)}"
    for k in keys:
        assert_close_value(k, got[k], want[k], **kw)


def make_random_case(K, d, counts, seed, with_W=False, with_train_means=False):
    """Random Gaussian classes with anisotropic, class-dependent covariances and an offset."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts)
    means = 2.0 * rng.standard_normal((K, d)) + 3.0 * rng.standard_normal(d)
    hs, ys = [], []
    for c in range(K):
        A = rng.standard_normal((d, d)) * rng.uniform(0.3, 1.5) / np.sqrt(d)
        hs.append(means[c] + rng.standard_normal((counts[c], d)) @ A.T)
        ys.append(np.full(counts[c], c))
    h = np.concatenate(hs)
    y = np.concatenate(ys)
    perm = rng.permutation(len(y))
    h, y = h[perm], y[perm]
    out = {"h": h, "y": y, "K": K, "W": None, "b": None, "train_means": None}
    if with_W:
        Mt = means - means.mean(axis=0)
        # partly aligned with the means so that NC3/NC4/margins take non-trivial values
        out["W"] = Mt + 1.5 * rng.standard_normal((K, d))
        out["b"] = 0.5 * rng.standard_normal(K)
    if with_train_means:
        out["train_means"] = means + 0.7 * rng.standard_normal((K, d))
    return out


CASES = {
    "K2_d5": (2, 5, [40, 40]),
    "K3_d10": (3, 10, [17, 25, 31]),
    "K10_d64": (10, 64, [50] * 10),
    "K30_d20": (30, 20, [12] * 30),
    "K10_d4_d_lt_K": (10, 4, [25] * 10),
    "K8_d12_imbalanced": (8, 12, [3, 11, 19, 27, 36, 44, 52, 60]),
}
VARIANTS = ("features_only", "W_b", "W_b_train_means")


def _case(name, variant, seed_offset=0):
    K, d, counts = CASES[name]
    seed = 1000 + sorted(CASES).index(name) * 10 + VARIANTS.index(variant) + seed_offset
    return make_random_case(
        K, d, counts, seed,
        with_W=variant != "features_only",
        with_train_means=variant == "W_b_train_means",
    )


def _convert(x, kind):
    if x is None:
        return None
    return torch.as_tensor(x) if kind == "torch" else np.asarray(x)


def library_metrics(h, y, K, W=None, b=None, train_means=None, batch_size=7, kind="numpy"):
    F = _functional()
    return F.metrics_from_features(
        _convert(h, kind), _convert(y, kind), num_classes=K,
        W=_convert(W, kind), b=_convert(b, kind), train_means=_convert(train_means, kind),
        batch_size=batch_size,
    )


def compute(impl, h, y, K, W=None, b=None, train_means=None):
    if impl == "reference":
        return reference_metrics(h, y, K, W=W, b=b, train_means=train_means)
    return library_metrics(h, y, K, W=W, b=b, train_means=train_means, batch_size=7)


def expected_keys(has_W):
    return FEATURE_KEYS + NCC_KEYS + ((CLASSIFIER_KEYS + LOGIT_KEYS) if has_W else ())


# ------------------------------------------------------------------------------------------------
# 1. the reference against closed forms (no library needed)
# ------------------------------------------------------------------------------------------------

ETF_CASES = [(2, 5, 0.3, 1.0), (3, 10, 0.1, 2.0), (10, 16, 0.05, 1.0), (10, 64, 0.2, 3.0)]


def _etf_problem(K, d, sigma, r, seed=0):
    rng = np.random.default_rng(seed)
    offset = 4.0 * rng.standard_normal(d)
    h, y, Mt, offset = exact_isotropic_etf_data(K, d, sigma, r, offset=offset, rng=rng)
    # W = M̃ and b = −W μ_G (μ_G = offset) makes the linear head the nearest-class-mean rule
    return h, y, Mt, offset


@pytest.mark.parametrize("impl", ["reference", "library"])
@pytest.mark.parametrize("K,d,sigma,r", ETF_CASES)
def test_closed_forms_exact_covariance(impl, K, d, sigma, r):
    h, y, Mt, offset = _etf_problem(K, d, sigma, r)
    W, b = Mt, -Mt @ offset
    got = compute(impl, h, y, K, W=W, b=b)
    for key, value in closed_forms(K, d, sigma, r).items():
        assert_close_value(key, got[key], value, rtol=1e-10)
    # an exact ETF with W = M̃: NC2 = NC3 = NC4 = 0 and the NCC rule is perfect
    for key in (
        "nc2_equinorm_means", "nc2_equiangular_means", "nc2_maxangle_means",
        "nc2_etf_error_means", "nc2_equinorm_classifier", "nc2_etf_error_classifier",
        "nc3_papyan", "nc3_zhu",
    ):
        assert abs(_to_float(got[key])) <= ZERO_ATOL, f"{key} = {got[key]!r}, expected 0"
    assert _to_float(got["nc4_mismatch"]) == 0.0
    assert _to_float(got["ncc_error"]) == 0.0


def test_reference_etf_construction():
    """The synthetic means really are a simplex ETF and the noise covariance really is σ²I."""
    K, d, r, sigma = 7, 12, 2.5, 0.3
    rng = np.random.default_rng(3)
    Mt = simplex_etf_means(K, d, r, rng)
    G = Mt @ Mt.T
    np.testing.assert_allclose(np.diag(G), r**2, rtol=1e-13)
    off = G[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(off, -(r**2) / (K - 1), rtol=1e-12)
    np.testing.assert_allclose(Mt.sum(axis=0), 0.0, atol=1e-13)
    h, y, Mt, offset = exact_isotropic_etf_data(K, d, sigma, r, offset=np.ones(d), rng=rng)
    for c in range(K):
        D = h[y == c] - (Mt[c] + offset)
        np.testing.assert_allclose(D.mean(axis=0), 0.0, atol=1e-14)
        np.testing.assert_allclose(D.T @ D / len(D), sigma**2 * np.eye(d), atol=1e-14)


def test_reference_closed_forms_large_gaussian_sample():
    """Sanity check with plain Gaussian noise: closed forms hold to a few % for large n."""
    K, d, sigma, r, n = 5, 8, 0.3, 1.0, 20000
    rng = np.random.default_rng(11)
    Mt = simplex_etf_means(K, d, r, rng)
    y = np.repeat(np.arange(K), n)
    h = Mt[y] + sigma * rng.standard_normal((K * n, d)) + 2.0
    got = reference_metrics(h, y, K)
    for key, value in closed_forms(K, d, sigma, r).items():
        assert got[key] == pytest.approx(value, rel=0.03, abs=0), key


def test_reference_balanced_identity_and_hand_example():
    """D = K·NC1 when balanced, and a tiny hand-computed example."""
    case = make_random_case(6, 9, [20] * 6, seed=5)
    ref = reference_metrics(case["h"], case["y"], 6)
    assert ref["separation_fuzziness"] == pytest.approx(6 * ref["nc1"], rel=1e-10, abs=0)

    # K=2, d=1: class 0 = {-2, 0}, class 1 = {3, 5}. μ = (-1, 4), μ_G = 1.5, M̃ = (-2.5, 2.5).
    # Σ_W = 1, Σ_B = 6.25 → NC1 = (1/6.25)/2 = 0.08; trace ratio = 0.16; D = 0.16;
    # v = (1, 1), ‖μ_0 − μ_1‖² = 25 → CDNV = 2/50 = 0.04; directional CDNV = 1/25 = 0.04.
    h = np.array([[-2.0], [0.0], [3.0], [5.0]])
    y = np.array([0, 0, 1, 1])
    W = np.array([[-1.0], [1.0]])
    b = np.array([0.0, -1.0])
    ref = reference_metrics(h, y, 2, W=W, b=b)
    assert ref["nc1"] == pytest.approx(0.08, rel=1e-14, abs=0)
    assert ref["trace_ratio"] == pytest.approx(0.16, rel=1e-14, abs=0)
    assert ref["separation_fuzziness"] == pytest.approx(0.16, rel=1e-14, abs=0)
    assert ref["cdnv"] == pytest.approx(0.04, rel=1e-14, abs=0)
    assert ref["directional_cdnv"] == pytest.approx(0.04, rel=1e-14, abs=0)
    # logits z = (−h, h − 1): margins for the samples −2, 0, 3, 5 are 5, 1, 5, 9; sorted
    # (1, 5, 5, 9), numpy's linear percentile: p5 at position 0.15 → 1.6, p10 at 0.3 → 2.2
    assert ref["margin_min"] == 1.0
    assert ref["margin_median"] == pytest.approx(5.0, rel=1e-14, abs=0)
    assert ref["margin_p5"] == pytest.approx(1.6, rel=1e-14, abs=0)
    assert ref["margin_p10"] == pytest.approx(2.2, rel=1e-14, abs=0)
    # network: −2→0, 0→0 (z=(0,−1)), 3→1, 5→1; NCC with means (−1,4): 0,0,1,1 → no mismatch
    assert ref["nc4_mismatch"] == 0.0
    assert ref["ncc_error"] == 0.0
    assert ref["nc3_papyan"] == pytest.approx(0.0, abs=1e-15)


# ------------------------------------------------------------------------------------------------
# 2. library against the reference on random data
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(CASES))
def test_metrics_from_features_matches_reference(name, variant, kind):
    case = _case(name, variant)
    ref = reference_metrics(case["h"], case["y"], case["K"], W=case["W"], b=case["b"],
                            train_means=case["train_means"])
    got = library_metrics(case["h"], case["y"], case["K"], W=case["W"], b=case["b"],
                          train_means=case["train_means"], batch_size=7, kind=kind)
    assert_metrics_match(got, ref, expected_keys(case["W"] is not None))


@pytest.mark.parametrize("name", ["K3_d10", "K8_d12_imbalanced"])
def test_metrics_from_features_batch_size_independent(name):
    case = _case(name, "W_b_train_means")
    ref = reference_metrics(case["h"], case["y"], case["K"], W=case["W"], b=case["b"],
                            train_means=case["train_means"])
    for bs in (None, 1, 3, 64, 10_000):
        got = library_metrics(case["h"], case["y"], case["K"], W=case["W"], b=case["b"],
                              train_means=case["train_means"], batch_size=bs)
        assert_metrics_match(got, ref, expected_keys(True))


def test_metrics_from_features_infers_num_classes():
    case = _case("K3_d10", "features_only")
    F = _functional()
    got = F.metrics_from_features(case["h"], case["y"], batch_size=7)
    ref = reference_metrics(case["h"], case["y"], 3)
    assert_metrics_match(got, ref, expected_keys(False))


def test_metrics_from_features_W_without_bias():
    """W given, b omitted: logits are h Wᵀ (zero bias)."""
    case = _case("K8_d12_imbalanced", "W_b")
    ref = reference_metrics(case["h"], case["y"], case["K"], W=case["W"], b=None)
    got = library_metrics(case["h"], case["y"], case["K"], W=case["W"], b=None)
    assert_metrics_match(got, ref, expected_keys(True))


def _chunks(n, sizes):
    start = 0
    for s in sizes:
        if start >= n:
            return
        yield slice(start, min(start + s, n))
        start += s
    if start < n:
        yield slice(start, n)


@pytest.mark.parametrize("with_W", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_collapse_metrics_from_incremental_stats(name, with_W):
    case = _case(name, "W_b" if with_W else "features_only", seed_offset=100)
    S = _stats_module()
    C = _collapse()
    K, d = case["K"], case["h"].shape[1]
    stats = S.ClassStats(num_classes=K, dim=d)
    h, y = case["h"], case["y"]
    for i, sl in enumerate(_chunks(len(y), [1, 5, 2, 31, 7, 64])):
        # alternate numpy and torch inputs across update calls
        if i % 2:
            stats.update(torch.as_tensor(h[sl]), torch.as_tensor(y[sl]))
        else:
            stats.update(h[sl], y[sl])
    ref = reference_metrics(h, y, K, W=case["W"], b=case["b"])
    if with_W:
        got = C.collapse_metrics(stats, W=torch.as_tensor(case["W"]))
        assert_metrics_match(got, ref, FEATURE_KEYS + CLASSIFIER_KEYS)
    else:
        got = C.collapse_metrics(stats)
        assert_metrics_match(got, ref, FEATURE_KEYS)
        present = [k for k in CLASSIFIER_KEYS if k in got]
        assert not present, f"classifier keys {present} returned without W"


# ------------------------------------------------------------------------------------------------
# 3. invariances (both implementations)
# ------------------------------------------------------------------------------------------------

# "far_translation": a common offset of norm 1e4 (large relative to the class spread, as in
# ReLU features); the centred quantities must not pick up rounding noise from it.
TRANSFORMS = ["rotation", "translation", "far_translation", "scaling", "permutation", "all"]


def _transform(case, which, seed=7):
    """Transform features and classifier consistently so that logits are unchanged.

    h' = s·Q h + t (rows: h' = s·h Qᵀ + t), W' = W Qᵀ / s, b' = b − W' t, labels y' = π(y)
    (W, b rows permuted with the classes).
    """
    rng = np.random.default_rng(seed)
    K, d = case["K"], case["h"].shape[1]
    Q = np.eye(d)
    t = np.zeros(d)
    s = 1.0
    pi = np.arange(K)
    if which in ("rotation", "all"):
        Q = random_orthogonal(d, rng)
    if which in ("translation", "all"):
        t = 5.0 * rng.standard_normal(d)
    if which == "far_translation":
        t = rng.standard_normal(d)
        t *= 1e4 / np.linalg.norm(t)
    if which in ("scaling", "all"):
        s = 3.7
    if which in ("permutation", "all"):
        pi = rng.permutation(K)
    h = s * case["h"] @ Q.T + t
    y = pi[case["y"]]
    W = b = None
    if case["W"] is not None:
        W0 = case["W"] @ Q.T / s
        b0 = case["b"] - W0 @ t
        W = np.empty_like(W0)
        b = np.empty_like(b0)
        W[pi] = W0
        b[pi] = b0
    return {"h": h, "y": y, "K": K, "W": W, "b": b, "train_means": None}


@pytest.mark.parametrize("impl", ["reference", "library"])
@pytest.mark.parametrize("which", TRANSFORMS)
@pytest.mark.parametrize("name", ["K2_d5", "K3_d10", "K8_d12_imbalanced", "K10_d4_d_lt_K"])
def test_invariances(impl, which, name):
    case = _case(name, "W_b", seed_offset=200)
    base = compute(impl, case["h"], case["y"], case["K"], W=case["W"], b=case["b"])
    tc = _transform(case, which)
    moved = compute(impl, tc["h"], tc["y"], tc["K"], W=tc["W"], b=tc["b"])
    base = {k: _to_float(v) for k, v in base.items() if k in ALL_KEYS}
    # every feature metric is invariant; classifier metrics too since W moves with the features
    assert_metrics_match(moved, base, FEATURE_KEYS + NCC_KEYS + CLASSIFIER_KEYS + ("nc4_mismatch",))
    # margins are recomputed from transformed logits: allow rounding of the logits themselves
    # (‖t‖·‖W‖·eps ≈ 1e-11 for the far translation)
    for k in ("margin_min", "margin_p5", "margin_p10", "margin_median"):
        assert_close_value(k, moved[k], base[k], atol=1e-10 if which != "far_translation" else 1e-9)
