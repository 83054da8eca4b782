"""Transfer on gaussian-etf targets of known geometry, through the whole pipeline.

Targets are ``gaussian-etf-features`` specs (precomputed features: class means a simplex ETF of norm r,
isotropic noise σ²I), so the population m-shot NCC error is known by Monte Carlo with fresh Gaussian
samples (a sampler written here), and the mean episodic error of a fixed target test split by Monte
Carlo over that split (another sampler written here). Checked:

* the few-shot ``ci95`` covers the 200,000-episode Monte Carlo error of episodes from the same target
  test split in ≥ 45 of 50 episode seeds, and the episodic certificate is never below it;
* every transfer bound with status ``certificate`` is ≥ the population Monte Carlo error, on 40 freshly
  drawn targets, for every few-shot setting it reports;
* the Galanti et al. form with the proved constant 8, fed the population moments, is ≥ the population
  Monte Carlo error (it is a true bound for population moments);
* the certificates' values equal a brute-force kl inverse (bisection written here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncbounds.io.datasets import load_data
from ncbounds.io.datasets.generated import etf_means
from ncbounds.pipeline import evaluate
from ncbounds.transfer.bounds import galanti2022_transfer

K, D, SIGMA, R = 8, 8, 1.0, 2.0
SOURCE = "gaussian-etf-features:K=6,d=8,n=50,sigma=0.5,seed=100"


def target(n, n_test, seed):
    return f"gaussian-etf-features:K={K},d={D},n={n},n_test={n_test},sigma={SIGMA},r={R},seed={seed}"


def _errors(protos, queries):
    """protos (e, W, d), queries (e, W, Q, d) → per-episode error by explicit squared distances."""
    dist = ((queries[:, :, :, None, :] - protos[:, None, None, :, :]) ** 2).sum(-1)  # (e, W, Q, W)
    return (dist.argmin(-1) != np.arange(protos.shape[1])[None, :, None]).mean(axis=(1, 2))


def population_mc(means, sigma, ways, shots, queries=15, episodes=200_000, seed=0, chunk=2_000):
    """Fresh samples every episode: prototype = μ_c + σ·N(0, I)/√m exactly, queries μ_c + σ·N(0, I)."""
    rng = np.random.default_rng(seed)
    k, d = means.shape
    total = 0.0
    for a in range(0, episodes, chunk):
        e = min(chunk, episodes - a)
        mu = means[np.argsort(rng.random((e, k)), axis=1)[:, :ways]]
        protos = mu + sigma * rng.normal(size=(e, ways, d)) / math.sqrt(shots)
        total += _errors(protos, mu[:, :, None, :] + sigma * rng.normal(size=(e, ways, queries, d))).sum()
    return total / episodes


def pool_mc(x, y, ways, shots, queries=15, episodes=200_000, seed=0, chunk=5_000):
    """Episodes from the fixed pool (x, y): random classes, per class a random permutation's head."""
    rng = np.random.default_rng(seed)
    by_class = np.stack([np.flatnonzero(y == c) for c in range(K)])  # equal class sizes
    total = 0.0
    for a in range(0, episodes, chunk):
        e = min(chunk, episodes - a)
        members = by_class[np.argsort(rng.random((e, K)), axis=1)[:, :ways]]
        picked = np.take_along_axis(members, np.argsort(rng.random(members.shape), axis=2)[:, :, :shots + queries], axis=2)
        total += _errors(x[picked[:, :, :shots]].mean(axis=2), x[picked[:, :, shots:]]).sum()
    return total / episodes


def kl_inverse(q, c):
    """sup{p ≥ q: kl(q‖p) ≤ c} by 200 bisection steps (brute force)."""
    def kl(p):
        a = 0.0 if q == 0 else q * math.log(q / p)
        return a + (0.0 if q == 1 else (1 - q) * math.log((1 - q) / (1 - p)))
    lo, hi = q, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(mid) <= c else (lo, mid)
    return hi


@pytest.mark.slow  # ~20 s: 50 evaluations and a 200,000-episode reference
def test_ci95_covers_the_monte_carlo_error_of_the_target_split():
    spec = target(60, 60, seed=11)
    test = load_data(spec).test
    mc = pool_mc(test.x, test.y, 5, 5, seed=99)
    covered = 0
    for seed in range(50):
        rec = evaluate(data=SOURCE, target_data=spec, seed=seed, shots=(5,), bounds="fewshot_certificate")
        entry = next(e for e in rec.transfer["layers"]["penultimate"]["fewshot"] if e["ways"] == 5)
        covered += entry["ci95"][0] <= mc <= entry["ci95"][1]
        (cert,) = rec.transfer["bounds"]
        assert next(p["value"] for p in cert["details"]["per_setting"] if p["ways"] == 5) >= mc, seed
        assert entry["certificate"] >= mc, seed
    assert covered >= 45, covered


@pytest.mark.slow  # ~25 s: population Monte Carlo for 5-way and 8-way, 40 evaluations
def test_every_certificate_is_above_the_population_error():
    means = etf_means(K, D, R, seed=0)
    mc = {5: population_mc(means, SIGMA, 5, 5, seed=7), K: population_mc(means, SIGMA, K, 5, episodes=100_000, seed=8)}
    for seed in range(40):
        rec = evaluate(data=SOURCE, target_data=target(40, 100, seed=500 + seed), seed=seed, shots=(5,), bounds="transfer")
        certificates = [b for b in rec.transfer["bounds"] if b["status"] == "certificate"]
        assert {b["name"] for b in certificates} == {"fewshot_certificate", "fewshot_population_certificate"}
        for bound in certificates:
            for setting in bound["details"]["per_setting"]:
                assert setting["value"] >= mc[setting["ways"]], (seed, bound["name"], setting)
        population = next(b for b in certificates if b["name"] == "fewshot_population_certificate")
        assert population["inputs"]["blocks"] == 100 // 20 and population["value"] < 1


@pytest.mark.slow  # ~10 s: population Monte Carlo of three geometries
@pytest.mark.parametrize("k, d, sigma, r, shots", [(8, 8, 1.0, 2.0, 5), (3, 4, 0.15, 1.0, 1), (4, 16, 0.1, 1.0, 2)])
def test_galanti_form_with_the_proved_constant_is_above_the_population_error(k, d, sigma, r, shots):
    means = etf_means(k, d, r, seed=1)
    mc = population_mc(means, sigma, k, shots, episodes=50_000, seed=3)
    out = galanti2022_transfer(means, np.full(k, sigma**2 * d), shots)
    assert out["cdnv"] == pytest.approx(sigma**2 * d * (k - 1) / (2 * r * r * k), rel=1e-9)
    assert out["value"] >= mc
    if k == 3:
        assert out["value"] < 1  # a non-vacuous case


def test_certificate_values_equal_a_brute_force_kl_inverse():
    spec = target(30, 45, seed=3)
    rec = evaluate(data=SOURCE, target_data=spec, seed=1, shots=(2, 5), bounds="transfer", delta=0.1)
    by = {b["name"]: b for b in rec.transfer["bounds"]}
    entries = {(e["ways"], e["shots"]): e for e in rec.transfer["layers"]["penultimate"]["fewshot"]}
    assert set(entries) == {(8, 2), (8, 5), (5, 2), (5, 5)}
    for setting in by["fewshot_certificate"]["details"]["per_setting"]:
        e = entries[(setting["ways"], setting["shots"])]
        assert setting["value"] == pytest.approx(kl_inverse(e["error"], math.log(1 / 0.1) / 600), abs=1e-9)
        assert e["certificate"] == pytest.approx(setting["value"], abs=1e-12)
    for setting in by["fewshot_population_certificate"]["details"]["per_setting"]:
        e = entries[(setting["ways"], setting["shots"])]
        blocks = 45 // (setting["shots"] + 15)
        inner = kl_inverse(e["error"], math.log(2 / 0.1) / 600)
        assert setting["blocks"] == blocks
        assert setting["value"] == pytest.approx(kl_inverse(inner, math.log(2 / 0.1) / blocks), abs=1e-9)
    head = by["fewshot_certificate"]
    assert (head["inputs"]["ways"], head["inputs"]["shots"]) == (8, 2) and head["delta"] == 0.1
    assert by["galanti2022_transfer"]["details"]["per_ways"].keys() == {"8", "5"}
