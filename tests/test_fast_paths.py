"""The fast paths of the pass and the replay give the numbers of the plain paths.

Checked against brute-force float64 references written here (numpy, two-pass, exact deviations) and
against the library's own reference paths (Chan-merged ClassStats with scatter matrices, NCC decisions
from centred features, a replay fed one accumulator at a time).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncbounds.bounds.replay.moments import ClassMoments
from ncbounds.bounds.replay.pair_moments import PairMoments
from ncbounds.stats.accumulator import ReplayBatch
from ncbounds.stats.class_stats import ClassStats
from ncbounds.stats.ncc import NCCCounter
from ncbounds.stats.projected import ProjectedStats
from ncbounds.stats.spill import FeatureSpill
from ncbounds.stats.split import SplitStatistics


def _data(n=3000, K=7, d=24, scale=3.0, noise=1.0, offset=0.0, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) * scale + offset
    y = rng.integers(0, K, n)
    x = (means[y] + noise * rng.normal(size=(n, d))).astype(dtype)
    return x, y


def _brute_spread(x, y, K):
    x = x.astype(np.float64)
    out = np.zeros(K)
    for c in range(K):
        xc = x[y == c]
        if len(xc):
            out[c] = ((xc - xc.mean(0)) ** 2).sum()
    return out


def _stream(x, y, K, batch, **kw):
    split = SplitStatistics(K, penultimate="f", **kw)
    for s in range(0, len(y), batch):
        xb = torch.as_tensor(x[s:s + batch])
        split.update({"f": xb}, torch.as_tensor(y[s:s + batch]), logits=xb[:, :K] * 1.0)
    return split


@pytest.mark.parametrize("offset,noise", [(0.0, 1.0), (50.0, 1e-6)])
def test_two_pass_spread_matches_brute_force_and_chan(offset, noise):
    """The replay's spread around the final means equals the two-pass reference, also under strong
    collapse (means of norm ~50·√d, spread 1e-6), and the Chan-merged per-class scatter's trace."""
    x, y = _data(offset=offset, noise=noise, dtype=np.float64)
    K = 7
    split = _stream(x, y, K, 250, expected_rows=len(y))
    split.finish()
    stats = split.layers["f"]
    assert not stats.spread_pending
    ref = _brute_spread(x, y, K)
    np.testing.assert_allclose(stats.sq_dev.numpy(), ref, rtol=1e-9)
    chan = ClassStats(K, x.shape[1], "per-class")
    for s in range(0, len(y), 250):
        chan.update(torch.as_tensor(x[s:s + 250]), torch.as_tensor(y[s:s + 250]))
    np.testing.assert_allclose(stats.sq_dev.numpy(), chan.sq_dev.numpy(), rtol=1e-9)
    np.testing.assert_allclose(stats.means.numpy(), chan.means.numpy(), rtol=1e-12, atol=1e-12)


def test_spread_is_pending_until_the_replay():
    x, y = _data(n=200)
    stats = ClassStats(7, x.shape[1], "none")
    stats.update_means(torch.as_tensor(x), torch.as_tensor(y))
    assert stats.spread_pending and bool(torch.isnan(stats.sq_dev).all())


@pytest.mark.parametrize("kw", [dict(expected_rows=3000), dict(), dict(memory_budget=0), dict(expected_rows=1000)])
def test_replay_storage_modes_agree(kw):
    """Preallocated store, per-batch parts, disk spill and a store that overflows its announced size
    give the same replayed statistics (up to rounding of the chunking)."""
    x, y = _data()
    K = 7
    ref = _stream(x, y, K, 300)
    ref.finish(chunk_rows=300)  # one batch at a time, as appended
    split = _stream(x, y, K, 300, **kw)
    split.finish()
    for key in ("within", "pair_forms", "sq_dev", "class_terms"):
        np.testing.assert_allclose(getattr(split.projected["f"], key).numpy(), getattr(ref.projected["f"], key).numpy(), rtol=1e-10)
    assert split.ncc["f"].errors == ref.ncc["f"].errors and split.ncc["f"].mismatches == ref.ncc["f"].mismatches
    assert torch.equal(split.ncc["f"].class_errors, ref.ncc["f"].class_errors)


def test_spill_store_chunks_and_disk_dtype(tmp_path):
    rng = np.random.default_rng(1)
    parts = [torch.as_tensor(rng.normal(size=(n, 3)).astype(np.float32)) for n in (5, 7, 2, 9)]
    for budget in (1 << 20, 0):
        spill = FeatureSpill(str(tmp_path), memory_budget=budget, capacity=23)
        for p in parts:
            out = spill.reserve("a", tuple(p.shape), torch.float64, torch.device("cpu"))
            assert (out is None) == (budget == 0)  # no store beyond the memory budget
            out = p.double() if out is None else out.copy_(p)
            spill.append("a", out, disk_dtype=torch.float32)
            spill.append("b", p[:, 0].clone())
        for rows in (1, 8, 100):
            got = list(spill.chunks("a", rows))
            labels = list(spill.chunks("b", rows))
            assert [len(g) for g in got] == [len(g) for g in labels]  # names appended together chunk together
            np.testing.assert_array_equal(torch.cat(got).numpy(), torch.cat(parts).double().numpy())
        spill.close()


def test_ncc_from_products_equals_centred_decisions():
    """NCC decisions from deviations + a K×K table equal those from centred features (own and other
    reference means, an absent reference class)."""
    x, y = _data(n=2000, scale=0.5)
    h = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y)
    own = torch.stack([h[yt == c].mean(0) for c in range(7)])
    other = own + 0.3 * torch.randn(own.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    present = torch.ones(7, dtype=torch.bool)
    present[3] = False
    for ref, pres in ((own, None), (other, None), (other, present)):
        plain = NCCCounter(ref.clone(), pres).update(h, yt)
        fast = NCCCounter(ref.clone(), pres).update_batch(ReplayBatch(h, yt, own))
        assert (plain.errors, plain.n) == (fast.errors, fast.n)
        assert torch.equal(plain.class_errors, fast.class_errors)


def test_shared_replay_batch_equals_separate_accumulators():
    """Accumulators fed one shared ReplayBatch equal the same accumulators fed features and labels."""
    x, y = _data(n=1500, dtype=np.float64)
    h, yt = torch.as_tensor(x), torch.as_tensor(y)
    stats = ClassStats(7, x.shape[1], "none").update(h, yt)
    a = (ProjectedStats(stats.means, stats.counts, per_class=True), ClassMoments(stats), PairMoments(stats.means))
    b = (ProjectedStats(stats.means, stats.counts, per_class=True), ClassMoments(stats), PairMoments(stats.means))
    for s in range(0, 1500, 400):
        batch = ReplayBatch(h[s:s + 400], yt[s:s + 400], stats.means)
        for acc in a:
            acc.update_batch(batch)
        for acc in b:
            acc.update(h[s:s + 400], yt[s:s + 400])
    for key in ("within", "pair_forms", "sq_dev", "class_terms"):
        np.testing.assert_allclose(getattr(a[0], key).numpy(), getattr(b[0], key).numpy(), rtol=1e-12)
    np.testing.assert_allclose(a[1].fourth_moment().numpy(), b[1].fourth_moment().numpy(), rtol=1e-12)
    ma, mb = a[2].moments(), b[2].moments()
    for key in ma:
        np.testing.assert_allclose(ma[key], mb[key], rtol=1e-12)
    # brute force: per-class scatter and fourth moment
    for c in range(7):
        e = x[y == c] - x[y == c].mean(0)
        np.testing.assert_allclose(ma["trace_sq"][c], np.linalg.norm(e.T @ e / len(e)) ** 2, rtol=1e-9)
        np.testing.assert_allclose(ma["fourth"][c], np.mean(((e ** 2).sum(1)) ** 2), rtol=1e-9)


def test_pair_moments_memo_is_fresh_per_state():
    """moments() is computed once per state: repeated calls agree, callers get their own copies, and
    an update or merge recomputes them."""
    x, y = _data(n=600, dtype=np.float64)
    h, yt = torch.as_tensor(x), torch.as_tensor(y)
    stats = ClassStats(7, x.shape[1], "none").update(h, yt)
    pm = PairMoments(stats.means)
    pm.update(h[:300], yt[:300])
    first = pm.moments()
    first["trace"][:] = -1.0  # a caller editing its copy does not change the memo
    second = pm.moments()
    assert (second["trace"] > 0).all()
    pm.update(h[300:], yt[300:])
    fresh = PairMoments(stats.means).update(h, yt).moments()
    np.testing.assert_allclose(pm.moments()["trace"], fresh["trace"], rtol=1e-12)
    assert not np.allclose(pm.moments()["trace"], second["trace"])


def test_class_medians_are_numpy_percentiles_bit_for_bit():
    from ncbounds.metrics.imbalance import _class_medians

    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 10, 999, 1000):
        y = rng.integers(0, 5, n)
        v = rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e5])
        v[rng.random(n) < 0.1] = 0.5  # ties
        counts = np.bincount(y, minlength=5)
        ref = np.array([np.percentile(v[y == c], 50) if counts[c] else np.nan for c in range(5)])
        np.testing.assert_array_equal(_class_medians(v, y, counts), ref)


def test_ramp_losses_equal_the_direct_formula():
    from ncbounds.bounds.margin_tools import ramp_losses

    rng = np.random.default_rng(4)
    margins = np.concatenate([rng.normal(1.0, 2.0, 3000), [0.0, 0.0, 2.5]])
    gammas = np.concatenate([np.geomspace(1e-9, 100.0, 120), [2.5]])
    direct = np.array([np.mean(np.clip(1.0 - margins / g, 0.0, 1.0)) for g in gammas])
    np.testing.assert_allclose(ramp_losses(margins, gammas), direct, rtol=0, atol=1e-14)


def test_kl_inverse_search_keeps_published_values_and_brackets():
    from ncbounds.stats.binomial import kl_bernoulli, kl_inverse_lower, kl_inverse_upper

    for (q, c), ref in {(0.0, 0.01): 0.009950166251, (0.01, 0.01): 0.031125881450, (0.05, 0.1): 0.206401407806,
                        (0.2, 0.5): 0.685261925018}.items():
        p = kl_inverse_upper(q, c)
        assert p == pytest.approx(ref, abs=1e-12) and kl_bernoulli(q, p) > c
    rng = np.random.default_rng(5)
    q, c = rng.random(200), rng.random(200)
    hi, lo = kl_inverse_upper(q, c), kl_inverse_lower(q, c)
    up = hi < 1
    assert np.all(kl_bernoulli(q[up], hi[up]) > c[up])  # outside the feasible set: a true upper end
    down = lo > 0
    assert np.all(kl_bernoulli(q[down], lo[down]) > c[down])


def test_decision_axes_shared_scores_equal_per_rule_values():
    """The replay's one product per centre gives each rule's t values as AffineRule.values computes them."""
    from ncbounds.bounds.replay.decision_axes import AffineRule, DecisionAxisStats

    x, y = _data(n=900, dtype=np.float64)
    h, yt = torch.as_tensor(x), torch.as_tensor(y)
    means = torch.stack([h[yt == c].mean(0) for c in range(7)])
    center = means.mean(0)
    W = torch.randn(7, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    rules = {"head": AffineRule(W, torch.zeros(7, dtype=torch.float64), center=center),
             "ncc": AffineRule.nearest_center(means, center=center)}
    fast = DecisionAxisStats(rules).update_batch(ReplayBatch(h, yt, means))
    for name, rule in rules.items():
        t = rule.values(h, yt).numpy()
        for i in range(7):
            ti = t[y == i]
            np.testing.assert_allclose(fast.pair_mean[name][i].numpy(), ti.mean(0), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(fast.pair_m2[name][i].numpy(), ((ti - ti.mean(0)) ** 2).sum(0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "both"])
def test_non_finite_features_are_caught_from_the_class_sums(bad):
    from ncbounds.errors import StatisticsError

    x, y = _data(n=300)
    x = x.copy()
    if bad == "both":  # +Inf and −Inf in the same class and column: the sum is NaN
        c = y[0]
        rows = np.flatnonzero(y == c)[:2]
        x[rows[0], 3], x[rows[1], 3] = np.inf, -np.inf
    else:
        x[17, 5] = bad
    for K in (7, 80):  # few and many classes (one-hot counts and scattered counts)
        stats = ClassStats(K, x.shape[1], "none", name="layer3")
        with pytest.raises(StatisticsError, match="layer3"):
            stats.update_means(torch.as_tensor(x), torch.as_tensor(y))


def test_huge_finite_features_are_not_refused():
    x, y = _data(n=300, dtype=np.float64)
    x = x * 1e306  # finite, but the class sums overflow: the exact test decides
    sums = np.zeros((7, x.shape[1]))
    with np.errstate(over="ignore", invalid="ignore"):
        np.add.at(sums, y, x)
    assert not np.isfinite(sums).all()  # the premise: the fast test alone would refuse this batch
    stats = ClassStats(7, x.shape[1], "none")
    stats.update_means(torch.as_tensor(x), torch.as_tensor(y))
    assert int(stats.counts.sum()) == 300


def test_replay_in_place_deviations_equal_the_copy_and_forbid_reading_features():
    x, y = _data(n=500, dtype=np.float64)
    h, yt = torch.as_tensor(x), torch.as_tensor(y)
    means = torch.stack([h[yt == c].mean(0) for c in range(7)])
    plain = ReplayBatch(h, yt, means)
    rows = h.clone()
    fast = ReplayBatch(rows, yt, means, overwrite=True)
    assert torch.equal(plain.dev, fast.dev) and fast.dev.data_ptr() == rows.data_ptr()
    assert torch.equal(h, torch.as_tensor(x))  # the non-overwriting batch left its features alone
    with pytest.raises(RuntimeError):
        _ = fast.h


def test_pass_under_inference_mode_then_replay_outside():
    """The pipeline streams under torch.inference_mode and replays after it: the preallocated store
    must stay writable (its rows become the deviations in place)."""
    x, y = _data()
    ref = _stream(x, y, 7, 300)
    ref.finish()
    with torch.inference_mode():
        split = _stream(x, y, 7, 300, expected_rows=len(y))
    split.finish()
    np.testing.assert_allclose(split.projected["f"].within.numpy(), ref.projected["f"].within.numpy(), rtol=1e-10)
    np.testing.assert_allclose(split.layers["f"].sq_dev.numpy(), ref.layers["f"].sq_dev.numpy(), rtol=1e-10)


def test_clopper_pearson_equals_scipy_beta_quantiles():
    from scipy import stats as st

    from ncbounds.stats.binomial import clopper_pearson

    rng = np.random.default_rng(7)
    n = rng.integers(1, 50000, 500)
    k = np.floor(rng.random(500) * (n + 1)).astype(int).clip(max=n)
    lo, hi = clopper_pearson(k, n, alpha=0.05)
    ref_lo = np.where(k > 0, st.beta.ppf(0.025, np.maximum(k, 1), n - k + 1), 0.0)
    ref_hi = np.where(k < n, st.beta.ppf(0.975, k + 1, np.maximum(n - k, 1)), 1.0)
    np.testing.assert_allclose(lo, ref_lo, rtol=1e-13, atol=0)
    np.testing.assert_allclose(hi, ref_hi, rtol=1e-13, atol=0)


def test_pair_moments_block_accumulation_is_the_full_scatter():
    """From d = 128 on the per-class scatter is accumulated by symmetric blocks; reads (moments, state,
    merge, a further update after a merge) see the full matrix Σ e eᵀ of a brute-force reference."""
    x, y = _data(n=700, d=160, dtype=np.float64)
    h, yt = torch.as_tensor(x), torch.as_tensor(y)
    means = torch.stack([h[yt == c].mean(0) for c in range(7)])
    a = PairMoments(means).update(h[:300], yt[:300])
    b = PairMoments(means).update(h[300:500], yt[300:500])
    a.merge(b)
    a.update(h[500:], yt[500:])
    state = a.state()
    for c in range(7):
        e = x[y == c] - means[c].numpy()
        np.testing.assert_allclose(state["scatter"][c], e.T @ e, rtol=1e-10, atol=1e-9)
    m = a.moments()
    for c in range(7):
        e = x[y == c] - means[c].numpy()
        cov = e.T @ e / len(e)
        np.testing.assert_allclose(m["trace_sq"][c], (cov * cov).sum(), rtol=1e-10)
    np.testing.assert_allclose(PairMoments.from_state(state).moments()["cross"], m["cross"], rtol=1e-12)


def test_statistics_do_not_depend_on_the_thread_count():
    """Sums over samples are taken in fixed row blocks, so one thread and two threads give the same bits
    (``batch --jobs 2`` workers run with fewer threads than a single process)."""
    x, y = _data(n=6000, d=160)
    results = []
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            split = _stream(x, y, 7, 1000, expected_rows=len(y))
            split.finish(replay_accumulators={"f": {"pm": lambda s: PairMoments(s.means)}})
            results.append((split.layers["f"].means.clone(), split.layers["f"].sq_dev.clone(), split.projected["f"].within.clone(),
                            split.extras["f"]["pm"].state()["scatter"].copy()))
    finally:
        torch.set_num_threads(saved)
    (m1, s1, w1, p1), (m2, s2, w2, p2) = results
    assert torch.equal(m1, m2) and torch.equal(s1, s2) and torch.equal(w1, w2)
    np.testing.assert_array_equal(p1, p2)
