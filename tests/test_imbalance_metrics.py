"""Imbalance geometry metrics and the per-class breakdown against store-everything references.

The references below keep every feature in memory, form d×d matrices and loop over classes; they are
written from the papers (Hong & Ling 2023; Fang et al. 2021; Thrampoulidis et al. 2022) and do not
call the library.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats as sps

from ncbounds.errors import StatisticsError
from ncbounds.metrics.collapse import collapse_metrics
from ncbounds.metrics.imbalance import (
    block_cosines,
    imbalance_metrics,
    minority_collapse,
    minority_mask,
    nc1_weighted,
    per_class_breakdown,
    seli_distances,
    seli_targets,
)
from ncbounds.stats.class_stats import ClassStats
from ncbounds.stats.logit_stats import LogitStats
from ncbounds.stats.per_class import PerClassReplay
from ncbounds.stats.projected import ProjectedStats
from tests.reference_collapse import class_statistics, pinv_psd, reference_metrics

TOL = 1e-9


# ------------------------------------------------------------------------------------------------
# data and streaming helpers
# ------------------------------------------------------------------------------------------------


def imbalanced_data(counts, d=12, spread=3.0, noise=0.7, offset=5.0, seed=0):
    """Gaussian classes with anisotropic noise and a common offset; labels interleaved."""
    rng = np.random.default_rng(seed)
    K = len(counts)
    means = spread * rng.standard_normal((K, d)) + offset
    hs, ys = [], []
    for c, n in enumerate(counts):
        A = noise * rng.standard_normal((d, d)) / np.sqrt(d)
        hs.append(means[c] + rng.standard_normal((n, d)) @ A)
        ys.append(np.full(n, c))
    h, y = np.concatenate(hs), np.concatenate(ys)
    perm = rng.permutation(len(y))
    W = rng.standard_normal((K, d))
    b = 0.1 * rng.standard_normal(K)
    return h[perm], y[perm], W, b


def stream(h, y, K, batch=37, scatter_mode="none"):
    """ClassStats + ProjectedStats of (h, y), streamed in batches."""
    s = ClassStats(K, h.shape[1], scatter_mode)
    ht, yt = torch.as_tensor(h), torch.as_tensor(y)
    for i in range(0, len(y), batch):
        s.update(ht[i : i + batch], yt[i : i + batch])
    p = ProjectedStats(s.means, s.counts)
    for i in range(0, len(y), batch):
        p.update(ht[i : i + batch], yt[i : i + batch])
    return s, p


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------


def ref_nc1_weighted(h, y, K):
    """Hong & Ling (2023): Σ_W = (1/N)Σ(h−μ_y)(·)ᵀ, Σ_B = Σ_k (n_k/N)(μ_k − μ̄)(·)ᵀ, NC1 = Tr(Σ_W Σ_B⁺)/K."""
    counts, means, _ = class_statistics(h, y, K)
    N = len(y)
    mu_bar = h.mean(0)
    R = h - means[y]
    Sw = R.T @ R / N
    Sb = sum(counts[k] / N * np.outer(means[k] - mu_bar, means[k] - mu_bar) for k in range(K))
    return float(np.trace(Sw @ pinv_psd(Sb)) / K)


def ref_block_cos(rows, minority):
    """Mean cosine over unordered pairs within minority / majority, and over minority × majority."""
    def cos(u, v):
        return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    mino = [i for i in range(len(rows)) if minority[i]]
    majo = [i for i in range(len(rows)) if not minority[i]]

    def within(idx):
        return np.mean([cos(rows[i], rows[j]) for i, j in itertools.combinations(idx, 2)]) if len(idx) >= 2 else None

    cross = np.mean([cos(rows[i], rows[j]) for i in mino for j in majo]) if mino and majo else None
    return {"minority": within(mino), "majority": within(majo), "cross": cross}


def ref_seli(W, Mt, counts):
    """SELI distances with S = PDP; S^{1/2} and its pseudo-inverse from an eigendecomposition of S."""
    K = len(counts)
    P = np.eye(K) - np.ones((K, K)) / K
    S = P @ np.diag(counts.astype(float)) @ P
    lam, V = np.linalg.eigh(S)
    keep = lam > 1e-10 * lam.max()
    half = (V[:, keep] * np.sqrt(lam[keep])) @ V[:, keep].T
    half_pinv = (V[:, keep] / np.sqrt(lam[keep])) @ V[:, keep].T
    nf = lambda A: A / np.linalg.norm(A, "fro")  # noqa: E731
    return {
        "seli_distance_W": np.linalg.norm(nf(W @ W.T) - nf(half), "fro"),
        "seli_distance_M": np.linalg.norm(nf(Mt @ Mt.T) - nf(half_pinv), "fro"),
        "seli_distance_logits": np.linalg.norm(nf(W @ Mt.T) - nf(P), "fro"),
    }


def ref_per_class(h, y, K, W, b, train_means):
    """Per-class rows from all samples (loops; nc1 share = Tr((n_c/N) Σ_c Σ_B⁺)/K, Σ_B = M̃ᵀM̃/K)."""
    counts, means, covs = class_statistics(h, y, K)
    N = len(y)
    Mt = means - means.mean(0)
    Sb_pinv = pinv_psd(Mt.T @ Mt / K)
    z = h @ W.T + b
    pred = z.argmax(1)
    gamma = np.array([z[i, y[i]] - np.delete(z[i], y[i]).max() for i in range(N)])
    ncc = np.argmin(((h[:, None, :] - train_means[None]) ** 2).sum(-1), axis=1)
    rows = []
    for c in range(K):
        sel = y == c
        k = int((pred[sel] != c).sum())
        n = int(counts[c])
        lo = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
        hi = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
        rows.append({
            "class": c, "n": n, "errors": k, "error": k / n, "ci95": [lo, hi],
            "variability": float(np.trace(covs[c])),
            "mean_norm": float(np.linalg.norm(Mt[c])),
            "classifier_norm": float(np.linalg.norm(W[c])), "bias": float(b[c]),
            "margin_median": float(np.median(gamma[sel])),
            "ncc_error": float(np.mean(ncc[sel] != c)),
            "nc1_share": float(np.trace((n / N) * covs[c] @ Sb_pinv) / K),
        })
    return rows, pred, gamma


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------

COUNTS = [240, 130, 70, 35, 18, 9]


def test_nc1_weighted_imbalanced_matches_reference():
    h, y, _, _ = imbalanced_data(COUNTS)
    s, p = stream(h, y, 6)
    ref = ref_nc1_weighted(h, y, 6)
    assert nc1_weighted(s, p) == pytest.approx(ref, rel=TOL)
    # the scatter route gives the same value, and it differs from canonical NC1 here
    s2, _ = stream(h, y, 6, scatter_mode="pooled")
    assert nc1_weighted(s2) == pytest.approx(ref, rel=TOL)
    assert abs(ref - reference_metrics(h, y, 6)["nc1"]) > 1e-3 * ref
    assert nc1_weighted(s) is None  # no second-order statistics collected


def test_nc1_weighted_equals_nc1_when_balanced():
    h, y, _, _ = imbalanced_data([50] * 5, seed=3)
    s, p = stream(h, y, 5)
    assert nc1_weighted(s, p) == pytest.approx(collapse_metrics(s, projected=p)["nc1"], rel=1e-12)


def test_minority_mask_default_and_explicit():
    # geometric mean of 240 and 9 is 46.5: classes with 35, 18, 9 are minority
    assert minority_mask(np.array(COUNTS)).tolist() == [False, False, False, True, True, True]
    assert not minority_mask(np.array([10, 10, 10])).any()
    assert minority_mask(np.array(COUNTS), minority=[0, 2]).tolist() == [True, False, True, False, False, False]
    assert minority_mask(np.array([100, 0, 4, 50])).tolist() == [False, False, True, False]


def test_minority_collapse_matches_reference():
    h, y, W, _ = imbalanced_data(COUNTS, seed=1)
    s, _ = stream(h, y, 6)
    out = minority_collapse(s, W)
    _, means, _ = class_statistics(h, y, 6)
    mask = [False, False, False, True, True, True]
    rw, rm = ref_block_cos(W, mask), ref_block_cos(means - means.mean(0), mask)
    for key in ("minority", "majority", "cross"):
        assert out[f"{key}_cos_W"] == pytest.approx(rw[key], abs=TOL)
        assert out[f"{key}_cos_M"] == pytest.approx(rm[key], abs=TOL)
    assert out["etf_cos"] == pytest.approx(-0.2)
    assert out["minority_classes"] == [3, 4, 5]
    # explicit single-class minority: no minority pair
    one = minority_collapse(s, W, minority=[5])
    assert one["minority_cos_W"] is None and one["cross_cos_W"] == pytest.approx(ref_block_cos(W, [0, 0, 0, 0, 0, 1])["cross"], abs=TOL)


def test_block_cosines_etf_value_and_collapse():
    K = 6
    etf = np.eye(K) - 1.0 / K
    out = block_cosines(etf, np.array([0, 0, 0, 1, 1, 1], dtype=bool))
    for v in out.values():
        assert v == pytest.approx(-1.0 / (K - 1), abs=1e-12)
    # collapsed minority: identical minority rows give cosine 1
    rows = etf.copy()
    rows[3:] = rows[3:].mean(0) + 1e-3
    assert block_cosines(rows, np.array([0, 0, 0, 1, 1, 1], dtype=bool))["minority"] == pytest.approx(1.0, abs=1e-12)


def test_seli_distances_match_reference_and_counts_option():
    h, y, W, _ = imbalanced_data(COUNTS, seed=2)
    s, _ = stream(h, y, 6)
    _, means, _ = class_statistics(h, y, 6)
    ref = ref_seli(W, means - means.mean(0), np.array(COUNTS))
    got = seli_distances(s, W)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=TOL)
    # a balanced "test" split evaluated against the training counts
    ht, yt, _, _ = imbalanced_data([40] * 6, seed=5)
    st, _ = stream(ht, yt, 6)
    _, mt, _ = class_statistics(ht, yt, 6)
    ref_t = ref_seli(W, mt - mt.mean(0), np.array(COUNTS))
    got_t = seli_distances(st, W, counts=COUNTS)
    for key in ref_t:
        assert got_t[key] == pytest.approx(ref_t[key], abs=TOL)


def test_seli_targets_closed_forms():
    counts = np.array([50.0, 20.0, 7.0, 3.0])
    half, half_pinv, P = (t.numpy() for t in seli_targets(counts))
    K = len(counts)
    Pm = np.eye(K) - 1.0 / K
    S = Pm @ np.diag(counts) @ Pm
    assert np.allclose(half @ half, S, atol=1e-12 * counts.max())
    assert np.allclose(half @ half_pinv, Pm, atol=1e-12)
    assert np.allclose(half @ np.ones(K), 0, atol=1e-12) and np.allclose(P, Pm)
    with pytest.raises(StatisticsError):
        seli_targets([3, 0, 2])


def test_seli_equals_etf_errors_when_balanced():
    h, y, W, _ = imbalanced_data([30] * 7, seed=4)
    s, p = stream(h, y, 7)
    etf = collapse_metrics(s, W, projected=p)
    seli = seli_distances(s, W)
    assert seli["seli_distance_W"] == pytest.approx(etf["nc2_etf_error_classifier"], abs=1e-12)
    assert seli["seli_distance_M"] == pytest.approx(etf["nc2_etf_error_means"], abs=1e-12)
    assert seli["seli_distance_logits"] == pytest.approx(etf["nc3_zhu"], abs=1e-12)


@pytest.mark.parametrize("counts", [[500, 120, 40, 9, 3], [60, 60, 60, 5, 5, 5, 5], [1000, 1]])
def test_exact_seli_construction_has_zero_distance(counts):
    """W, H from the SVD of the SEL matrix Ẑ = [e_{y_i} − 1/K] (Thrampoulidis et al. 2022, Def. SELI)."""
    K, rng = len(counts), np.random.default_rng(7)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    Z = np.eye(K)[:, y] - 1.0 / K  # K×N
    V, lam, Ut = np.linalg.svd(Z, full_matrices=False)
    r = K - 1
    V, lam, Ut = V[:, :r], lam[:r], Ut[:r]
    d = K + 3
    R = np.linalg.qr(rng.standard_normal((d, d)))[0][:r]  # r×d, orthonormal rows
    W = V * np.sqrt(lam) @ R  # K×d
    H = (R.T * np.sqrt(lam)) @ Ut  # d×N
    assert np.allclose(W @ H, Z, atol=1e-10)
    features = H.T + 3.0  # a common offset does not change the centered geometry
    s, _ = stream(features, y, K)
    got = seli_distances(s, W)
    for key, value in got.items():
        assert value < 1e-10, (key, value)
    # the ETF errors are not zero when imbalanced, except for K = 2, where PDP ∝ P (SELI = ETF)
    etf = collapse_metrics(s, W)["nc2_etf_error_classifier"]
    assert etf > 1e-3 if K > 2 else etf < 1e-10


def test_per_class_breakdown_matches_reference_train_and_test():
    K = 6
    h, y, W, b = imbalanced_data(COUNTS, seed=8, noise=12.0)
    ht, yt, _, _ = imbalanced_data([40] * K, seed=8, noise=12.0)  # same class means (same seed), new samples
    s, _ = stream(h, y, K)
    train_means = s.means.clone()
    for feats, labels, reference in ((h, y, None), (ht, yt, train_means)):
        st, _ = stream(feats, labels, K)
        logits = LogitStats(K)
        replay = PerClassReplay(st.means, st.counts, reference)
        ft, lt = torch.as_tensor(feats), torch.as_tensor(labels)
        for i in range(0, len(labels), 50):
            logits.update(ft[i : i + 50] @ torch.as_tensor(W).T + torch.as_tensor(b), lt[i : i + 50])
            replay.update(ft[i : i + 50], lt[i : i + 50])
        rows = per_class_breakdown(st, logits.labels, logits.predictions, logits.margins, W, b, replay)
        ref, pred, _ = ref_per_class(feats, labels, K, W, b, train_means.numpy())
        assert len(rows) == K
        for got, want in zip(rows, ref, strict=True):
            assert got["class"] == want["class"] and got["n"] == want["n"] and got["errors"] == want["errors"]
            for key in ("error", "variability", "mean_norm", "classifier_norm", "bias", "margin_median", "ncc_error", "nc1_share"):
                assert got[key] == pytest.approx(want[key], rel=TOL, abs=1e-12), key
            assert got["ci95"] == pytest.approx(want["ci95"], abs=1e-12)
        # per-class errors weighted by n_c reproduce the overall error exactly
        overall = int((pred != labels).sum())
        assert sum(r["errors"] for r in rows) == overall == logits.errors
        assert sum(r["n"] * r["error"] for r in rows) / len(labels) == pytest.approx(overall / len(labels), abs=1e-15)
        assert 0 < overall < len(labels)
        assert 0 < sum(r["ncc_error"] * r["n"] for r in rows) < len(labels)
        # nc1 shares sum to the library's canonical NC1 and to the reference NC1
        _, p = stream(feats, labels, K)
        nc1 = collapse_metrics(st, projected=p)["nc1"]
        assert sum(r["nc1_share"] for r in rows) == pytest.approx(nc1, rel=1e-12)
        assert sum(r["nc1_share"] for r in rows) == pytest.approx(reference_metrics(feats, labels, K)["nc1"], rel=TOL)


def test_per_class_replay_merge_equals_one_shot():
    K = 5
    h, y, _, _ = imbalanced_data([90, 50, 30, 12, 6], seed=11)
    s, _ = stream(h, y, K)
    whole = PerClassReplay(s.means, s.counts).update(torch.as_tensor(h), torch.as_tensor(y))
    parts = [PerClassReplay(s.means, s.counts) for _ in range(3)]
    for i, part in enumerate(parts):
        part.update(torch.as_tensor(h[i::3]), torch.as_tensor(y[i::3]))
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert torch.equal(merged.n, whole.n) and torch.equal(merged.ncc_errors, whole.ncc_errors)
    assert torch.allclose(merged.nc1_terms, whole.nc1_terms, rtol=1e-12, atol=0)
    other = PerClassReplay(s.means + 1.0, s.counts)
    with pytest.raises(StatisticsError):
        whole.merge(other)


def test_per_class_breakdown_partial_inputs_and_absent_class():
    K = 4
    h, y, _, _ = imbalanced_data([30, 20, 0, 10], seed=12)
    s, _ = stream(h, y, K)
    rows = per_class_breakdown(s)
    assert [r["n"] for r in rows] == [30, 20, 0, 10]
    assert rows[2]["variability"] is None and rows[2]["mean_norm"] is None
    assert rows[0]["error"] is None and rows[0]["nc1_share"] is None and rows[0]["classifier_norm"] is None
    means = s.means.numpy()
    present = [0, 1, 3]
    center = means[present].mean(0)
    assert rows[3]["mean_norm"] == pytest.approx(float(np.linalg.norm(means[3] - center)), rel=1e-12)
    with pytest.raises(StatisticsError):
        per_class_breakdown(s, labels=np.zeros(60, dtype=np.int64))  # labels of another split


def test_imbalance_metrics_bundle_and_invariance():
    h, y, W, _ = imbalanced_data(COUNTS, seed=13)
    s, p = stream(h, y, 6)
    out = imbalance_metrics(s, W, p)
    assert set(out) >= {"nc1_weighted", "minority_cos_W", "majority_cos_W", "cross_cos_W", "minority_cos_M",
                        "majority_cos_M", "cross_cos_M", "etf_cos", "seli_distance_W", "seli_distance_M",
                        "seli_distance_logits", "minority_classes"}
    # rotating + translating + scaling the features leaves every feature-side value unchanged
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((h.shape[1], h.shape[1])))[0]
    h2 = 2.5 * h @ Q.T - 7.0
    s2, p2 = stream(h2, y, 6)
    out2 = imbalance_metrics(s2, W @ Q.T, p2)
    for key in ("nc1_weighted", "minority_cos_M", "cross_cos_M", "seli_distance_M", "minority_cos_W", "seli_distance_W"):
        assert out2[key] == pytest.approx(out[key], rel=1e-9, abs=1e-12), key


def test_per_class_replay_through_split_statistics_hook():
    """The pipeline's replay hook feeds PerClassReplay; its totals agree with the split's own counters."""
    from ncbounds.metrics.functional import split_metrics
    from ncbounds.stats.split import SplitStatistics

    K = 6
    h, y, W, b = imbalanced_data(COUNTS, seed=14, noise=10.0)
    ht, yt, _, _ = imbalanced_data([35] * K, seed=14, noise=10.0)
    Wt, bt = torch.as_tensor(W), torch.as_tensor(b)
    splits = {}
    for name, (feats, labels) in {"train": (h, y), "test": (ht, yt)}.items():
        split = SplitStatistics(K, penultimate="features")
        ft, lt = torch.as_tensor(feats), torch.as_tensor(labels)
        for i in range(0, len(labels), 64):
            split.update({"features": ft[i : i + 64]}, lt[i : i + 64], ft[i : i + 64] @ Wt.T + bt)
        reference = None if name == "train" else splits["train"].class_means()
        ref_means = None if reference is None else reference["features"][0]
        split.finish(reference, replay_accumulators={
            "features": {"per_class": lambda cs, ref=ref_means: PerClassReplay(cs.means, cs.counts, ref)}
        })
        splits[name] = split
        rows = per_class_breakdown(split.layers["features"], split.logits.labels, split.logits.predictions,
                                   split.logits.margins, W, b, split.extras["features"]["per_class"])
        metrics = split_metrics(split, "features", Wt)
        assert sum(r["nc1_share"] for r in rows) == pytest.approx(metrics["nc1"], rel=1e-12)
        assert sum(r["ncc_error"] * r["n"] for r in rows) == pytest.approx(split.ncc["features"].errors, abs=1e-9)
        assert sum(r["errors"] for r in rows) == split.logits.errors
