"""The span-restricted replay (ProjectedStats) against full scatter matrices, and its merging."""

import numpy as np
import pytest
import torch

from ncbounds.metrics.collapse import collapse_metrics
from ncbounds.metrics.functional import metrics_from_features
from ncbounds.stats import ClassStats, ProjectedStats

SECOND_ORDER = ("nc1", "separation_fuzziness", "directional_cdnv")


def _data(K, d, n, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    h = rng.normal(size=(K, d))[y] * 2 + rng.normal(size=(n, d)) * rng.uniform(0.2, 2, size=d) + offset
    return h, y


@pytest.mark.parametrize("K,d", [(2, 3), (5, 12), (12, 6), (20, 40)])
def test_replay_equals_scatter_matrices(K, d):
    h, y = _data(K, d, 400, K * d)
    replay = metrics_from_features(h, y, K, batch_size=33)
    for mode in ("per-class", "pooled"):
        full = metrics_from_features(h, y, K, batch_size=33, scatter_mode=mode)
        for key in SECOND_ORDER:
            if mode == "pooled" and key == "directional_cdnv":
                assert full[key] is None  # pooled scatter cannot give per-class directions
                continue
            assert replay[key] == pytest.approx(full[key], rel=1e-10), (mode, key)


def test_projected_shards_merge_by_addition():
    h, y = _data(6, 10, 300, 1, offset=30.0)
    stats = ClassStats(6, 10, "none").update(h, y)
    whole = ProjectedStats(stats.means, stats.counts).update(torch.as_tensor(h), torch.as_tensor(y))
    parts = [ProjectedStats(stats.means, stats.counts) for _ in range(3)]
    for part, idx in zip(parts, np.array_split(np.arange(300), 3), strict=True):
        part.update(torch.as_tensor(h[idx]), torch.as_tensor(y[idx]))
    merged = parts[0].merge(parts[1]).merge(parts[2])
    torch.testing.assert_close(merged.within, whole.within, rtol=1e-12, atol=0)
    torch.testing.assert_close(merged.pair_forms, whole.pair_forms, rtol=1e-12, atol=0)
    a = collapse_metrics(stats, projected=merged)
    b = collapse_metrics(ClassStats(6, 10).update(h, y))
    for key in SECOND_ORDER:
        assert a[key] == pytest.approx(b[key], rel=1e-10)


def test_no_second_order_statistics_gives_none_not_nan():
    h, y = _data(4, 5, 100, 2)
    out = collapse_metrics(ClassStats(4, 5, "none").update(h, y))
    assert out["nc1"] is None and out["directional_cdnv"] is None
    assert out["cdnv"] is not None and np.isfinite(out["cdnv"])
