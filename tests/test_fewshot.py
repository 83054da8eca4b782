"""Few-shot episodes, target NCC error and the linear probe against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ncbounds.errors import DataError, UsageError
from ncbounds.transfer.fewshot import (
    _episode_errors,
    _sample_indices,
    fewshot_episodes,
    fewshot_table,
    linear_probe_error,
    ncc_error,
)

# gaussian-etf geometry: K simplex-ETF means of norm r in d = K dimensions, isotropic noise σ²I
K, D, SIGMA, R = 8, 8, 1.0, 2.0
_M = np.eye(K) - 1.0 / K
MEANS = _M / np.linalg.norm(_M, axis=1, keepdims=True) * R
WAYS, SHOTS, QUERIES = 5, 5, 15


def _pool(n_per_class, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    return MEANS[y] + SIGMA * rng.normal(size=(K * n_per_class, D)), y


def _nearest_errors(protos, queries):
    """protos (e, W, d), queries (e, W, Q, d) → per-episode error, by explicit squared distances."""
    dist = np.stack([((queries - protos[:, None, None, w, :]) ** 2).sum(-1) for w in range(protos.shape[1])], -1)
    return (dist.argmin(-1) != np.arange(protos.shape[1])[None, :, None]).mean(axis=(1, 2))  # dist: (e, W, Q, W)


def reference_pool_mc(x, y, episodes, seed, chunk=10_000):
    """Episodes drawn from the fixed pool (x, y): classes by random keys, per class a random permutation."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in range(K)]
    total = 0.0
    for a in range(0, episodes, chunk):
        e = min(chunk, episodes - a)
        cls = np.argsort(rng.random((e, K)), axis=1)[:, :WAYS]
        members = np.stack(by_class, 0)[cls]  # (e, W, n): equal class sizes
        sel = np.argsort(rng.random(members.shape), axis=2)[:, :, :SHOTS + QUERIES]  # a random permutation's head
        picked = np.take_along_axis(members, sel, axis=2)
        protos = x[picked[:, :, :SHOTS]].mean(axis=2)
        total += _nearest_errors(protos, x[picked[:, :, SHOTS:]]).sum()
    return total / episodes


def reference_population_mc(episodes, seed, chunk=20_000):
    """Fresh Gaussian samples every episode: prototype = μ_c + σ·N(0, I/m) exactly (mean of m shots)."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for a in range(0, episodes, chunk):
        e = min(chunk, episodes - a)
        mu = MEANS[np.argsort(rng.random((e, K)), axis=1)[:, :WAYS]]
        protos = mu + SIGMA * rng.normal(size=(e, WAYS, D)) / math.sqrt(SHOTS)
        queries = mu[:, :, None, :] + SIGMA * rng.normal(size=(e, WAYS, QUERIES, D))
        total += _nearest_errors(protos, queries).sum()
    return total / episodes


@pytest.fixture(scope="module")
def pool_and_mc():
    x, y = _pool(60, seed=2024)
    return x, y, reference_pool_mc(x, y, 200_000, seed=99)


@pytest.mark.slow  # ~12 s: a 200,000-episode reference Monte Carlo
def test_ci95_covers_the_monte_carlo_error_and_the_certificate_is_above_it(pool_and_mc):
    """50 episode seeds on one gaussian-etf target set (60 per class): the t-interval targets the expected
    episodic error of episodes drawn from these features, estimated by a separately written 200,000-episode
    sampler. Nominal coverage 95% (measured 95.25% over seeds 0–399); ≥ 45 of 50 required."""
    x, y, mc = pool_and_mc
    covered = 0
    for seed in range(50):
        res = fewshot_episodes(x, y, WAYS, SHOTS, queries=QUERIES, episodes=600, seed=seed)
        lo, hi = res["ci95"]
        covered += lo <= mc <= hi
        assert res["certificate"] >= mc, seed
    assert covered >= 45, covered


@pytest.mark.slow  # ~15 s: a 200,000-episode population Monte Carlo
def test_certificate_is_above_the_population_error_on_fresh_target_sets():
    """The certificate also stays above the population m-shot error (fresh Gaussian samples every episode)
    on 50 freshly drawn target sets, although it only certifies the mean over episodes from the given set."""
    mc = reference_population_mc(200_000, seed=7)
    for seed in range(50):
        x, y = _pool(300, seed=5000 + seed)
        res = fewshot_episodes(x, y, WAYS, SHOTS, queries=QUERIES, episodes=600, seed=seed)
        assert res["certificate"] >= mc, seed
        assert abs(res["error"] - mc) < 0.05


def test_summary_formulas():
    x, y = _pool(40, seed=3)
    res = fewshot_episodes(x, y, "all", 1, queries=10, episodes=200, seed=1, return_errors=True)
    e = res["episode_errors"]
    assert res["ways"] == K and len(e) == 200
    lo, hi = stats.t.interval(0.95, len(e) - 1, loc=e.mean(), scale=stats.sem(e))
    assert res["error"] == pytest.approx(e.mean(), abs=1e-15)
    assert res["ci95"][0] == pytest.approx(lo, rel=1e-12) and res["ci95"][1] == pytest.approx(hi, rel=1e-12)
    # certificate: the upper root of kl(ē‖p) = ln(1/δ)/E
    q, p = res["error"], res["certificate"]
    kl = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    assert p > q and kl == pytest.approx(math.log(1 / 0.05) / 200, rel=1e-9)


def test_episode_errors_match_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6))
    idx = rng.integers(0, 90, size=(7, 4, 3 + 5))
    got = _episode_errors(x, idx, 3, chunk_bytes=2000)  # several chunks
    protos = x[idx[:, :, :3]].mean(2)
    want = _nearest_errors(protos, x[idx[:, :, 3:]])
    np.testing.assert_array_equal(got, want)


def test_ties_go_to_the_first_prototype():
    x = np.ones((60, 3))
    y = np.repeat(np.arange(4), 15)
    res = fewshot_episodes(x, y, 4, 2, queries=5, episodes=10)
    assert res["error"] == pytest.approx(3 / 4)


def test_sampling_is_uniform_and_without_replacement():
    rng = np.random.default_rng(1)
    counts = np.array([30, 900, 25, 60])
    y = np.repeat(np.arange(4), counts)
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chosen, idx = _sample_indices(rng, order, starts, counts, 4000, 2, 25)
    assert np.all(y[idx] == chosen[:, :, None])
    srt = np.sort(idx, axis=2)
    assert not np.any(srt[:, :, 1:] == srt[:, :, :-1])
    freq = np.bincount(chosen.ravel(), minlength=4) / chosen.size
    assert np.all(np.abs(freq - 0.25) < 0.02)
    # class 1 (rejection sampler) and class 3 (key sampler): every member about equally often
    for c in (1, 3):
        sub = idx[chosen == c]
        hits = np.bincount(sub.ravel() - starts[c], minlength=counts[c])
        expected = sub.size / counts[c]
        assert stats.chisquare(hits, np.full(counts[c], expected)).pvalue > 1e-4


def test_bad_settings():
    x, y = _pool(20, seed=0)
    with pytest.raises(DataError, match="samples per class"):
        fewshot_episodes(x, y, 5, 10, queries=15)
    with pytest.raises(DataError, match="classes"):
        fewshot_episodes(x, y, 9, 1, queries=5)
    with pytest.raises(UsageError):
        fewshot_episodes(x, y, "some", 1, queries=5)
    table = fewshot_table(x, y, ways=("all", 5, 12), shots=(1, 10), queries=15, episodes=20)
    assert [(r["ways"], r["shots"]) for r in table] == [(8, 1), (8, 10), (5, 1), (5, 10), (12, 1), (12, 10)]
    assert table[0]["error"] is not None and table[1]["error"] is None and "samples per class" in table[1]["note"]
    assert table[4]["error"] is None and "classes" in table[4]["note"]


# ---------------------------------------------------------------------------------------------------
# NCC error and linear probe
# ---------------------------------------------------------------------------------------------------
def _split(seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(5, 7)) * 1.2
    ytr = rng.integers(0, 5, 300) * 3 + 10  # arbitrary label values
    yte = rng.integers(0, 5, 200) * 3 + 10
    xtr = means[(ytr - 10) // 3] + rng.normal(size=(300, 7))
    xte = means[(yte - 10) // 3] + rng.normal(size=(200, 7))
    return xtr, ytr, xte, yte


def test_ncc_error_matches_brute_force():
    xtr, ytr, xte, yte = _split(0)
    res = ncc_error(xtr, ytr, xte, yte)
    classes = np.unique(ytr)
    mus = {c: xtr[ytr == c].mean(0) for c in classes}
    errors = sum(int(min(classes, key=lambda c: np.sum((x - mus[c]) ** 2)) != t) for x, t in zip(xte, yte, strict=True))
    assert res["errors"] == errors and res["n"] == 200 and res["error"] == errors / 200
    lo = stats.beta.ppf(0.025, errors, 200 - errors + 1)
    hi = stats.beta.ppf(0.975, errors + 1, 200 - errors)
    assert res["ci95"] == pytest.approx((lo, hi), rel=1e-12)


def test_linear_probe_matches_a_separate_pipeline():
    xtr, ytr, xte, yte = _split(1)
    res = linear_probe_error(xtr, ytr, xte, yte)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(xtr, ytr)
    errors = int(np.sum(pipe.predict(xte) != yte))
    assert res["errors"] == errors and res["converged"] and res["C"] == 1.0
    assert res["ci95"][0] <= res["error"] <= res["ci95"][1]


def test_test_classes_must_have_training_samples():
    xtr, ytr, xte, yte = _split(2)
    yte = yte.copy()
    yte[0] = 999
    with pytest.raises(DataError, match="999"):
        ncc_error(xtr, ytr, xte, yte)
