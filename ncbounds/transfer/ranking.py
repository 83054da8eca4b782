"""Ranking candidate models by a transferability score against a measured target column, and NCTI.

Orientation. Every statistic here is computed on oriented values where **larger means better** for
both vectors: a score or target declared ``*_lower_is_better`` (an error, a bound, a CDNV) is negated
first. A positive τ / r then always means "the score orders the models as the target does". This
matters beyond the sign for the weighted τ, whose weights favour the top of the ranking: with an error
column as target, the lowest-error models are the "top" and get the largest weights, as in the
transferability literature (which ranks by fine-tuned accuracy).

Missing values (None or NaN in either vector) drop that model from the statistic; ``n`` reports how many
models were used. Undefined statistics (fewer than 2 models, a constant vector) are None.

- Kendall τ-b: ``scipy.stats.kendalltau(score, target, variant='b')``.
- Weighted τ (Vigna 2015, "A weighted correlation index for rankings with ties", WWW):
  ``scipy.stats.weightedtau(score, target)`` with scipy's defaults — additive hyperbolic weigher
  w(r) = 1/(r + 1) on the 0-based decreasing rank r, a pair weighted w(r_i) + w(r_j), and the result
  averaged over the ranking by score and the ranking by target (``rank=True``). This is the call of the
  SFDA and NCTI evaluation code (TencentARC/SFDA, BUserName/NCTI ``rank_correlation.w_kendall_metric``).
- Pearson r: ``scipy.stats.pearsonr``.
- Top-k hit: 1 if a best model by the target is among the k best by the score (models tied with the
  k-th best score included), else 0 — "would fine-tuning the score's top k have found the best model".
  (SFDA's ``recall_k`` asks instead whether the score's top-1 is among the target's top k.)

NCTI (Wang et al. 2023, ICCV; BUserName/NCTI ``evaluate_metric_group1_cpu.py``): over the models of one
set, each raw term of :func:`ncbounds.transfer.scores.ncti_terms` is min–max normalised,
x' = (x − min)/(max − min), and NCTI = ncc' + seli' − vc' (weights 1, signs as in the authors' code:
a higher NCC posterior and a larger SELI nuclear norm are better, a larger variability term is worse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from ncbounds.errors import DataError, UsageError

__all__ = [
    "kendall_tau",
    "ncti_combine",
    "ncti_normalize",
    "pearson_r",
    "ranking_summary",
    "top_k_hit",
    "weighted_tau",
]


def _vector(values, name: str) -> np.ndarray:
    out = np.array([math.nan if v is None else float(v) for v in np.asarray(values, dtype=object).ravel()])
    if np.any(np.isinf(out)):
        raise DataError(f"{name} contains ±inf; use None for a missing value.")
    return out


def _oriented(scores, target, score_lower_is_better: bool, target_lower_is_better: bool):
    s, t = _vector(scores, "scores"), _vector(target, "target")
    if len(s) != len(t):
        raise DataError(f"scores and target must have one value per model; got {len(s)} and {len(t)}.")
    keep = ~(np.isnan(s) | np.isnan(t))
    s, t = s[keep], t[keep]
    return (-s if score_lower_is_better else s), (-t if target_lower_is_better else t)


def _defined(s: np.ndarray, t: np.ndarray) -> bool:
    return len(s) >= 2 and np.ptp(s) > 0 and np.ptp(t) > 0


def kendall_tau(scores, target, score_lower_is_better: bool = False, target_lower_is_better: bool = False) -> float | None:
    """Kendall τ-b of the oriented (larger = better) score and target; None when undefined."""
    s, t = _oriented(scores, target, score_lower_is_better, target_lower_is_better)
    if not _defined(s, t):
        return None
    return float(stats.kendalltau(s, t, variant="b").statistic)


def weighted_tau(scores, target, score_lower_is_better: bool = False, target_lower_is_better: bool = False) -> float | None:
    """Weighted Kendall τ (scipy.stats.weightedtau defaults) of the oriented score and target; None when undefined."""
    s, t = _oriented(scores, target, score_lower_is_better, target_lower_is_better)
    if not _defined(s, t):
        return None
    return float(stats.weightedtau(s, t).statistic)


def pearson_r(scores, target, score_lower_is_better: bool = False, target_lower_is_better: bool = False) -> float | None:
    """Pearson r of the oriented score and target; None when undefined."""
    s, t = _oriented(scores, target, score_lower_is_better, target_lower_is_better)
    if not _defined(s, t):
        return None
    return float(stats.pearsonr(s, t).statistic)


def top_k_hit(scores, target, k: int, score_lower_is_better: bool = False, target_lower_is_better: bool = False) -> float | None:
    """1.0 if a best model by the target is among the ``k`` best by the score (ties at the k-th score
    included), 0.0 otherwise; None with no complete model."""
    if int(k) < 1:
        raise UsageError(f"k must be a positive integer; got {k!r}.")
    s, t = _oriented(scores, target, score_lower_is_better, target_lower_is_better)
    if len(s) == 0:
        return None
    kth = np.sort(s)[::-1][min(int(k), len(s)) - 1]
    best = t == t.max()
    return float(np.any(best & (s >= kth)))


def ranking_summary(scores, target, score_lower_is_better: bool = False, target_lower_is_better: bool = False) -> dict:
    """{'n', 'kendall_tau', 'weighted_tau', 'pearson_r', 'top1_hit', 'top3_hit'} of one score column."""
    args = (scores, target, score_lower_is_better, target_lower_is_better)
    n = len(_oriented(*args)[0])
    return {"n": int(n), "kendall_tau": kendall_tau(*args), "weighted_tau": weighted_tau(*args), "pearson_r": pearson_r(*args),
            "top1_hit": top_k_hit(scores, target, 1, score_lower_is_better, target_lower_is_better),
            "top3_hit": top_k_hit(scores, target, 3, score_lower_is_better, target_lower_is_better)}


def ncti_normalize(values: Sequence) -> list[float | None]:
    """Min–max normalisation (x − min)/(max − min) over the non-missing values of one model set.

    None stays None. If every present value is equal the term cannot order the models and is set to 0
    for all (the authors' code would divide 0/0).
    """
    v = _vector(values, "values")
    present = ~np.isnan(v)
    out: list[float | None] = [None] * len(v)
    if not np.any(present):
        return out
    lo, hi = float(np.min(v[present])), float(np.max(v[present]))
    for i in np.flatnonzero(present):
        out[i] = 0.0 if hi == lo else (float(v[i]) - lo) / (hi - lo)
    return out


def ncti_combine(seli: Sequence, ncc: Sequence, vc: Sequence) -> list[float | None]:
    """NCTI of each model of a set from its raw terms: ncc' + seli' − vc' (each min–max normalised over
    the models whose three terms are all present); None for a model missing a term, and for all models
    when fewer than 2 are complete (NCTI is relative to a set)."""
    a, b, c = _vector(seli, "seli"), _vector(ncc, "ncc"), _vector(vc, "vc")
    if not (len(a) == len(b) == len(c)):
        raise DataError(f"seli, ncc and vc need one value per model; got {len(a)}, {len(b)}, {len(c)}.")
    complete = ~(np.isnan(a) | np.isnan(b) | np.isnan(c))
    out: list[float | None] = [None] * len(a)
    if int(np.sum(complete)) < 2:
        return out
    na, nb, nc = (ncti_normalize(np.where(complete, x, np.nan)) for x in (a, b, c))
    for i in np.flatnonzero(complete):
        out[i] = nb[i] + na[i] - nc[i]
    return out
