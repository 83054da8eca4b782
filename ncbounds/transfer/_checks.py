"""Input checks shared by the transfer modules: one clear sentence per bad input."""

from __future__ import annotations

import numpy as np

from ncbounds.errors import DataError, UsageError


def features_2d(features, name: str = "features") -> np.ndarray:
    """``features`` as a finite float64 (N, d) array (DataError otherwise)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty 2-D array (samples × dimensions); got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
        raise DataError(f"{name} contain NaN or Inf in {bad} rows; remove them or fix the layer that produced them.")
    return x


def class_labels(labels, n: int, name: str = "labels", min_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(codes 0..K−1, the sorted original label values) for an integer label vector of length ``n``."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{name} must be a 1-D array with one label per sample ({n}); got shape {y.shape}.")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"{name} must be integers; got non-integer values.")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iub":
        raise DataError(f"{name} must be integers; got dtype {y.dtype}.")
    values, codes = np.unique(y, return_inverse=True)
    if len(values) < min_classes:
        raise DataError(f"{name} must contain at least {min_classes} classes; got {len(values)}.")
    return codes.astype(np.int64), values


def features_and_labels(features, labels, min_classes: int = 2) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked (features (N, d) float64, label codes 0..K−1, K)."""
    x = features_2d(features)
    y, values = class_labels(labels, x.shape[0], min_classes=min_classes)
    return x, y, len(values)


def probabilities(probs, name: str = "source_probs", atol: float = 1e-6) -> np.ndarray:
    """Rows of non-negative numbers summing to 1 (± ``atol``) as a float64 (N, Z) array."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty 2-D array (samples × source classes); got shape {p.shape}.")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise DataError(f"{name} must be finite and non-negative (pass softmax probabilities, not logits).")
    worst = float(np.max(np.abs(p.sum(axis=1) - 1.0)))
    if worst > atol:
        raise DataError(f"{name} rows must sum to 1 (softmax probabilities); the worst row is off by {worst:.3g}.")
    return p


def choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}.")
    return value


def class_means(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts n_c, means μ_c) of label codes 0..k−1."""
    counts = np.bincount(y, minlength=k)
    if np.any(counts == 0):
        raise DataError(f"class code {int(np.argmin(counts))} has no samples.")
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(x[order], starts, axis=0)
    return counts.astype(np.float64), sums / counts[:, None]
