"""Data specs (ncbounds.io.datasets): built-in data, files, CIFAR folders, validation."""

from __future__ import annotations

import importlib.util
import os
import pickle
import random

import numpy as np
import pytest
import torch

from ncbounds.errors import DataError, UsageError
from ncbounds.io.datasets import (
    CIFAR_STATS,
    DATA_KINDS,
    DataSource,
    Split,
    etf_means,
    iterate_batches,
    load_data,
)


def _check_source(src: DataSource, kind: str, num_classes: int, shape: tuple) -> None:
    assert src.kind == kind
    assert src.num_classes == num_classes
    assert src.input_shape == shape
    for split in src.splits().values():
        # raw inputs are float32; precomputed features keep float64 (strong-collapse accuracy)
        assert split.x.dtype == (np.float64 if kind == "features" else np.float32)
        assert split.y.dtype == np.int64
        assert split.x.shape[1:] == shape and split.y.shape == (split.x.shape[0],)
        assert np.isfinite(split.x).all()


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- built-in data


def test_digits():
    src = load_data("digits")
    _check_source(src, "inputs", 10, (64,))
    assert len(src.train) + len(src.test) == 1797
    assert len(src.test) == pytest.approx(0.3 * 1797, abs=2)
    assert src.train.x.min() >= 0 and src.train.x.max() <= 1 and src.train.x.max() == 1
    # stratified: class proportions agree between the splits
    p_tr = np.bincount(src.train.y) / len(src.train)
    p_te = np.bincount(src.test.y) / len(src.test)
    assert np.abs(p_tr - p_te).max() < 0.01
    other = load_data("digits:test_fraction=0.5,seed=3")
    assert len(other.test) == pytest.approx(898, abs=1) and other.info["seed"] == 3
    again = load_data("digits:seed=3,test_fraction=0.5")
    np.testing.assert_array_equal(other.train.y, again.train.y)


@pytest.mark.skipif(importlib.util.find_spec("mnist1d") is None, reason="mnist1d not installed")
def test_mnist1d_no_global_side_effects():
    np.random.seed(123)
    random.seed(7)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(7)
    src = load_data("mnist1d:n=200,seed=1,train_split=0.6")
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    _check_source(src, "inputs", 10, (40,))
    assert len(src.train) == 120 and len(src.test) == 80
    np.testing.assert_array_equal(src.train.x, load_data("mnist1d:n=200,seed=1,train_split=0.6").train.x)


def test_mnist1d_missing_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("mnist1d"):
            raise ImportError("no mnist1d")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError) as err:
        load_data("mnist1d")
    assert "pip install mnist1d" in _one_line(err)


def test_etf_means_gram_is_exact():
    for K, d, r in [(2, 1, 1.0), (3, 2, 2.5), (10, 64, 1.0), (5, 5, 0.3)]:
        M = etf_means(K, d, r, seed=4)
        assert M.shape == (K, d)
        gram = M @ M.T
        expected = r**2 * K / (K - 1) * (np.eye(K) - np.ones((K, K)) / K)
        np.testing.assert_allclose(gram, expected, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(M, axis=1), r, rtol=1e-12)
        np.testing.assert_allclose(M.mean(0), 0, atol=1e-12)
    with pytest.raises(ValueError):
        etf_means(5, 3)


def test_gaussian_etf_sample_means_converge():
    K, d, n, sigma, r = 4, 16, 4000, 0.5, 2.0
    src = load_data(f"gaussian-etf:K={K},d={d},n={n},sigma={sigma},r={r},n_test=50,seed=3")
    _check_source(src, "inputs", K, (d,))
    assert len(src.train) == K * n and len(src.test) == K * 50
    assert np.array_equal(np.bincount(src.train.y), [n] * K)
    means = np.stack([src.train.x[src.train.y == c].mean(0) for c in range(K)]).astype(np.float64)
    population = etf_means(K, d, r, seed=3)
    tol = 5 * sigma * np.sqrt(d / n)  # a few standard errors of the norm of a mean's error
    assert np.linalg.norm(means - population, axis=1).max() < tol
    gram = means @ means.T
    expected = r**2 * K / (K - 1) * (np.eye(K) - np.ones((K, K)) / K)
    assert np.abs(gram - expected).max() < 3 * r * tol
    # within-class spread matches sigma
    resid = src.train.x - population[src.train.y]
    assert resid.var() == pytest.approx(sigma**2, rel=0.05)
    pop = src.info["population"]
    assert pop["nc1"] == pytest.approx(sigma**2 * (K - 1) ** 2 / (K * r**2))
    assert src.W is None and src.b is None


def test_gaussian_etf_features_variant_and_determinism():
    a = load_data("gaussian-etf-features:K=3,d=3,n=20,sigma=0.01,seed=5")
    b = load_data("gaussian-etf:K=3,d=3,n=20,sigma=0.01,seed=5")
    assert a.kind == "features" and b.kind == "inputs"
    # the features variant keeps float64 (strong-collapse accuracy); inputs are float32 casts of it
    assert a.train.x.dtype == np.float64 and b.train.x.dtype == np.float32
    np.testing.assert_array_equal(a.train.x.astype(np.float32), b.train.x)
    np.testing.assert_allclose(a.W, etf_means(3, 3, 1.0, seed=5))
    np.testing.assert_array_equal(a.b, np.zeros(3))
    pred = (a.test.x @ a.W.T + a.b).argmax(1)
    assert (pred == a.test.y).all()  # the exact ETF classifier on well-separated classes
    c = load_data("gaussian-etf:K=3,d=3,n=20,sigma=0.01,seed=5,n_test=7")
    np.testing.assert_array_equal(c.train.x, b.train.x)  # n_test does not change the train draw
    assert len(c.test) == 21


@pytest.mark.parametrize(
    "spec",
    [
        "gaussian-etf:K=1",
        "gaussian-etf:K=10,d=5",
        "gaussian-etf:n=0",
        "gaussian-etf:sigma=-1",
        "gaussian-etf:K=2.5",
        "gaussian-etf:bogus=1",
        "digits:test_fraction=1.5",
        "digits:seed=abc",
        "mnist1d:n=5",
    ],
)
def test_bad_options_are_usage_errors(spec):
    with pytest.raises(UsageError) as err:
        load_data(spec)
    _one_line(err)


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(UsageError) as err:
        load_data("imagenet:/data")
    msg = _one_line(err)
    assert all(kind in msg for kind in DATA_KINDS)


# ----------------------------------------------------------------------------- npz / features


def _npz(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_roundtrip_with_heldout(tmp_path):
    rng = np.random.default_rng(0)
    path = _npz(
        tmp_path,
        x_train=rng.standard_normal((20, 2, 3)),
        y_train=np.arange(20) % 4,
        x_test=rng.standard_normal((8, 2, 3)),
        y_test=np.arange(8) % 3,
        x_heldout=rng.standard_normal((5, 2, 3)),
        y_heldout=np.full(5, 6.0),  # integral floats are accepted
    )
    src = load_data("npz:data.npz", base_dir=str(tmp_path))
    _check_source(src, "inputs", 7, (2, 3))
    assert src.heldout is not None and len(src.heldout) == 5
    assert set(src.splits()) == {"train", "test", "heldout"}
    assert load_data(f"npz:{path}").num_classes == 7


def test_features_file(tmp_path):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((5, 6))
    _npz(
        tmp_path,
        "f.npz",
        h_train=rng.standard_normal((30, 6)),
        y_train=np.arange(30) % 3,
        h_test=rng.standard_normal((9, 6)),
        y_test=np.arange(9) % 3,
        W=W,
        b=np.ones(5),
    )
    src = load_data("features:f.npz", base_dir=str(tmp_path))
    _check_source(src, "features", 5, (6,))  # K from W's rows, not from the labels
    assert src.W.dtype == np.float64 and np.allclose(src.W, W) and np.allclose(src.b, 1)
    _npz(
        tmp_path,
        "g.npz",
        h_train=np.ones((4, 2)),
        y_train=[0, 1, 0, 1],
        h_test=np.ones((2, 2)),
        y_test=[0, 1],
    )
    plain = load_data("features:g.npz", base_dir=str(tmp_path))
    assert plain.W is None and plain.b is None and plain.num_classes == 2


GOOD = dict(x_train=np.ones((4, 3)), y_train=[0, 1, 0, 1], x_test=np.ones((2, 3)), y_test=[0, 1])


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"y_test": None, "x_test": None}, "x_test, y_test"),
        ({"y_train": [0.5, 1, 0, 1]}, "not integers"),
        ({"y_train": ["a", "b", "c", "d"]}, "not integers"),
        ({"y_train": [0, -1, 0, 1]}, "negative"),
        ({"y_train": [0, 1, 0]}, "4 inputs but 3 labels"),
        ({"x_train": np.array([[0, 1, 2]] * 3 + [[np.nan, 0, 0]])}, "NaN/Inf"),
        ({"x_test": np.array([[np.inf, 0, 0]] * 2)}, "NaN/Inf"),
        ({"x_test": np.ones((2, 4))}, "per-sample shapes"),
        ({"y_train": np.eye(4)}, "argmax"),
        ({"x_heldout": np.ones((1, 3))}, "y_heldout"),
    ],
)
def test_npz_validation(tmp_path, changes, needle):
    arrays = {**GOOD, **changes}
    _npz(tmp_path, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DataError) as err:
        load_data("npz:data.npz", base_dir=str(tmp_path))
    assert needle in _one_line(err)


def test_file_errors(tmp_path):
    with pytest.raises(DataError) as err:
        load_data("npz:missing.npz", base_dir=str(tmp_path))
    assert "does not exist" in _one_line(err)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError) as err:
        load_data("npz:junk.npz", base_dir=str(tmp_path))
    assert "not a readable .npz" in _one_line(err)
    np.savez(tmp_path / "obj.npz", **{**GOOD, "x_train": np.array([object()] * 4)})
    with pytest.raises(DataError) as err:
        load_data("npz:obj.npz", base_dir=str(tmp_path))
    _one_line(err)
    with pytest.raises(UsageError):
        load_data("npz:")


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"W": np.ones((2, 5))}, "d=3"),
        ({"W": np.ones((1, 3))}, "rows"),
        ({"W": np.ones((2, 3)), "b": np.ones(3)}, "bias b"),
        ({"b": np.ones(2)}, "without a classifier W"),
        ({"W": np.full((2, 3), np.nan)}, "NaN/Inf"),
    ],
)
def test_features_validation(tmp_path, extra, needle):
    arrays = {
        "h_train": np.ones((4, 3)),
        "y_train": [0, 1, 0, 1],
        "h_test": np.ones((2, 3)),
        "y_test": [0, 1],
        **extra,
    }
    _npz(tmp_path, "f.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_data("features:f.npz", base_dir=str(tmp_path))
    assert needle in _one_line(err)


# ----------------------------------------------------------------------------- CIFAR


def _write_batch(path, data, labels, label_key, old_numpy_path=True):
    blob = pickle.dumps(
        {b"batch_label": b"fake", label_key: list(labels), b"data": data}, protocol=2
    )
    if old_numpy_path:  # what the real (Python 2) files reference
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(blob)


def _fake_cifar10(root, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        _write_batch(folder / name, data, rng.integers(0, 10, n_per_batch), b"labels")
    return folder


def test_fake_cifar10(tmp_path):
    folder = _fake_cifar10(tmp_path)
    src = load_data(f"cifar10:{tmp_path}")  # parent folder works
    _check_source(src, "inputs", src.num_classes, (3, 32, 32))
    assert len(src.train) == 20 and len(src.test) == 4
    raw = load_data(f"cifar10:{folder},normalize=false")  # the batch folder itself works
    assert raw.train.x.min() >= 0 and raw.train.x.max() <= 1
    # CHW layout: the first 1024 bytes are the red channel of image 0
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="latin1")[b"data"][0]
    np.testing.assert_allclose(raw.train.x[0, 0].reshape(-1), first[:1024] / 255.0, rtol=1e-6)
    mean, std = (np.array(v, dtype=np.float32).reshape(3, 1, 1) for v in CIFAR_STATS["cifar10"])
    np.testing.assert_allclose(src.train.x, (raw.train.x - mean) / std, rtol=1e-5, atol=1e-5)
    assert src.info["mean"] == list(CIFAR_STATS["cifar10"][0])


def test_fake_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        _write_batch(folder / name, data, [99] + [0] * (n - 1), b"fine_labels", old_numpy_path=False)
    src = load_data(f"cifar100:{tmp_path}")
    _check_source(src, "inputs", 100, (3, 32, 32))
    assert len(src.train) == 6 and len(src.test) == 3


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError) as err:
        load_data(f"cifar10:{tmp_path / 'nowhere'}")
    assert "does not exist" in _one_line(err)
    with pytest.raises(DataError) as err:
        load_data(f"cifar10:{tmp_path}")
    assert "cifar-10-batches-py" in _one_line(err)
    folder = _fake_cifar10(tmp_path)
    os.remove(folder / "data_batch_3")
    with pytest.raises(DataError) as err:
        load_data(f"cifar10:{tmp_path}")
    assert "data_batch_3" in _one_line(err)


def test_cifar_refuses_arbitrary_pickles(tmp_path):
    folder = _fake_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError) as err:
        load_data(f"cifar10:{folder}")
    assert "system" in _one_line(err)


# ----------------------------------------------------------------------------- batches


def test_iterate_batches_copies_so_inplace_models_cannot_alter_the_split():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    split = Split(x=x, y=np.arange(10, dtype=np.int64))
    batches = list(iterate_batches(split, 4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    xb, yb = batches[0]
    assert isinstance(xb, torch.Tensor) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.device.type == "cpu"
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.from_numpy(x))
    xb[0, 0] = -1.0  # e.g. a model doing x.div_(255): the split is untouched
    assert x[0, 0] == 0.0
    with pytest.raises(UsageError):
        next(iterate_batches(split, 0))


def test_truncated_and_single_array_files(tmp_path):
    path = _npz(tmp_path, **GOOD)
    blob = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as err:
        load_data("npz:cut.npz", base_dir=str(tmp_path))
    assert "not a readable .npz" in _one_line(err)
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(DataError) as err:
        load_data("npz:single.npy", base_dir=str(tmp_path))
    assert "np.savez" in _one_line(err)


def test_iterate_batches_read_only_and_strided():
    x = np.arange(24, dtype=np.float32).reshape(6, 4)[:, ::2]  # not contiguous
    y = np.arange(6, dtype=np.int64)
    y.flags.writeable = False
    batches = list(iterate_batches(Split(x=x, y=y), 5))
    assert [tuple(b[0].shape) for b in batches] == [(5, 2), (1, 2)]
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(6))
