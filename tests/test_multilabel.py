"""Multi-label statistics and metrics (Li et al. 2024) against store-everything references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats as sps

from ncbounds.errors import DataError, StatisticsError, UsageError
from ncbounds.metrics.multilabel import (
    hamming_error,
    ml_pair_angle,
    multilabel_errors,
    multilabel_metrics,
    nc1_single,
    pair_angles,
    per_label_errors,
    single_label_metrics,
    subset_error,
)
from ncbounds.stats.multilabel import (
    MultiLabelDecisions,
    MultiLabelStats,
    multilabel_decisions,
    single_label_rows,
)
from ncbounds.stats.projected import ProjectedStats
from tests.reference_collapse import pinv_psd, reference_metrics, simplex_etf_means

TOL = 1e-9


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def multilabel_data(K=5, d=9, n_single=30, pairs=((0, 1), (1, 3), (2, 4), (0, 4)), n_pair=20, sigma=0.3,
                    scale=0.6, offset=4.0, extra=True, seed=0, single_counts=None):
    """Single-label samples around ETF vertices μ_k (norm 2), pair samples around scale·(μ_a + μ_b).

    With ``extra``, a few samples of multiplicity 0 and 3 are mixed in (they enter no geometry).
    Every feature gets the common ``offset`` vector. Returns h (N, d), multi-hot T (N, K), μ (K, d).
    """
    rng = np.random.default_rng(seed)
    M = simplex_etf_means(K, d, r=2.0, rng=rng)
    off = offset * rng.standard_normal(d) / np.sqrt(d)
    hs, ts = [], []
    for k in range(K):
        n = n_single if single_counts is None else single_counts[k]
        hs.append(M[k] + sigma * rng.standard_normal((n, d)))
        t = np.zeros((n, K), dtype=np.int64)
        t[:, k] = 1
        ts.append(t)
    for a, b in pairs:
        hs.append(scale * (M[a] + M[b]) + sigma * rng.standard_normal((n_pair, d)))
        t = np.zeros((n_pair, K), dtype=np.int64)
        t[:, [a, b]] = 1
        ts.append(t)
    if extra:
        hs.append(sigma * rng.standard_normal((7, d)))
        ts.append(np.zeros((7, K), dtype=np.int64))
        hs.append(M[0] + M[1] + M[2] + sigma * rng.standard_normal((5, d)))
        t = np.zeros((5, K), dtype=np.int64)
        t[:, :3] = 1
        ts.append(t)
    h, T = np.concatenate(hs) + off, np.concatenate(ts)
    perm = rng.permutation(len(h))
    return h[perm], T[perm], M


def stream_ml(h, T, batch=23, scatter_mode="pooled"):
    s = MultiLabelStats(T.shape[1], h.shape[1], scatter_mode)
    for i in range(0, len(h), batch):
        s.update(torch.as_tensor(h[i : i + batch]), torch.as_tensor(T[i : i + batch]))
    return s


# ------------------------------------------------------------------------------------------------
# references (store everything, loops; Li et al. 2024 and their code's conventions)
# ------------------------------------------------------------------------------------------------


def ref_single(h, T):
    m = T.sum(1)
    sel = m == 1
    return h[sel], T[sel].argmax(1)


def ref_nc1_single(h, T, code=False):
    h1, y1 = ref_single(h, T)
    K = T.shape[1]
    means = np.stack([h1[y1 == k].mean(0) for k in range(K)])
    mu_G = h1.sum(0) / len(h) if code else means.mean(0)
    R = h1 - means[y1]
    Sw = R.T @ R / len(h1)
    Sb = sum(np.outer(means[k] - mu_G, means[k] - mu_G) for k in range(K)) / K
    return float(np.trace(Sw @ pinv_psd(Sb)) / K)


def ref_ml_pair_angle(h, T, centered=True):
    """Numerator: per observed pair, angle(mean of its samples, μ_a + μ_b); denominator: i<j × pairs."""
    h1, y1 = ref_single(h, T)
    K = T.shape[1]
    means = np.stack([h1[y1 == k].mean(0) for k in range(K)])
    shift = means.mean(0) if centered else np.zeros(h.shape[1])
    singles = means - shift
    m = T.sum(1)
    pair_means = {}
    for i in np.flatnonzero(m == 2):
        pair_means.setdefault(tuple(np.flatnonzero(T[i])), []).append(h[i])
    pair_means = {k: np.mean(v, 0) - shift for k, v in sorted(pair_means.items())}

    def angle(u, v):
        return np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))

    num = [angle(pm, singles[a] + singles[b]) for (a, b), pm in pair_means.items()]
    den = [angle(singles[i] + singles[j], pm) for i, j in itertools.combinations(range(K), 2) for pm in pair_means.values()]
    return float(np.mean(num) / np.mean(den)), num


def ref_decisions(z, T, rule):
    if rule == "sigmoid":
        return (1.0 / (1.0 + np.exp(-z))) > 0.5
    out = np.zeros_like(T, dtype=bool)
    for i in range(len(z)):
        order = sorted(range(z.shape[1]), key=lambda k: (-z[i, k], k))
        out[i, order[: int(T[i].sum())]] = True
    return out


def ref_cp(k, n):
    lo = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
    return [lo, hi]


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------


def test_accumulator_counts_means_and_pairs():
    h, T, _ = multilabel_data()
    s = stream_ml(h, T)
    m = T.sum(1)
    assert s.multiplicity_counts.tolist() == [int((m == 0).sum()), int((m == 1).sum()), int((m == 2).sum()), int((m >= 3).sum())]
    assert s.label_counts.tolist() == T.sum(0).tolist()
    assert s.total == len(h)
    pairs, counts, means = s.pair_table()
    assert [tuple(p) for p in pairs] == [(0, 1), (0, 4), (1, 3), (2, 4)]
    for (a, b), n, mean in zip(pairs, counts, means, strict=True):
        rows = h[(m == 2) & (T[:, a] == 1) & (T[:, b] == 1)]
        assert int(n) == len(rows)
        assert np.allclose(mean.numpy(), rows.mean(0), rtol=0, atol=1e-12)
        k = s.pair_keys.index((a, b))
        assert float(s.pair_sq_dev[k]) == pytest.approx(((rows - rows.mean(0)) ** 2).sum(), rel=1e-12)
    h1, y1 = ref_single(h, T)
    assert np.allclose(s.single.means.numpy(), np.stack([h1[y1 == k].mean(0) for k in range(5)]), atol=1e-12)


def test_streaming_merge_and_state_equal_one_shot():
    h, T, _ = multilabel_data(seed=1)
    one = stream_ml(h, T, batch=len(h))
    parts = [stream_ml(h[i::3], T[i::3], batch=11) for i in range(3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for a, b in ((one, merged), (one, MultiLabelStats.from_state(merged.state()))):
        assert a.multiplicity_counts.tolist() == b.multiplicity_counts.tolist()
        assert a.label_counts.tolist() == b.label_counts.tolist()
        pa, ca, ma = a.pair_table()
        pb, cb, mb = b.pair_table()
        assert np.array_equal(pa, pb) and torch.equal(ca, cb)
        assert torch.allclose(ma, mb, rtol=0, atol=1e-12)
        assert torch.allclose(a.single.scatter, b.single.scatter, rtol=1e-12, atol=1e-12)
        assert nc1_single(a) == pytest.approx(nc1_single(b), rel=1e-12)
        assert ml_pair_angle(a) == pytest.approx(ml_pair_angle(b), rel=1e-12)


def test_nc1_single_matches_reference_both_conventions_and_routes():
    h, T, _ = multilabel_data(seed=2, sigma=0.5)
    s = stream_ml(h, T)
    assert nc1_single(s) == pytest.approx(ref_nc1_single(h, T), rel=TOL)
    assert nc1_single(s, convention="li2024-code") == pytest.approx(ref_nc1_single(h, T, code=True), rel=TOL)
    assert abs(nc1_single(s, convention="li2024-code") - nc1_single(s)) > 1e-6
    # the span-restricted replay fed with the multiplicity-1 rows only gives the same canonical value
    s0 = stream_ml(h, T, scatter_mode="none")
    mask, labels = single_label_rows(torch.as_tensor(T))
    p = ProjectedStats(s0.single.means, s0.single.counts).update(torch.as_tensor(h)[mask], labels)
    assert nc1_single(s0, projected=p) == pytest.approx(ref_nc1_single(h, T), rel=TOL)
    assert nc1_single(s0, convention="li2024-code") is None  # needs the pooled scatter
    with pytest.raises(UsageError):
        nc1_single(s, convention="nope")


def test_single_label_nc2_nc3_match_reference():
    h, T, _ = multilabel_data(seed=3, sigma=0.4)
    rng = np.random.default_rng(3)
    W = rng.standard_normal((5, 9))
    s = stream_ml(h, T)
    got = single_label_metrics(s, W)
    h1, y1 = ref_single(h, T)
    ref = reference_metrics(h1, y1, 5, W=W)
    assert got["nc1_single"] == pytest.approx(ref["nc1"], rel=TOL)
    for key in ("nc2_etf_error_means", "nc2_etf_error_classifier", "nc3_zhu", "nc3_papyan", "nc2_equinorm_means", "cdnv"):
        assert got[key] == pytest.approx(ref[key], rel=TOL), key
    # the reference code's conventions: uncentered NC2 of the means; NC3 around μ_G' = Σ_{m=1} h / N
    code = single_label_metrics(s, W, convention="li2024-code")
    means = np.stack([h1[y1 == k].mean(0) for k in range(5)])
    K = 5
    etf = (np.eye(K) - 1.0 / K) / np.sqrt(K - 1)
    G = means @ means.T
    assert code["nc2_etf_error_means"] == pytest.approx(np.linalg.norm(G / np.linalg.norm(G) - etf), rel=TOL)
    H = W @ (means - h1.sum(0) / len(h)).T
    assert code["nc3_zhu"] == pytest.approx(np.linalg.norm(H / np.linalg.norm(H) - etf), rel=TOL)


def test_ml_pair_angle_matches_reference():
    h, T, _ = multilabel_data(seed=4, sigma=0.8, scale=0.45)
    s = stream_ml(h, T)
    for centered in (True, False):
        ref, num = ref_ml_pair_angle(h, T, centered)
        assert ml_pair_angle(s, centered=centered) == pytest.approx(ref, rel=TOL)
        got = pair_angles(s, centered=centered)
        assert [g["angle_deg"] for g in got] == pytest.approx(num, rel=TOL)
    assert multilabel_metrics(s)["ml_pair_angle"] == pytest.approx(ref_ml_pair_angle(h, T, True)[0], rel=TOL)
    assert multilabel_metrics(s, convention="li2024-code")["ml_pair_angle"] == pytest.approx(ref_ml_pair_angle(h, T, False)[0], rel=TOL)


def test_ml_pair_angle_zero_under_collapse_and_rising_with_noise():
    K, d = 6, 10
    rng = np.random.default_rng(5)
    M = simplex_etf_means(K, d, r=3.0, rng=rng)
    offset = rng.standard_normal(d)
    pairs = [(0, 1), (2, 5), (3, 4), (1, 4), (0, 5)]
    base_h, base_T, noise = [], [], []
    for k in range(K):  # exact single-label means: symmetric ± noise around the vertex
        e = rng.standard_normal((4, d))
        base_h += [M[k] + e, M[k] - e]
        t = np.zeros((8, K), dtype=np.int64)
        t[:, k] = 1
        base_T.append(t)
        noise.append(np.zeros((8, d)))
    for a, b in pairs:  # multi-label features as (scaled) sums of the single-label means
        base_h.append(np.tile(0.8 * (M[a] + M[b]), (6, 1)))
        t = np.zeros((6, K), dtype=np.int64)
        t[:, [a, b]] = 1
        base_T.append(t)
        noise.append(rng.standard_normal((6, d)))
    h0, T = np.concatenate(base_h) + offset, np.concatenate(base_T)
    E = np.concatenate(noise)
    collapsed = stream_ml(h0, T)
    assert abs(ml_pair_angle(collapsed)) < 1e-12
    assert all(abs(p["angle_deg"]) < 1e-10 for p in pair_angles(collapsed))
    # the raw-means convention is not translation invariant: the offset makes it nonzero
    assert ml_pair_angle(collapsed, centered=False) > 1e-3
    assert abs(ml_pair_angle(stream_ml(h0 - offset, T), centered=False)) < 1e-12
    values = [ml_pair_angle(stream_ml(h0 + sigma * E, T)) for sigma in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)]
    assert values[0] < 1e-12
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values


def test_ml_pair_angle_undefined_cases():
    h, T, _ = multilabel_data(pairs=(), extra=False)
    assert ml_pair_angle(stream_ml(h, T)) is None  # no multiplicity-2 samples
    h, T, _ = multilabel_data(K=2, d=4, pairs=((0, 1),), extra=False)
    assert ml_pair_angle(stream_ml(h, T)) is None  # K = 2: the centred sum μ̃_0 + μ̃_1 is 0


def test_decisions_and_errors_match_reference():
    rng = np.random.default_rng(6)
    N, K = 300, 7
    T = (rng.random((N, K)) < 0.25).astype(np.int64)
    z = 1.5 * (2 * T - 1) + 1.2 * rng.standard_normal((N, K))
    z[:5, :] = 0.0  # ties and logits exactly at the sigmoid threshold
    for rule in ("sigmoid", "top-m"):
        ref = ref_decisions(z, T, rule)
        assert np.array_equal(multilabel_decisions(torch.as_tensor(z), torch.as_tensor(T), rule).numpy(), ref)
        acc = MultiLabelDecisions(K, rule)
        parts = [MultiLabelDecisions(K, rule) for _ in range(2)]
        for i in range(0, N, 40):
            acc.update(torch.as_tensor(z[i : i + 40]), torch.as_tensor(T[i : i + 40]))
            parts[(i // 40) % 2].update(torch.as_tensor(z[i : i + 40]), torch.as_tensor(T[i : i + 40]))
        merged = parts[0].merge(parts[1])
        wrong = ref != T.astype(bool)
        assert hamming_error(acc) == pytest.approx(wrong.mean(), abs=1e-15)
        assert subset_error(acc) == pytest.approx(wrong.any(1).mean(), abs=1e-15)
        assert hamming_error(merged) == hamming_error(acc) and subset_error(merged) == subset_error(acc)
        rows = per_label_errors(acc)
        for k, row in enumerate(rows):
            e = int(wrong[:, k].sum())
            assert row["errors"] == e and row["error"] == pytest.approx(e / N, abs=1e-15)
            assert row["false_positives"] == int((ref[:, k] & (T[:, k] == 0)).sum())
            assert row["false_negatives"] == int((~ref[:, k] & (T[:, k] == 1)).sum())
            assert row["positives"] == int(T[:, k].sum())
            assert row["ci95"] == pytest.approx(ref_cp(e, N), abs=1e-12)
        full = multilabel_errors(acc)
        assert full["decision_rule"] == rule
        assert full["subset_ci95"] == pytest.approx(ref_cp(int(wrong.any(1).sum()), N), abs=1e-12)
        assert 0 < full["hamming_error"] < full["subset_error"] < 1
    # top-m predicts exactly m labels per sample
    pred = multilabel_decisions(torch.as_tensor(z), torch.as_tensor(T), "top-m").numpy()
    assert np.array_equal(pred.sum(1), T.sum(1))


def test_bad_targets_and_merges_raise():
    s = MultiLabelStats(3, 2)
    with pytest.raises(DataError):
        s.update(torch.zeros(2, 2), torch.tensor([[0, 2, 0], [1, 0, 0]]))
    with pytest.raises(DataError):
        s.update(torch.zeros(2, 2), torch.tensor([[0.0, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(DataError):
        s.update(torch.zeros(2, 2), torch.tensor([1, 0]))
    with pytest.raises(StatisticsError):
        s.merge(MultiLabelStats(4, 2))
    with pytest.raises(StatisticsError):
        MultiLabelDecisions(3, "sigmoid").merge(MultiLabelDecisions(3, "top-m"))
    with pytest.raises(ValueError):
        MultiLabelDecisions(3, "argmax")


def test_nonfinite_features_raise():
    s = MultiLabelStats(3, 2)
    with pytest.raises(StatisticsError):
        s.update(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
