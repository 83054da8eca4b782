"""Imbalance profiles and seeded per-class subsampling of a training split (ncbounds.io.imbalance)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncbounds.errors import DataError, UsageError
from ncbounds.io.imbalance import (
    ImbalanceProfile,
    class_counts,
    imbalance_indices,
    parse_imbalance,
    subsample_split,
)


def exp_counts_reference(n_max, R, K):
    """CIFAR-LT counts written from the protocol: n_c = n_max · R^(−c/(K−1)), truncated."""
    return [math.floor(n_max * R ** (-c / (K - 1))) for c in range(K)]


def test_parse_profiles():
    assert parse_imbalance("exp:100") == ImbalanceProfile("exp", 100.0, None)
    assert parse_imbalance(" step:10:0.5 ") == ImbalanceProfile("step", 10.0, 0.5)
    assert str(parse_imbalance("step:10:0.3")) == "step:10:0.3"
    for bad in ["", "exp", "exp:0.5", "exp:abc", "step:10", "step:10:1.5", "step:10:0", "lin:10", "exp:10:0.5", "exp:inf"]:
        with pytest.raises(UsageError):
            parse_imbalance(bad)


def test_exp_counts_cifar_lt_published():
    # CIFAR-10-LT with ratio 100 (Cao et al. 2019 / Cui et al. 2019): 5000 ... 50, 12,406 images in all
    counts = class_counts("exp:100", 10, 5000)
    assert counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert counts.sum() == 12406
    # ratio 10 and 50 on CIFAR-10 and ratio 100 on CIFAR-100 (sums as commonly reported: 20431, 13996, 10847)
    assert class_counts("exp:10", 10, 5000).sum() == 20431
    assert class_counts("exp:50", 10, 5000).sum() == 13996
    assert class_counts("exp:100", 100, 500).sum() == 10847


def test_exp_counts_match_protocol_within_one():
    for n_max, R, K in [(394, 100, 10), (1000, 20, 7), (500, 3, 100), (60, 7.5, 13)]:
        got = class_counts(f"exp:{R}", K, n_max)
        ref = exp_counts_reference(n_max, R, K)
        assert np.all(np.abs(got - np.asarray(ref)) <= 1)
        assert got[0] == n_max and got[-1] in (int(n_max / R), int(n_max / R) - 1)
        assert np.all(np.diff(got) <= 0)


def test_step_counts():
    counts = class_counts("step:10:0.5", 10, 400)
    assert counts.tolist() == [400] * 5 + [40] * 5
    counts = class_counts("step:4:0.3", 10, 100)
    assert counts.tolist() == [100] * 7 + [25] * 3
    counts = class_counts("step:4:0.5", 7, 100)  # ⌊3.5⌋ = 3 minority classes, the last ones
    assert counts.tolist() == [100] * 4 + [25] * 3
    with pytest.raises(UsageError):
        class_counts("step:4:0.05", 10, 100)  # no minority class
    with pytest.raises(DataError):
        class_counts("exp:1000", 10, 100)  # last class would get 0


def test_mnist1d_exp100_counts_and_untouched_test():
    from ncbounds.io.datasets import load_data

    data = load_data("mnist1d")
    y_train, y_test = data.train.y, data.test.y
    available = np.bincount(y_train, minlength=10)
    idx, counts = imbalance_indices(y_train, "exp:100", 10, seed=3)
    got = np.bincount(y_train[idx], minlength=10)
    expected = exp_counts_reference(int(available.min()), 100, 10)
    assert np.array_equal(got, counts)
    assert np.all(np.abs(got - np.asarray(expected)) <= 1)
    assert got[0] == available.min() and got[-1] in (3, int(available.min()) // 100)
    # the subsample is drawn from the right classes, without repetition, in the original order
    assert np.all(np.diff(idx) > 0)
    x_sub, y_sub, _ = subsample_split(data.train.x, y_train, "exp:100", 10, seed=3)
    assert np.array_equal(x_sub, data.train.x[idx]) and np.array_equal(y_sub, y_train[idx])
    # the test split is not an input: it stays balanced as generated
    assert np.bincount(y_test, minlength=10).min() > 80


def test_seeded_and_deterministic():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=2000)
    a, _ = imbalance_indices(y, "exp:10", seed=7)
    b, _ = imbalance_indices(y, "exp:10", seed=7)
    c, _ = imbalance_indices(y, "exp:10", seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # each class's kept samples are a subset of that class
    for cls in range(5):
        kept = a[y[a] == cls]
        assert np.all(y[kept] == cls)
        assert len(np.unique(kept)) == len(kept)


def test_explicit_n_max_and_errors():
    y = np.repeat(np.arange(4), [50, 40, 30, 20])
    idx, counts = imbalance_indices(y, "exp:2", n_max=20)
    assert counts.tolist() == [20, int(20 * 0.5 ** (1 / 3)), int(20 * 0.5 ** (2 / 3)), 10]
    with pytest.raises(DataError):
        imbalance_indices(y, "exp:2", n_max=45)  # class 1 has 40 < 45
    with pytest.raises(DataError):
        imbalance_indices(np.array([0, 0, 2, 2]), "exp:2", num_classes=3)  # class 1 absent
    with pytest.raises(DataError):
        imbalance_indices(np.array([0.0, 1.0]), "exp:2")
