"""Selections every data spec takes: ``classes=`` (re-indexed subsets) and ``imbalance=`` (training split only)."""

from __future__ import annotations

import numpy as np
import pytest

from ncbounds.errors import UsageError
from ncbounds.io.datasets import data_files, load_data
from ncbounds.io.datasets.selection import parse_classes, split_selection


def test_parse_classes_and_the_tolerant_option_split():
    assert parse_classes("5-9") == (5, 6, 7, 8, 9)
    assert parse_classes("7,0-2,2") == (0, 1, 2, 7)
    rest, sel = split_selection("test_fraction=0.3,classes=0,2,4,imbalance=step:4:0.5,imbalance_seed=3")
    assert rest == "test_fraction=0.3" and sel.classes == (0, 2, 4) and sel.imbalance == "step:4:0.5" and sel.imbalance_seed == 3
    rest, sel = split_selection("/data/my:file.npz:classes=1-3")
    assert rest == "/data/my:file.npz" and sel.classes == (1, 2, 3)
    assert split_selection("n=100")[1].empty
    for bad in ("classes=a", "classes=5-2", "imbalance=exp:100,n=3", "classes=1,classes=2", "imbalance=log:3"):
        with pytest.raises(UsageError):
            split_selection(bad)


def test_classes_are_reindexed_in_every_split_and_recorded():
    full = load_data("digits")
    sub = load_data("digits:classes=5-9")
    assert sub.num_classes == 5 and sub.info["classes"]["original_ids"] == [5, 6, 7, 8, 9]
    for name in ("train", "test"):
        whole, part = getattr(full, name), getattr(sub, name)
        keep = whole.y >= 5
        assert np.array_equal(part.x, whole.x[keep]) and np.array_equal(part.y, whole.y[keep] - 5)
    with pytest.raises(UsageError, match="names class 10, but the data has classes 0..9"):
        load_data("digits:classes=8-12")


def test_classes_select_the_rows_of_a_given_classifier():
    full = load_data("gaussian-etf-features:K=6,d=8,n=20,sigma=0.1")
    sub = load_data("gaussian-etf-features:K=6,d=8,n=20,sigma=0.1,classes=1,4")
    assert np.array_equal(sub.W, full.W[[1, 4]]) and sub.num_classes == 2
    assert np.array_equal(sub.test.x, full.test.x[np.isin(full.test.y, [1, 4])])


def test_imbalance_exp_100_on_mnist1d_gives_the_expected_counts_and_leaves_test_alone():
    full = load_data("mnist1d:n=4000")
    imb = load_data("mnist1d:n=4000,imbalance=exp:100")
    available = np.bincount(full.train.y, minlength=10)
    n_max = available.min()
    expected = [n_max * 100.0 ** (-c / 9) for c in range(10)]  # the CIFAR-LT profile, real-valued
    counts = np.bincount(imb.train.y, minlength=10)
    assert np.all(np.abs(counts - np.floor(expected)) <= 1), (counts, expected)
    assert counts[0] == n_max and counts[-1] == int(n_max / 100)
    assert np.array_equal(imb.test.x, full.test.x) and np.array_equal(imb.test.y, full.test.y)
    assert imb.info["imbalance"]["class_counts"]["train"] == counts.tolist()
    assert imb.info["imbalance"]["class_counts"]["test"] == np.bincount(full.test.y, minlength=10).tolist()
    again = load_data("mnist1d:n=4000,imbalance=exp:100")
    other = load_data("mnist1d:n=4000,imbalance=exp:100,imbalance_seed=1")
    assert np.array_equal(again.train.x, imb.train.x) and not np.array_equal(other.train.x, imb.train.x)


def test_data_files_ignore_the_selection():
    assert data_files("npz:/d/x.npz:classes=0-4,imbalance=exp:10") == ["/d/x.npz"]
