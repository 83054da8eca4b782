"""Built-in data that needs no file and no download: scikit-learn digits, MNIST-1D, Gaussian ETF classes.

- ``digits[:test_fraction=0.3,seed=0]``: scikit-learn's 8×8 digits, pixels / 16, stratified split.
- ``mnist1d[:n=5000,seed=42,train_split=0.8,...]``: ``mnist1d.data.make_dataset`` (never its download
  path); the global NumPy and ``random`` states are restored afterwards.
- ``gaussian-etf[-features]:K=10,d=64,n=500,sigma=0.1[,r=1.0,n_test=n,seed=0]``: classes N(μ_c, σ²I_d)
  around simplex-ETF means of norm r (:func:`etf_means`). ``info["population"]`` records the population
  values for these balanced classes, with Σ_W = σ²I_d and the ETF Gram matrix r²K/(K−1)(I − 11ᵀ/K):
  NC1 = Tr(Σ_W Σ_B⁺)/K = σ²(K−1)²/(K r²) (Papyan, Han & Donoho 2020), He & Su's (2023) separation
  fuzziness D = σ²(K−1)²/r², CDNV = σ²d(K−1)/(2r²K) (Galanti, György & Hutter 2022), directional CDNV
  = σ²(K−1)/(2r²K) (Luthra, Salunkhe & Galanti 2026), the class-mean norm r and the within-class
  variance E‖h − μ_c‖² = σ²d.
"""

from __future__ import annotations

import functools
import random

import numpy as np

from ncbounds.errors import DataError, UsageError
from ncbounds.io.datasets.core import DataSource, Split, _make_split, _num_classes, _options, _require

__all__ = ["etf_means"]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (float32 pixels / 16, int64 labels), read once per process."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _load_digits(spec: str, rest: str, base_dir: str | None) -> DataSource:
    from sklearn.model_selection import train_test_split

    opt = _options(spec, rest, {"test_fraction": (float, 0.3), "seed": (int, 0)})
    _require(
        0.0 < opt["test_fraction"] < 1.0, spec, "test_fraction must lie strictly between 0 and 1"
    )
    x, y = _digits_arrays()
    try:
        xtr, xte, ytr, yte = train_test_split(
            x, y, test_size=opt["test_fraction"], random_state=opt["seed"], stratify=y
        )
    except ValueError as exc:
        raise UsageError(
            f"in data spec `{spec}`, the split is impossible ({exc}); change test_fraction"
        ) from None
    return _input_source(spec, xtr, ytr, xte, yte, {
        "source": "sklearn load_digits",
        "scaling": "pixels / 16 -> [0, 1]",
        "split": "stratified sklearn train_test_split",
        **opt,
    })


def _input_source(spec: str, x_train, y_train, x_test, y_test, info: dict) -> DataSource:
    """A raw-input DataSource from train/test arrays (validated by _make_split)."""
    splits = {
        "train": _make_split(x_train, y_train, "train", spec),
        "test": _make_split(x_test, y_test, "test", spec),
    }
    return DataSource(spec=spec, kind="inputs", num_classes=_num_classes(splits), train=splits["train"],
                      test=splits["test"], info=info)


def _load_mnist1d(spec: str, rest: str, base_dir: str | None) -> DataSource:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError(f"data spec `{spec}` needs `pip install mnist1d`") from None
    defaults = get_dataset_args(as_dict=True)
    extra_keys = {k for k in defaults if k not in ("url", "num_samples", "seed", "train_split")}
    opt = _options(
        spec,
        rest,
        {"n": (int, 5000), "seed": (int, 42), "train_split": (float, 0.8)},
        extra=lambda k: k in extra_keys,
    )
    n_per_class = opt["n"] // 10
    _require(n_per_class >= 1, spec, "n must be at least 10 (n // 10 samples per class)")
    _require(0.0 < opt["train_split"] < 1.0, spec, "train_split must lie strictly between 0 and 1")
    n_total = 10 * n_per_class
    n_train = int(n_total * opt["train_split"])
    _require(0 < n_train < n_total, spec, "n and train_split leave an empty split; increase n")
    args = get_dataset_args()
    args.__dict__.update({k: v for k, v in opt.items() if k in extra_keys})
    args.num_samples = opt["n"]
    args.seed = opt["seed"]
    args.train_split = opt["train_split"]
    # make_dataset reseeds the global RNGs; restore them so loading data has no side effect.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    except Exception as exc:
        raise UsageError(
            f"mnist1d could not generate data spec `{spec}` ({type(exc).__name__}: {exc}); "
            "check its options"
        ) from exc
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return _input_source(spec, data["x"], data["y"], data["x_test"], data["y_test"], {
        "source": "mnist1d.data.make_dataset",
        "scaling": "standardized by mnist1d (global mean 0, std 1)",
        "n_generated": n_total,
        **opt,
    })


def etf_means(K: int, d: int, r: float = 1.0, seed: int = 0) -> np.ndarray:
    """Class means (K, d), float64, forming a simplex ETF of norm ``r`` centred at the origin.

    The K columns of ``sqrt(K/(K-1)) (I - 11ᵀ/K)`` (unit vectors with pairwise inner product
    ``-1/(K-1)``, summing to zero) live in the (K-1)-dimensional subspace orthogonal to ``1``; they
    are written in an orthonormal basis of that subspace and embedded in R^d by a random map with
    orthonormal columns drawn from ``seed``. Hence the Gram matrix is exactly
    ``r² K/(K-1) (I - 11ᵀ/K)`` (up to rounding) and the mean of the means is 0. Needs K >= 2 and
    ``d >= K - 1``.
    """
    if K < 2 or d < K - 1:
        raise ValueError(f"a simplex ETF of K={K} classes needs K >= 2 and d >= K - 1, got d={d}")
    centering = np.eye(K) - np.full((K, K), 1.0 / K)
    # orthonormal basis V (K, K-1) of the complement of the all-ones vector
    eigval, eigvec = np.linalg.eigh(centering)
    V = eigvec[:, eigval > 0.5]
    coords = np.sqrt(K / (K - 1)) * V.T @ centering  # (K-1, K): column c = class c
    rng = np.random.default_rng([seed, 0])
    U, _ = np.linalg.qr(rng.standard_normal((d, K - 1)))  # (d, K-1), orthonormal columns
    return r * (U @ coords).T


def _load_gaussian_etf(spec: str, rest: str, base_dir: str | None, features: bool) -> DataSource:
    opt = _options(
        spec,
        rest,
        {
            "K": (int, 10),
            "d": (int, 64),
            "n": (int, 500),
            "sigma": (float, 0.1),
            "r": (float, 1.0),
            "n_test": (int, None),
            "seed": (int, 0),
        },
    )
    K, d, n, sigma, r, seed = opt["K"], opt["d"], opt["n"], opt["sigma"], opt["r"], opt["seed"]
    n_test = n if opt["n_test"] is None else opt["n_test"]
    opt["n_test"] = n_test
    _require(K >= 2, spec, "K must be at least 2")
    _require(d >= K - 1, spec, f"d must be at least K - 1 = {K - 1} to hold a simplex ETF")
    _require(n >= 1 and n_test >= 1, spec, "n and n_test must be positive")
    _require(sigma >= 0 and np.isfinite(sigma), spec, "sigma must be a finite non-negative number")
    _require(r > 0 and np.isfinite(r), spec, "r must be a finite positive number")
    means = etf_means(K, d, r, seed)

    def sample(n_per_class: int, stream: int, name: str) -> Split:
        rng = np.random.default_rng([seed, stream])
        y = np.repeat(np.arange(K, dtype=np.int64), n_per_class)
        rng.shuffle(y)
        x = means[y] + sigma * rng.standard_normal((y.size, d))
        return _make_split(x, y, name, spec, np.float64 if features else np.float32)

    train, test = sample(n, 1, "train"), sample(n_test, 2, "test")
    population = {
        "nc1": sigma**2 * (K - 1) ** 2 / (K * r**2),
        "he_su_d": sigma**2 * (K - 1) ** 2 / r**2,
        "cdnv": sigma**2 * d * (K - 1) / (2 * r**2 * K),
        "directional_cdnv": sigma**2 * (K - 1) / (2 * r**2 * K),
        "class_mean_norm": r,
        "within_class_variance": sigma**2 * d,
    }
    return DataSource(
        spec=spec,
        kind="features" if features else "inputs",
        num_classes=K,
        train=train,
        test=test,
        W=means.copy() if features else None,
        b=np.zeros(K) if features else None,
        info={
            "source": "synthetic Gaussian classes around simplex-ETF means (etf_means)",
            **opt,
            "population": population,
        },
    )
