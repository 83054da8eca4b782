"""Neural-collapse bound on m-shot nearest-class-center error on new classes (pure functions).

Galanti, György & Hutter (2022), "On the role of neural collapse in transfer learning", ICLR (few-shot
transfer to new classes). Setting: target classes are i.i.d. draws from a distribution over
class-conditional distributions; a C'-way m-shot task draws C' of them and m samples of each, forms the
nearest-class-center classifier h(x) = argmin_c ‖f(x) − μ̂_c‖ from the m-sample means, and errs on a fresh
sample x when another μ̂_j is at least as close as its own. The paper bounds the expected error through
the class-distance normalised variance

    CDNV = Avg_{i≠j} (v_i + v_j) / (2‖μ_i − μ_j‖²),   v_c = E‖f(x) − μ_c‖² (biased, x ~ class c),

in the form  E[err] ≲ (C' − 1)·CDNV·(1 + 1/m),  the (C' − 1) from a union over the competitors and 1/m from
the variance of the m-sample centers.

Status. The proposition could not be read: the paper's text was not reachable from this project's
reference sources (only its abstract and third-party summaries were). The functional form above is the
one the project's in-distribution ``galanti2022`` bound already uses; its exact constant (and any
condition on m) is unconfirmed, and we do not invent a constant. The value is therefore the displayed form with the hidden constant set to 1, status
``up-to-constants``; it is additionally a plug-in (population CDNV replaced by its estimate from the
given features). It is not a certificate and must not be read as an upper bound on the measured
few-shot error. ``uses_test_data`` records whether the moments came from the target test split.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ncbounds.errors import DataError, UsageError
from ncbounds.transfer._checks import class_means, features_and_labels

__all__ = ["GALANTI2022_REFERENCE", "cdnv_from_moments", "class_moments", "galanti2022_transfer"]

GALANTI2022_REFERENCE = ("Galanti, György & Hutter (2022), 'On the role of neural collapse in transfer learning', ICLR, "
                         "few-shot NCC error on new classes ≲ (C'−1)·CDNV·(1 + 1/m); "
                         "hidden constant set to 1 (the proposition's constant was not confirmed)")

_BOUNDS = "expected C'-way m-shot nearest-class-center error on new classes distributed like the target classes"


def class_moments(features, labels) -> tuple[np.ndarray, np.ndarray]:
    """(class means μ_c (K, d), biased within-class variances v_c = mean_i ‖f_i − μ_c‖² (K,)) of target features."""
    x, y, k = features_and_labels(features, labels)
    counts, means = class_means(x, y, k)
    sq = np.sum((x - means[y]) ** 2, axis=1)
    return means, np.bincount(y, weights=sq, minlength=k) / counts


def cdnv_from_moments(means, variances) -> float | None:
    """CDNV = mean over pairs i < j of (v_i + v_j)/(2‖μ_i − μ_j‖²); None when two class means coincide."""
    mu = np.asarray(means, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if mu.ndim != 2 or v.shape != (mu.shape[0],) or mu.shape[0] < 2:
        raise DataError(f"need K ≥ 2 class means (K, d) and K variances; got {mu.shape} and {v.shape}.")
    if np.any(v < 0) or not (np.all(np.isfinite(mu)) and np.all(np.isfinite(v))):
        raise DataError("class means and variances must be finite, variances non-negative.")
    iu = np.triu_indices(mu.shape[0], k=1)
    diff = mu[:, None, :] - mu[None, :, :]
    dist2 = np.einsum("ijd,ijd->ij", diff, diff)[iu]
    if np.any(dist2 == 0):
        return None
    return float(np.mean((v[iu[0]] + v[iu[1]]) / (2.0 * dist2)))


def galanti2022_transfer(means, variances, shots: int | Iterable[int], ways: int | None = None,
                         split: str | None = None) -> dict:
    """Galanti et al. (2022) CDNV bound (C' − 1)·CDNV·(1 + 1/m) on C'-way m-shot NCC error, hidden constant 1.

    ``means``/``variances``: target class moments (see :func:`class_moments`); ``shots``: one m or several
    (``value`` is for the first, ``per_m`` holds all); ``ways``: C' (default: all K target classes);
    ``split``: 'train' or 'test' — which target split the moments came from (recorded as
    ``uses_test_data``). Returns {'value', 'per_m', 'cdnv', 'ways', 'status' ('up-to-constants'),
    'status_reason', 'bounds', 'vacuous', 'uses_test_data', 'split', 'reference'}; ``value`` is None
    when two class means coincide (CDNV infinite).
    """
    mu = np.asarray(means, dtype=np.float64)
    k = mu.shape[0] if mu.ndim == 2 else 0
    c = k if ways is None else int(ways)
    if c < 2 or (k and c > k):
        raise UsageError(f"ways must lie in 2..{k} (the number of target classes); got {ways!r}.")
    ms = [int(shots)] if np.ndim(shots) == 0 else [int(m) for m in shots]
    if not ms or min(ms) < 1:
        raise UsageError(f"shots must be positive integers; got {shots!r}.")
    if split not in (None, "train", "test"):
        raise UsageError(f"split must be 'train', 'test' or None; got {split!r}.")
    beta = cdnv_from_moments(mu, variances)
    per_m = {m: (None if beta is None else (c - 1) * beta * (1.0 + 1.0 / m)) for m in ms}
    value = per_m[ms[0]]
    return {"value": value, "per_m": per_m, "cdnv": beta, "ways": c, "status": "up-to-constants",
            "status_reason": "the proposition's constant could not be confirmed from the paper; shown with constant 1, "
                             "population CDNV replaced by its estimate (plug-in)",
            "bounds": _BOUNDS, "vacuous": None if value is None else bool(value >= 1.0),
            "uses_test_data": split == "test", "split": split, "reference": GALANTI2022_REFERENCE}
