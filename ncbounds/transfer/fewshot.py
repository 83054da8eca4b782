"""Few-shot nearest-class-center episodes, target NCC error and a linear probe on cached target features.

Episodes (the protocol of Tian, Wang, Krishnan, Tenenbaum & Isola 2020, "Rethinking few-shot image
classification", code github.com/WangYueFt/rfs ``eval/meta_eval.py``): an episode draws ``ways``
distinct classes uniformly at random (all classes for ``ways='all'``) and, from each, ``shots`` +
``queries`` distinct samples uniformly at random without replacement; the first ``shots`` form the
class prototype (their mean), the other ``queries`` are classified by the nearest prototype in
Euclidean distance (ties → the lower-indexed prototype). The episode's error is the fraction of its
ways·queries queries misclassified; episodes are independent draws (fresh randomness each time).

Summary over E episodes with errors e_1..e_E:
- ``error`` = ē, the mean episodic error;
- ``ci95`` = ē ± t_{0.975, E−1}·s/√E, s the sample standard deviation (ddof 1) — the t-interval of the
  few-shot literature (rfs ``mean_confidence_interval``); not clipped to [0, 1];
- ``certificate`` = kl⁻¹(ē, ln(1/δ)/E), δ = 0.05: a one-sided upper confidence bound, valid with
  probability ≥ 1 − δ over the episode draws, on the expected episodic error μ of episodes drawn from
  *these* features. Validity: the e_t are i.i.d. in [0, 1]; by convexity E[exp(λe)] ≤ 1 − μ + μe^λ (the
  Bernoulli(μ) moment generating function), so the relative-entropy Chernoff bound
  P(ē ≤ q) ≤ exp(−E·kl(q‖μ)) (q ≤ μ) of a binomial proportion holds for ē as well (Hoeffding 1963,
  Thm 1; Langford 2005, JMLR 6, Thm 3.3 in kl form), and inverting it gives the bound. It treats the
  target features as fixed: it certifies the Monte Carlo mean, not an average over new draws of the
  target test set. kl⁻¹ is :func:`ncbounds.stats.binomial.kl_inverse_upper` (a true upper end).

Cost: the sampled indices are drawn first (E·N uniform numbers per setting), then prototypes and
distances are computed in chunks of episodes with batched matrix products; memory stays under
``chunk_bytes``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from ncbounds.errors import DataError, StatisticsError, UsageError
from ncbounds.stats.binomial import clopper_pearson, kl_inverse_upper
from ncbounds.transfer._checks import class_labels, class_means, features_2d

__all__ = [
    "CERTIFICATE_DELTA",
    "PROBE_C",
    "PROBE_MAX_ITER",
    "fewshot_episodes",
    "fewshot_table",
    "linear_probe_error",
    "ncc_error",
]

#: One-sided level of the episodic certificate.
CERTIFICATE_DELTA = 0.05
#: Linear probe: inverse L2 regularisation strength of scikit-learn's LogisticRegression (its default).
PROBE_C = 1.0
#: Linear probe: L-BFGS iteration cap.
PROBE_MAX_ITER = 1000


def _codes(labels, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes 0..K−1, sorted label values); the callers check the number of classes themselves."""
    return class_labels(labels, n, name, min_classes=0)


def _resolve_ways(ways, k: int) -> int:
    if ways is None or (isinstance(ways, str) and ways == "all"):
        return k
    if isinstance(ways, str):
        raise UsageError(f"ways must be a positive integer or 'all'; got {ways!r}.")
    w = int(ways)
    if w < 2:
        raise UsageError(f"ways must be at least 2 (or 'all'); got {ways!r}.")
    return w


def _distinct_draws(rng, episodes: int, n: int, per_class: int) -> np.ndarray:
    """(episodes, per_class) uniformly random ordered tuples of distinct integers in [0, n).

    When per_class² < n, rows are drawn with replacement and rows containing a repeat are redrawn
    (rejection sampling: conditioned on distinctness each ordered tuple is equally likely); otherwise
    every row ranks all n by independent uniform keys and keeps the ``per_class`` smallest in key order.
    """
    if per_class * per_class < n:
        out = rng.integers(0, n, size=(episodes, per_class))
        while True:
            srt = np.sort(out, axis=1)
            bad = np.flatnonzero(np.any(srt[:, 1:] == srt[:, :-1], axis=1))
            if len(bad) == 0:
                return out
            out[bad] = rng.integers(0, n, size=(len(bad), per_class))
    keys = rng.random((episodes, n))
    if per_class < n:
        part = np.argpartition(keys, per_class - 1, axis=1)[:, :per_class]
    else:
        part = np.broadcast_to(np.arange(n), (episodes, n))
    rank = np.argsort(np.take_along_axis(keys, part, axis=1), axis=1)
    return np.take_along_axis(part, rank, axis=1)


def _sample_indices(rng, order, starts, counts, episodes: int, ways: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen class codes (E, W), sample indices (E, W, per_class)): classes uniformly without
    replacement, then within each class an independent uniformly random ordered tuple of distinct samples."""
    k = len(counts)
    if ways == k:
        chosen = np.broadcast_to(np.arange(k), (episodes, k)).copy()
    else:
        chosen = np.argsort(rng.random((episodes, k)), axis=1)[:, :ways]
    picks = np.empty((episodes, k, per_class), dtype=np.int64)
    for c in range(k):
        picks[:, c, :] = order[starts[c] + _distinct_draws(rng, episodes, int(counts[c]), per_class)]
    rows = np.arange(episodes)[:, None]
    return chosen, picks[rows, chosen]


def _episode_errors(x: np.ndarray, idx: np.ndarray, shots: int, chunk_bytes: int) -> np.ndarray:
    """Per-episode NCC error for sampled indices ``idx`` (E, W, shots + queries)."""
    episodes, ways, per_class = idx.shape
    queries = per_class - shots
    d = x.shape[1]
    per_episode = ways * per_class * d * 8 * 2
    chunk = max(1, int(chunk_bytes // max(per_episode, 1)))
    truth = np.repeat(np.arange(ways), queries)
    out = np.empty(episodes)
    for a in range(0, episodes, chunk):
        b = min(episodes, a + chunk)
        sup = idx[a:b, :, :shots]
        qry = idx[a:b, :, shots:].reshape(b - a, ways * queries)
        protos = x[sup].mean(axis=2)  # (e, W, d)
        q = x[qry]  # (e, Wq, d)
        sq = np.einsum("ewd,ewd->ew", protos, protos)
        score = sq[:, None, :] - 2.0 * np.matmul(q, protos.transpose(0, 2, 1))  # ‖p‖² − 2xᵀp
        pred = np.argmin(score, axis=2)
        out[a:b] = np.mean(pred != truth[None, :], axis=1)
    return out


def fewshot_episodes(features, labels, ways, shots: int, queries: int = 15, episodes: int = 600, seed: int = 0,
                     delta: float = CERTIFICATE_DELTA, chunk_bytes: int = 64 << 20, return_errors: bool = False) -> dict:
    """m-shot nearest-class-center episodes on cached features (protocol in the module docstring).

    ``ways``: an integer ≥ 2 or ``'all'`` (every class). Every class that can be drawn must have at
    least ``shots + queries`` samples (DataError otherwise). Deterministic given ``seed`` (the random
    stream is seeded by (seed, ways, shots, queries), so settings are reproducible one by one).

    Returns {'ways', 'shots', 'queries', 'episodes', 'error', 'std', 'ci95' (lo, hi), 'ci95_halfwidth',
    'certificate', 'certificate_delta', 'seed'} (+ 'episode_errors', the E per-episode errors, when
    ``return_errors``).
    """
    x = features_2d(features)
    y, values = _codes(labels, x.shape[0], "labels")
    k = len(values)
    if k < 2:
        raise DataError("few-shot episodes need at least 2 classes.")
    w = _resolve_ways(ways, k)
    shots, queries, episodes = int(shots), int(queries), int(episodes)
    if shots < 1 or queries < 1 or episodes < 2:
        raise UsageError(f"need shots ≥ 1, queries ≥ 1 and episodes ≥ 2; got {shots}, {queries}, {episodes}.")
    if w > k:
        raise DataError(f"{w}-way episodes need at least {w} classes; the features have {k}.")
    counts = np.bincount(y, minlength=k)
    small = np.flatnonzero(counts < shots + queries)
    if len(small):
        c = int(small[np.argmin(counts[small])])
        raise DataError(f"{shots}-shot episodes with {queries} queries need {shots + queries} samples per class; "
                        f"class {values[c]!r} has {int(counts[c])} — lower shots/queries or drop that class.")
    x = x - x.mean(axis=0)  # distances are translation invariant; centring keeps ‖p‖² − 2xᵀp well scaled
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng([int(seed), w, shots, queries])
    _, idx = _sample_indices(rng, order, starts, counts, episodes, w, shots + queries)
    errs = _episode_errors(x, idx, shots, chunk_bytes)
    mean = float(errs.mean())
    sd = float(errs.std(ddof=1))
    half = sd / math.sqrt(episodes) * float(stats.t.ppf(0.975, episodes - 1))
    cert = float(kl_inverse_upper(min(max(mean, 0.0), 1.0), math.log(1.0 / delta) / episodes))
    out = {"ways": w, "shots": shots, "queries": queries, "episodes": episodes, "error": mean, "std": sd,
           "ci95": (mean - half, mean + half), "ci95_halfwidth": half, "certificate": cert,
           "certificate_delta": float(delta), "seed": int(seed)}
    if return_errors:
        out["episode_errors"] = errs
    return out


def fewshot_table(features, labels, ways=("all", 5), shots=(1, 5, 10), queries: int = 15, episodes: int = 600,
                  seed: int = 0, delta: float = CERTIFICATE_DELTA) -> list[dict]:
    """:func:`fewshot_episodes` for every (ways, shots) pair; a setting the data cannot support (too few
    classes or samples per class) gets an entry with ``error``/``ci95``/``certificate`` None and a
    ``note`` saying why. ``'all'`` and an integer equal to the number of classes are run once."""
    x = features_2d(features)
    y, values = _codes(labels, x.shape[0], "labels")
    k = len(values)
    counts = np.bincount(y, minlength=k)
    out, seen = [], set()
    for wv in ways:
        w = _resolve_ways(wv, k)
        for m in shots:
            if (w, int(m)) in seen:
                continue
            seen.add((w, int(m)))
            note = None
            if w > k:
                note = f"{w}-way episodes need {w} classes; the target has {k}"
            elif counts.min() < int(m) + queries:
                note = f"needs {int(m) + queries} samples per class; the smallest class has {int(counts.min())}"
            if note is not None:
                out.append({"ways": w, "shots": int(m), "queries": queries, "episodes": episodes, "error": None,
                            "std": None, "ci95": None, "ci95_halfwidth": None, "certificate": None,
                            "certificate_delta": float(delta), "seed": int(seed), "note": note})
                continue
            out.append(fewshot_episodes(x, y, w, int(m), queries=queries, episodes=episodes, seed=seed, delta=delta))
    return out


def _train_test(train_features, train_labels, test_features, test_labels):
    xtr = features_2d(train_features, "train_features")
    xte = features_2d(test_features, "test_features")
    if xtr.shape[1] != xte.shape[1]:
        raise DataError(f"train and test features differ in dimension ({xtr.shape[1]} vs {xte.shape[1]}).")
    ytr, values = _codes(train_labels, xtr.shape[0], "train_labels")
    raw_te = np.asarray(test_labels)
    if raw_te.ndim != 1 or len(raw_te) != xte.shape[0]:
        raise DataError(f"test_labels must be a 1-D array with one label per test sample ({xte.shape[0]}).")
    pos = np.searchsorted(values, raw_te)
    pos = np.clip(pos, 0, len(values) - 1)
    if not np.all(values[pos] == raw_te):
        missing = sorted(set(np.asarray(raw_te)[values[pos] != raw_te].tolist()))[:5]
        raise DataError(f"test labels {missing} do not occur in the training labels; every test class needs training samples.")
    if len(values) < 2:
        raise DataError("need at least 2 training classes.")
    return xtr, ytr, xte, pos.astype(np.int64), values


def _interval(errors: int, n: int, alpha: float) -> tuple[float, float]:
    lo, hi = clopper_pearson(errors, n, alpha=alpha)
    return float(lo), float(hi)


def ncc_error(train_features, train_labels, test_features, test_labels, alpha: float = 0.05) -> dict:
    """Target nearest-class-center error: training-class means, evaluated on the test features.

    Decision argmin_c ‖x − μ_c‖ over the training classes (ties → lowest class), computed as
    argmin_c (‖μ_c‖² − 2xᵀμ_c) after subtracting the mean of the class means. Returns {'error', 'errors',
    'n', 'ci95' (two-sided Clopper–Pearson at level 1 − ``alpha``)}.
    """
    xtr, ytr, xte, yte, values = _train_test(train_features, train_labels, test_features, test_labels)
    _, means = class_means(xtr, ytr, len(values))
    center = means.mean(axis=0)
    m = means - center
    score = np.einsum("cd,cd->c", m, m)[None, :] - 2.0 * ((xte - center) @ m.T)
    pred = np.argmin(score, axis=1)
    errors = int(np.sum(pred != yte))
    n = len(yte)
    return {"error": errors / n, "errors": errors, "n": n, "ci95": _interval(errors, n, alpha)}


def linear_probe_error(train_features, train_labels, test_features, test_labels, C: float = PROBE_C,
                       max_iter: int = PROBE_MAX_ITER, alpha: float = 0.05) -> dict:
    """Linear probe: multinomial logistic regression on standardized target-train features.

    Features are standardized with the training mean and standard deviation (scikit-learn
    ``StandardScaler``; a constant feature keeps scale 1), then ``LogisticRegression`` (L-BFGS, multinomial
    softmax loss, L2 penalty ½‖W‖² + C·Σ_i CE_i with C = ``C`` = 1, intercept fitted and not penalised,
    tol 1e−4, at most ``max_iter`` = 1000 iterations, deterministic) is fitted on the training split and
    evaluated on the test split. For K = 2 scikit-learn fits the binary (sigmoid) model, one weight vector
    v with penalty ½‖v‖² — the multinomial model with C/2 (its minimum-norm split is w₁ = −w₂ = v/2).
    Returns {'error', 'errors', 'n', 'ci95' (two-sided Clopper–Pearson), 'C', 'converged', 'iterations'};
    ``converged`` is False when L-BFGS hit ``max_iter``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, yte, values = _train_test(train_features, train_labels, test_features, test_labels)
    if float(C) <= 0:
        raise UsageError(f"C must be positive; got {C!r}.")
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=float(C), max_iter=int(max_iter), tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(xtr), ytr)
    pred = clf.predict(scaler.transform(xte))
    errors = int(np.sum(pred != yte))
    n = len(yte)
    iterations = int(np.max(clf.n_iter_))
    if not np.all(np.isfinite(clf.coef_)):
        raise StatisticsError("the linear probe diverged (non-finite weights).")
    return {"error": errors / n, "errors": errors, "n": n, "ci95": _interval(errors, n, alpha), "C": float(C),
            "converged": iterations < int(max_iter), "iterations": iterations}
