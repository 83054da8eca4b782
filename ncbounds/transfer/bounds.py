"""Neural-collapse bounds on m-shot nearest-class-center error on new classes, and episodic certificates (pure).

Setting (Galanti, György & Hutter 2022, "On the role of neural collapse in transfer learning", ICLR):
target classes with class-conditional feature distributions (means μ_c, within-class variances
v_c = E‖f(x) − μ_c‖²); a C'-way m-shot task takes C' of them and m i.i.d. samples of each, forms the
nearest-class-center classifier h(x) = argmin_c ‖f(x) − μ̂_c‖ from the m-sample means, and errs on a fresh
query x when another μ̂_j is at least as close as its own (ties count as errors).

**The CDNV bound.** The paper bounds the expected error by a constant times (C' − 1)·CDNV·(1 + 1/m),

    CDNV = Avg_{i<j} (v_i + v_j) / (2‖μ_i − μ_j‖²).

The paper's own constant could not be read from this project's sources, so the constant used here is
one proved in :func:`galanti2022_transfer`'s docstring (triangle inequality, weighted Cauchy–Schwarz,
Markov, union over competitors): 8. With it the value is a true upper bound for population moments;
computed from the estimated moments of one target split it is a **plug-in** bound.

**Episodic certificates** (:func:`episodic_certificate`, :func:`population_certificate`) turn the mean
error of E random episodes drawn from a finite target split into one-sided upper confidence bounds:
on the mean over episodes of that split (the split held fixed) and, through Hoeffding's (1963)
U-statistic argument, on the population m-shot error of the target classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from ncbounds.errors import DataError, UsageError
from ncbounds.stats.binomial import kl_inverse_upper
from ncbounds.transfer._checks import class_means, features_and_labels

__all__ = [
    "GALANTI2022_CONSTANT",
    "GALANTI2022_REFERENCE",
    "cdnv_from_moments",
    "class_moments",
    "episodic_certificate",
    "galanti2022_transfer",
    "independent_blocks",
    "population_certificate",
]

#: The constant of (C' − 1)·CDNV·(1 + 1/m) proved in :func:`galanti2022_transfer`.
GALANTI2022_CONSTANT = 8.0

GALANTI2022_REFERENCE = ("Galanti, György & Hutter (2022), 'On the role of neural collapse in transfer learning', ICLR: "
                         "few-shot NCC error on new classes ≤ const·(C'−1)·CDNV·(1 + 1/m); const = 8 proved here "
                         "(triangle inequality, Cauchy–Schwarz, Markov, union bound), the paper's constant unconfirmed")

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
    """8·(C' − 1)·CDNV·(1 + 1/m): the Galanti et al. (2022) form with a proved constant.

    Claim. For C' classes with means μ_c and variances v_c = E‖f − μ_c‖² (any distributions with finite
    second moments), the m-shot NCC classifier of i.i.d. shots errs on an independent query of class i
    with probability at most Σ_{j≠i} 4(2v_i + (v_i + v_j)/m)/d_ij², d_ij = ‖μ_i − μ_j‖ > 0; averaged over
    the classes this is 8(C' − 1)·CDNV·(1 + 1/m).

    Proof. If the query x of class i goes to j, ‖x − μ̂_j‖ ≤ ‖x − μ̂_i‖, so by the triangle inequality
    d_ij ≤ ‖μ_i − x‖ + ‖x − μ̂_j‖ + ‖μ̂_j − μ_j‖ ≤ S := 2a + b + c with a = ‖x − μ_i‖, b = ‖μ̂_i − μ_i‖,
    c = ‖μ̂_j − μ_j‖. Cauchy–Schwarz with weights (2, 1, 1): S² ≤ 4(2a² + b² + c²), and E a² = v_i,
    E b² = v_i/m, E c² = v_j/m (the mean of m i.i.d. samples). Markov: P(S ≥ d_ij) ≤ E S²/d_ij². A union
    over the C' − 1 competitors and the average over i give (1/C') Σ_i Σ_{j≠i} 4(2v_i + (v_i + v_j)/m)/d_ij²;
    since Σ_i Σ_{j≠i} 2v_i/d_ij² = Σ_i Σ_{j≠i} (v_i + v_j)/d_ij² = 2C'(C' − 1)·CDNV, this equals
    8(C' − 1)·CDNV·(1 + 1/m). For C' classes drawn at random from K (each pair equally likely), the
    expectation of the subset's CDNV is the CDNV of all K classes, so the same value bounds the expected
    error of random C'-way tasks. ∎

    The paper states this form with a constant we could not confirm; 8 is ours (not tight: the exact
    Cantelli bound of the same setting is usually much smaller). Population moments give a true bound;
    the moments of a target split make it a plug-in.

    ``means``/``variances``: target class moments (:func:`class_moments`); ``shots``: one m or several
    (``value`` is for the first, ``per_m`` holds all); ``ways``: C' (default: all K target classes);
    ``split``: 'train' or 'test' — which target split the moments came from (``uses_test_data``).
    Returns {'value', 'per_m', 'cdnv', 'ways', 'constant', 'status' ('plug-in'), 'status_reason',
    'bounds', 'vacuous', 'uses_test_data', 'split', 'reference'}; ``value`` is None when two class means
    coincide (CDNV infinite).
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
    per_m = {m: (None if beta is None else GALANTI2022_CONSTANT * (c - 1) * beta * (1.0 + 1.0 / m)) for m in ms}
    value = per_m[ms[0]]
    return {"value": value, "per_m": per_m, "cdnv": beta, "ways": c, "constant": GALANTI2022_CONSTANT,
            "status": "plug-in",
            "status_reason": "a true bound for population moments with the constant 8 proved in the docstring; "
                             "the target split's estimated moments are plugged in",
            "bounds": _BOUNDS, "vacuous": None if value is None else bool(value >= 1.0),
            "uses_test_data": split == "test", "split": split, "reference": GALANTI2022_REFERENCE}


def _unit_mean(mean_error: float, episodes: int, delta: float) -> tuple[float, int, float]:
    e = float(mean_error)
    if not (math.isfinite(e) and -1e-12 <= e <= 1.0 + 1e-12):
        raise DataError(f"the mean episodic error must lie in [0, 1]; got {mean_error!r}.")
    if int(episodes) < 1:
        raise UsageError(f"episodes must be a positive integer; got {episodes!r}.")
    if not 0.0 < float(delta) < 1.0:
        raise UsageError(f"delta must lie strictly between 0 and 1; got {delta!r}.")
    return min(max(e, 0.0), 1.0), int(episodes), float(delta)


def episodic_certificate(mean_error: float, episodes: int, delta: float) -> float:
    """kl⁻¹(ē, ln(1/δ)/E): upper confidence bound, w.p. ≥ 1 − δ over the episode draws, on the mean
    episodic error of episodes drawn from the given (fixed) features.

    Valid because the E episode errors are i.i.d. in [0, 1] given the features, and the kl form of the
    Chernoff bound holds for any [0, 1] variables (Hoeffding 1963, Thm 1, by convexity of the MGF;
    Langford 2005, JMLR 6, Thm 3.3). The same value as ``certificate`` of
    :func:`ncbounds.transfer.fewshot.fewshot_episodes`.
    """
    e, n, d = _unit_mean(mean_error, episodes, delta)
    return float(kl_inverse_upper(e, math.log(1.0 / d) / n))


def independent_blocks(class_counts: Sequence[int], shots: int, queries: int) -> int:
    """k = min_c ⌊n_c/(shots + queries)⌋: how many disjoint complete episodes the split holds
    (every class contributes shots + queries distinct samples to each block)."""
    counts = np.asarray(class_counts, dtype=np.int64)
    per = int(shots) + int(queries)
    if counts.ndim != 1 or counts.size < 2 or per < 2:
        raise UsageError("need the sample counts of at least 2 classes and shots, queries ≥ 1.")
    return int(counts.min() // per)


def population_certificate(mean_error: float, episodes: int, class_counts: Sequence[int], shots: int, queries: int,
                           delta: float) -> dict:
    """Upper confidence bound on the **population** m-shot NCC error of the target classes from E
    episodes drawn from one finite target split.

    Let U be the mean episodic error over all episodes the split allows (the per-class generalized
    U-statistic of the episode kernel, of order r = shots + queries in every class) and μ = E U the
    expected error of an episode with fresh samples of the same classes. Hoeffding (1963, §5) writes U
    as an average, over permutations of each class's samples, of means of k = min_c ⌊n_c/r⌋ kernels on
    disjoint blocks, i.e. of k i.i.d. [0, 1] variables of mean μ; by Jensen's inequality E exp(λU) is
    at most the MGF of such a mean, so P(U ≤ q) ≤ exp(−k·kl(q‖μ)) for q ≤ μ. Given the split, the E
    random episodes are i.i.d. with mean U, so U ≤ kl⁻¹(ē, ln(2/δ)/E) w.p. ≥ 1 − δ/2; kl⁻¹(·, c) is
    increasing, so with probability ≥ 1 − δ

        μ ≤ kl⁻¹( kl⁻¹(ē, ln(2/δ)/E), ln(2/δ)/k ).

    Assumes the split's samples of each class are i.i.d. draws of that class — true for target data the
    network never saw (a transfer target), not for its training data. Returns {'value', 'episode_bound'
    (the inner kl⁻¹), 'blocks' (k), 'delta'}; value is None (with k = 0) when a class has fewer than r
    samples.
    """
    e, n, d = _unit_mean(mean_error, episodes, delta)
    k = independent_blocks(class_counts, shots, queries)
    inner = float(kl_inverse_upper(e, math.log(2.0 / d) / n))
    value = None if k == 0 else float(kl_inverse_upper(inner, math.log(2.0 / d) / k))
    return {"value": value, "episode_bound": inner, "blocks": k, "delta": d}
