"""A small built-in multi-label data set: superposed MNIST-1D signals carrying both labels.

``mnist1d-pairs[:n=5000,pairs=0.5,seed=0,mnist1d_seed=42]``: the ``mnist1d`` data (``n`` generated
samples, split as ``mnist1d`` splits them) in which a fraction ``pairs`` of each split's samples is
replaced by the sum of its signal and the signal of a partner drawn from the same split with another
label; the replaced sample carries both labels (multi-hot rows of 10 columns, multiplicity 2), every
other sample keeps its one label (multiplicity 1). Partners are drawn uniformly among the samples of
the other nine classes with a NumPy generator seeded by ``seed`` (the train split with ``seed``, the
test split with ``seed + 1``), so the data are reproducible and nothing is downloaded. This mirrors
the superposed-digit constructions used to study multi-label neural collapse (Li, Li, Wang & Qu 2024,
ICML), at MNIST-1D's size.
"""

from __future__ import annotations

import numpy as np

from ncbounds.io.datasets.core import DataSource, Split, _make_split, _options, _require

__all__ = ["superpose_pairs"]


def superpose_pairs(x: np.ndarray, y: np.ndarray, fraction: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, multi-hot labels (N, K)) with round(fraction·N) samples replaced by superposed pairs.

    The replaced samples are a seeded random subset; each gets x_i + x_j and labels {y_i, y_j} with
    j drawn uniformly among the samples whose label differs from y_i.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    out_x = np.array(x, dtype=np.float32, copy=True)
    out_y = np.zeros((n, num_classes), dtype=np.int64)
    out_y[np.arange(n), y] = 1
    chosen = rng.choice(n, size=int(round(fraction * n)), replace=False)
    for i in np.sort(chosen):
        others = np.flatnonzero(y != y[i])
        j = int(others[rng.integers(len(others))])
        out_x[i] = x[i] + x[j]
        out_y[i, y[j]] = 1
    return out_x, out_y


def _load_mnist1d_pairs(spec: str, rest: str, base_dir: str | None) -> DataSource:
    from ncbounds.io.datasets.generated import _load_mnist1d

    opt = _options(spec, rest, {"n": (int, 5000), "pairs": (float, 0.5), "seed": (int, 0), "mnist1d_seed": (int, 42)})
    _require(0.0 <= opt["pairs"] <= 1.0, spec, "pairs must lie in [0, 1] (the fraction of samples that become pairs)")
    base = _load_mnist1d(f"mnist1d:n={opt['n']},seed={opt['mnist1d_seed']}", f"n={opt['n']},seed={opt['mnist1d_seed']}", None)
    K = base.num_classes
    splits: dict[str, Split] = {}
    multiplicity = {}
    for offset, (name, split) in enumerate((("train", base.train), ("test", base.test))):
        x, y = superpose_pairs(split.x, split.y, opt["pairs"], K, opt["seed"] + offset)
        splits[name] = _make_split(x, y, name, spec)
        counts = np.bincount(y.sum(1), minlength=3)
        multiplicity[name] = {"1": int(counts[1]), "2": int(counts[2])}
    info = {"source": "mnist1d.data.make_dataset, superposed pairs", "rule": "x_i + x_j with labels {y_i, y_j}, partner of another class",
            "multiplicity": multiplicity, **opt}
    return DataSource(spec=spec, kind="inputs", num_classes=K, train=splits["train"], test=splits["test"], info=info)
