"""Long-tailed and step class-imbalance profiles, applied to a training split by subsampling.

Pure numpy, no files. Two profiles, as written in a data spec option ``imbalance=...``:

- ``exp:R`` — the long-tailed profile of the CIFAR-10/100-LT protocol (Cui et al. 2019, CVPR,
  "Class-balanced loss based on effective number of samples", §5; Cao et al. 2019, NeurIPS, LDAM-DRW):
  class c ∈ {0, …, K−1} keeps n_c = ⌊n_max · R^(−c/(K−1))⌋ samples, so class 0 keeps n_max and class
  K−1 keeps ⌊n_max/R⌋ (R = n_max/n_min is the imbalance ratio).
- ``step:R:F`` — the step profile (Buda, Maki & Mazurowski 2018, Neural Networks, ratio ρ = R and
  minority fraction μ = F; Cao et al. 2019): the last ⌊F·K⌋ classes (the minority) keep ⌊n_max/R⌋
  samples, the others n_max.

Conventions (stated because papers differ on them):

- Rounding: ``int()`` (truncation towards zero) of the float64 value ``n_max · (1/R)^(c/(K−1))``, the
  expression of the public LDAM-DRW / CIFAR-LT code (``img_max * imb_factor**(cls_idx / (cls_num -
  1.0))`` with ``imb_factor = 1/R``). The float power may land one ulp below an integer, so a count
  can be one below the exact real value's floor; this is what the reference code produces too.
- n_max: by default the **smallest** available class count of the split, so that every class can
  supply its target and the profile holds exactly (for a balanced split it is the per-class count,
  as in the reference code, which uses len(data)/K). An explicit ``n_max`` may be given; a class
  with fewer samples than its target raises :class:`~ncbounds.errors.DataError`.
- Class order: class index c ranks the classes (class 0 the largest), as in the CIFAR-LT protocol.
- Step minority: the LAST ⌊F·K⌋ classes (for F = 1/2 and even K the reference code's second half);
  the count must lie in 1..K−1.
- Subsampling: for each class, ``numpy.random.default_rng(seed).permutation`` of that class's sample
  positions (classes in index order, one generator for all) and the first n_c positions are kept;
  the returned indices are sorted, so the kept samples stay in their original order. Only the
  training split is subsampled; the test split is left untouched.
- Every class keeps at least one sample: a profile whose smallest target is 0 is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ncbounds.errors import DataError, UsageError

__all__ = ["ImbalanceProfile", "class_counts", "imbalance_indices", "parse_imbalance", "subsample_split"]

PROFILE_KINDS = ("exp", "step")


@dataclass(frozen=True)
class ImbalanceProfile:
    """A parsed imbalance profile: ``kind`` 'exp' or 'step', ratio R = n_max/n_min ≥ 1, step fraction F."""

    kind: str
    ratio: float
    fraction: float | None = None

    def __str__(self) -> str:
        r = _fmt(self.ratio)
        return f"exp:{r}" if self.kind == "exp" else f"step:{r}:{_fmt(self.fraction)}"


def _fmt(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else repr(x)


def parse_imbalance(text: str | ImbalanceProfile) -> ImbalanceProfile:
    """Parse ``exp:R`` or ``step:R:F`` (R ≥ 1 the ratio of largest to smallest count, 0 < F < 1)."""
    if isinstance(text, ImbalanceProfile):
        return text
    if not isinstance(text, str) or not text.strip():
        raise UsageError("the imbalance profile is empty; write imbalance=exp:R or imbalance=step:R:F, e.g. exp:100.")
    parts = [p.strip() for p in text.strip().split(":")]
    kind = parts[0].lower()
    if kind not in PROFILE_KINDS:
        raise UsageError(f"unknown imbalance profile `{text}`; write exp:R (long-tailed) or step:R:F (a fraction F of minority classes).")
    expected = 2 if kind == "exp" else 3
    if len(parts) != expected:
        form = "exp:R, e.g. exp:100" if kind == "exp" else "step:R:F, e.g. step:10:0.5"
        raise UsageError(f"imbalance profile `{text}` is malformed; write {form}.")
    try:
        ratio = float(parts[1])
    except ValueError:
        raise UsageError(f"the ratio R in imbalance profile `{text}` is not a number; write e.g. exp:100.") from None
    if not math.isfinite(ratio) or ratio < 1.0:
        raise UsageError(f"the ratio R in imbalance profile `{text}` must be a finite number ≥ 1 (largest/smallest class count).")
    fraction = None
    if kind == "step":
        try:
            fraction = float(parts[2])
        except ValueError:
            raise UsageError(f"the fraction F in imbalance profile `{text}` is not a number; write e.g. step:10:0.5.") from None
        if not (0.0 < fraction < 1.0):
            raise UsageError(f"the minority fraction F in imbalance profile `{text}` must lie strictly between 0 and 1.")
    return ImbalanceProfile(kind, ratio, fraction)


def step_minority_count(num_classes: int, fraction: float) -> int:
    """Number of minority classes ⌊F·K⌋ of a step profile (a 1e-9 guard absorbs float error in F·K)."""
    return int(math.floor(fraction * num_classes + 1e-9))


def class_counts(profile: str | ImbalanceProfile, num_classes: int, n_max: int) -> np.ndarray:
    """Target count n_c of each class c = 0..K−1 under ``profile`` with largest count ``n_max`` (int64, (K,)).

    exp:R — n_c = int(n_max · (1/R)^(c/(K−1))); step:R:F — n_max for the first K − ⌊F·K⌋ classes,
    int(n_max · (1/R)) for the last ⌊F·K⌋ (conventions in the module docstring).
    """
    prof = parse_imbalance(profile)
    K = int(num_classes)
    if K < 2:
        raise UsageError(f"an imbalance profile needs at least 2 classes, the data have {K}.")
    if int(n_max) < 1:
        raise DataError(f"the largest class count n_max must be at least 1, got {n_max}.")
    n_max = int(n_max)
    factor = 1.0 / prof.ratio
    if prof.kind == "exp":
        counts = [int(n_max * (factor ** (c / (K - 1.0)))) for c in range(K)]
    else:
        minority = step_minority_count(K, prof.fraction)
        if not (1 <= minority <= K - 1):
            raise UsageError(
                f"imbalance profile `{prof}` makes ⌊F·K⌋ = {minority} of the {K} classes minority; "
                f"choose F so that between 1 and {K - 1} classes are minority."
            )
        counts = [n_max] * (K - minority) + [int(n_max * factor)] * minority
    out = np.asarray(counts, dtype=np.int64)
    if out.min() < 1:
        raise DataError(
            f"imbalance profile `{prof}` with n_max = {n_max} leaves class {int(np.argmin(out))} with no samples; "
            f"lower R or use more data (n_max/R must be at least 1)."
        )
    return out


def imbalance_indices(labels, profile: str | ImbalanceProfile, num_classes: int | None = None,
                      seed: int = 0, n_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class subsample of a training split: (sorted kept indices, class counts (K,)).

    ``labels`` (N,) integer classes 0..K−1; K defaults to max label + 1. ``n_max`` defaults to the
    smallest available class count. Deterministic for a given seed (module docstring).
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"imbalance subsampling needs integer class labels of shape (N,), got dtype {y.dtype} and shape {y.shape}.")
    if y.size == 0:
        raise DataError("the training split is empty; there is nothing to subsample.")
    if y.min() < 0:
        raise DataError(f"labels must be class indices 0..K-1, found {int(y.min())}.")
    K = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if y.max() >= K:
        raise DataError(f"labels reach {int(y.max())} but the data have {K} classes; fix the labels or num_classes.")
    available = np.bincount(y, minlength=K)
    if available.min() == 0:
        missing = [int(c) for c in np.flatnonzero(available == 0)]
        raise DataError(f"the training split has no samples of class(es) {missing}; an imbalance profile needs every class present.")
    top = int(available.min()) if n_max is None else int(n_max)
    targets = class_counts(profile, K, top)
    short = np.flatnonzero(available < targets)
    if short.size:
        c = int(short[0])
        raise DataError(
            f"class {c} has {int(available[c])} training samples but the profile asks for {int(targets[c])}; "
            f"lower n_max (default: the smallest class count, {int(available.min())})."
        )
    rng = np.random.default_rng(seed)
    kept = []
    for c in range(K):
        positions = np.flatnonzero(y == c)
        kept.append(positions[rng.permutation(positions.size)[: targets[c]]])
    return np.sort(np.concatenate(kept)), targets


def subsample_split(x, y, profile: str | ImbalanceProfile, num_classes: int | None = None,
                    seed: int = 0, n_max: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply :func:`imbalance_indices` to arrays: (x[kept], y[kept], class counts). Rows keep their order."""
    idx, counts = imbalance_indices(y, profile, num_classes, seed, n_max)
    return np.asarray(x)[idx], np.asarray(y)[idx], counts
